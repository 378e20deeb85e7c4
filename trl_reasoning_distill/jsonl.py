"""Append-only JSONL records keyed by `id`: what long jobs write so that a crash loses no finished work.

Each record is flushed and fsynced as it is written. On reading, a last line cut short by a crash is dropped and cut
from the file, so the job redoes exactly that record and appends cleanly after it. Any other line that is not a JSON
record with an `id` is damage a crash cannot make: reading stops with an error naming the file and the line.
"""

import json
import os
from pathlib import Path


def read_records(path: str | Path | None) -> dict[str, dict]:
    """Complete records of `path` by `str(id)` (a later record with the same id wins); {} if there is no file.

    Raises:
        ValueError: a complete line is not a JSON object with an `id` (the message names `path` and the line number).
    """
    if path is None or not Path(path).exists():
        return {}
    data = Path(path).read_bytes()
    complete = data[: data.rfind(b"\n") + 1]
    if len(complete) < len(data):  # a crash mid-write: drop the fragment so the next append starts on a fresh line
        with open(path, "r+b") as f:
            f.truncate(len(complete))
    records = {}
    for number, line in enumerate(complete.splitlines(), start=1):
        if line.strip():
            record = _parse_line(line, path, number)
            records[str(record["id"])] = record
    return records


def _parse_line(line: bytes, path: str | Path, number: int) -> dict:
    fix = "repair or delete that line, or start afresh (--overwrite / overwrite=True)."
    try:
        record = json.loads(line)
    except (UnicodeDecodeError, json.JSONDecodeError) as error:
        raise ValueError(f"{path}, line {number}: not a JSON record ({error}); {fix}") from error
    if not isinstance(record, dict) or "id" not in record:
        raise ValueError(f"{path}, line {number}: a record needs an 'id', got {line[:80]!r}; {fix}")
    return record


def append_records(path: str | Path | None, records: list[dict]) -> None:
    """Append `records` (each with an `id`), one JSON line each, flushed and fsynced."""
    if path is None or not records:
        return
    with open(path, "a") as f:
        for record in records:
            f.write(json.dumps(record) + "\n")
        f.flush()
        os.fsync(f.fileno())
