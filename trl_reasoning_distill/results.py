"""Resumable CSV results of a study: one row per finished run, appended and flushed as each run ends, so a stopped
study restarts where it stopped. Used by the scripts of `benchmarks/`."""

import csv
import statistics
from pathlib import Path


def finished_rows(path: Path, fields: list[str]) -> list[dict]:
    """The rows already in `path`; a missing file is created with the `fields` header (and its folder)."""
    path = Path(path)
    if path.exists():
        with path.open(newline="") as handle:
            return list(csv.DictReader(handle))
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("w", newline="") as handle:
        csv.DictWriter(handle, fields).writeheader()
    return []


def append_row(path: Path, fields: list[str], row: dict) -> dict:
    """Append `row` (missing fields left empty) and flush it; returns `row`."""
    with Path(path).open("a", newline="") as handle:
        csv.DictWriter(handle, fields).writerow(row)
        handle.flush()
    return row


def mean_std(values: list[float], digits: int = 3) -> str:
    """`"mean ± sample std"` (just the mean for one value)."""
    spread = f" ± {statistics.stdev(values):.{digits}f}" if len(values) > 1 else ""
    return f"{statistics.mean(values):.{digits}f}{spread}"
