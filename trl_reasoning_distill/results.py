"""Resumable CSV results of a study: one row per finished run, appended and flushed as each run ends, so a stopped
study restarts where it stopped. Used by the scripts of `benchmarks/` and by `reproduce.py`.

A study's CSV is bound to the settings that made its rows by a fingerprint beside it (`<name>.fingerprint.json`:
every option that changes a row, the toy models' identity, the code version), so a study resumed under other
settings stops with a `StaleOutputError` naming them instead of mixing rows; `--overwrite` starts afresh. A CSV
without a fingerprint (one written before fingerprints, such as the committed ones) is refused the same way.
"""

import argparse
import csv
import statistics
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

# Options that choose which runs to do or where to write, not what a row holds: resuming with more seeds or another
# subset of variants is what resuming is for.
NOT_SETTINGS = ("seeds", "methods", "variants", "out", "plot", "table", "overwrite", "workdir")


def toy_identity(teacher=None, student=None, tokenizer=None) -> dict:
    """Identity of the toy world every study starts from (teacher, cold-started student, tokenizer); loaded from the
    shipped assets unless given."""
    from .fingerprint import model_identity, tokenizer_identity
    from .toy import load_toy_student, load_toy_teacher, load_toy_tokenizer

    return {"toy_teacher": model_identity(teacher if teacher is not None else load_toy_teacher()),
            "toy_student": model_identity(student if student is not None else load_toy_student()),
            "toy_tokenizer": tokenizer_identity(tokenizer if tokenizer is not None else load_toy_tokenizer())}


def study_settings(args: argparse.Namespace, ignore: Iterable[str] = (), **constants) -> dict:
    """The fingerprint fields of a study run: every parsed option except `NOT_SETTINGS` and `ignore` (mode flags),
    plus `constants` (the script's fixed settings: learning rates, variant configurations, decoding)."""
    skip = {*NOT_SETTINGS, *ignore}
    return {**{name: value for name, value in vars(args).items() if name not in skip}, **constants}


def finished_rows(path: Path, fields: list[str], settings: Mapping[str, Any], overwrite: bool = False,
                  companions: Iterable[Path] = ()) -> list[dict]:
    """The rows already in `path`, after binding it to `settings` (see the module docstring); a missing file is
    created with the `fields` header (and its folder). `overwrite=True` deletes the old rows first, and the
    `companions` (the study's own work folders, whose content the rows come from).

    Raises:
        StaleOutputError: `path` holds rows made under other `settings` or `fields`, or without a fingerprint.
    """
    from .fingerprint import claim_output

    path = Path(path)
    claim_output(path, {**settings, "columns": list(fields)}, overwrite=overwrite, companions=tuple(companions))
    if path.exists() and path.stat().st_size:
        with path.open(newline="") as handle:
            return list(csv.DictReader(handle))
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
