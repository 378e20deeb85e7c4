"""Fingerprints of resumable outputs: what produced a file, so that a resumed run never reuses work made otherwise.

Every long job that resumes from its own output (evaluation records, Gen-SSD sampling, CoTD-PO rounds, rejection
sampling, VCRD rollouts, study CSVs) calls [`claim_output`] before any work. It writes, beside the output, a
`<name>.fingerprint.json` holding the fields that determine the output's content: model identity, dataset identity,
every sampling and scoring setting, the record format and the package version. A later run into the same output
with other fields stops with a [`StaleOutputError`] naming each differing field, and `overwrite=True` (the
`--overwrite` flag of the scripts) deletes the old output and starts afresh.

    fields = {"model": model_identity(model), "dataset": rows_identity(rows), "k": k, "temperature": temperature}
    claim_output("runs/eval.jsonl", fields, overwrite=args.overwrite)

Identities are short hashes: [`model_identity`] hashes every parameter's name, shape, dtype and a strided sample of
its values (cheap at 8B parameters, and any fine-tuning step changes the sample), [`tokenizer_identity`] the
tokenizer's serialized form and chat template, [`rows_identity`] the rows' JSON.
"""

import hashlib
import json
import math
import os
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

FORMAT_VERSION = 1  # of the fingerprint file itself
_VALUES_PER_TENSOR = 4096


class StaleOutputError(ValueError):
    """A resumable output was made under other settings than the run that would resume it."""


def fingerprint_path(output: str | Path) -> Path:
    """The fingerprint file of `output` (`runs/x.jsonl` -> `runs/x.fingerprint.json`; a folder keeps its own)."""
    output = Path(output)
    if output.is_dir() or not output.suffix:
        return output / "fingerprint.json"
    return output.with_name(output.name.removesuffix(output.suffix) + ".fingerprint.json")


def _digest(data: bytes, length: int = 16) -> str:
    return hashlib.sha256(data).hexdigest()[:length]


def _canonical(value: Any) -> Any:
    """`value` as plain JSON (sorted keys, tuples as lists, non-finite floats as strings, objects as `repr`)."""
    if isinstance(value, Mapping):
        return {str(k): _canonical(v) for k, v in sorted(value.items(), key=lambda kv: str(kv[0]))}
    if isinstance(value, (list, tuple)):
        return [_canonical(v) for v in value]
    if isinstance(value, float) and not math.isfinite(value):
        return repr(value)
    if value is None or isinstance(value, (bool, int, float, str)):
        return value
    if isinstance(value, Path):
        return str(value)
    return repr(value)


def rows_identity(rows: Iterable[Mapping]) -> str:
    """Hash of the rows' content (every column, in order): two datasets with the same hash hold the same rows."""
    hasher = hashlib.sha256()
    for row in rows:
        hasher.update(json.dumps(_canonical(dict(row)), sort_keys=True).encode())
        hasher.update(b"\n")
    return hasher.hexdigest()[:16]


def model_identity(model) -> dict:
    """Identity of a loaded model: its class and a hash of every parameter's name, shape, dtype and
    a strided sample of `_VALUES_PER_TENSOR` of its values. Anything without parameters (a `Generator`, an API judge)
    is identified by its `identity()` method when it has one, else by its class name. The path a model was loaded
    from is left out, so a moved checkpoint or another clone of the repository keeps its identity."""
    import torch

    if hasattr(model, "identity"):
        return _canonical(model.identity())
    if not isinstance(model, torch.nn.Module):
        return {"class": type(model).__name__}
    hasher = hashlib.sha256()
    with torch.no_grad():
        for name, tensor in list(model.named_parameters()) + list(model.named_buffers()):
            hasher.update(f"{name}:{tuple(tensor.shape)}:{tensor.dtype}".encode())
            if tensor.device.type == "meta" or tensor.numel() == 0:
                continue
            flat = tensor.detach().reshape(-1)
            sample = flat[:: max(1, flat.numel() // _VALUES_PER_TENSOR)][:_VALUES_PER_TENSOR]
            hasher.update(sample.to(device="cpu", dtype=torch.float64).numpy().tobytes())
    return {"class": type(model).__name__, "weights": hasher.hexdigest()[:16]}


def tokenizer_identity(tokenizer) -> dict:
    """Identity of a tokenizer: its class and a hash of what turns text into ids (the whole serialized fast
    tokenizer, else the vocabulary), its chat template and its special tokens."""
    backend = getattr(tokenizer, "backend_tokenizer", None)
    text = backend.to_str() if backend is not None else json.dumps(sorted(tokenizer.get_vocab().items()))
    extra = {"chat_template": getattr(tokenizer, "chat_template", None),
             "special_tokens": getattr(tokenizer, "special_tokens_map", {})}
    content = text.encode() + json.dumps(_canonical(extra), sort_keys=True).encode()
    return {"class": type(tokenizer).__name__, "content": _digest(content)}


def code_version() -> str:
    """The package version: records of one release are only resumed by the same release."""
    from . import __version__

    return __version__


def make_fingerprint(fields: Mapping[str, Any]) -> dict:
    """`fields` as canonical JSON plus `code_version` and the fingerprint format."""
    return {"format": FORMAT_VERSION, "code_version": code_version(), **_canonical(dict(fields))}


def differing_fields(old: Mapping, new: Mapping) -> list[str]:
    """Lines `field: old -> new` for every top-level field whose value differs (missing on one side included)."""
    lines = []
    for key in sorted(set(old) | set(new)):
        if old.get(key, "<absent>") != new.get(key, "<absent>"):
            lines.append(f"{key}: {_short(old.get(key, '<absent>'))} -> {_short(new.get(key, '<absent>'))}")
    return lines


def _short(value: Any, limit: int = 120) -> str:
    text = json.dumps(value) if not isinstance(value, str) else value
    return text if len(text) <= limit else text[: limit - 3] + "..."


def _write_atomic(path: Path, text: str) -> None:
    temporary = path.with_name(path.name + ".tmp")
    with open(temporary, "w") as handle:
        handle.write(text)
        handle.flush()
        os.fsync(handle.fileno())
    os.replace(temporary, path)


def claim_output(
    output: str | Path,
    fields: Mapping[str, Any],
    overwrite: bool = False,
    companions: Sequence[str | Path] = (),
    flag: str = "--overwrite",
) -> dict:
    """Bind `output` (a file or folder, and its `companions`) to the run described by `fields`, before any work.

    - Nothing there yet: the folder is created (an unwritable place fails now, naming it) and the fingerprint written.
    - The same fingerprint: nothing to do; the caller resumes from what is there.
    - Another fingerprint, or output without one: [`StaleOutputError`] naming every differing field and `flag`.
    - `overwrite=True`: the output, its companions and its fingerprint are deleted first, then claimed afresh.

    Returns the fingerprint written (or found).
    """
    import shutil

    output = Path(output)
    paths = [output, *map(Path, companions)]
    record = fingerprint_path(output)
    new = make_fingerprint(fields)
    if overwrite:
        for path in paths:
            if path.is_dir():
                shutil.rmtree(path)
            elif path.exists():
                path.unlink()
        record.unlink(missing_ok=True)
    exists = [p for p in paths if p.exists() and (p.is_dir() and any(p.iterdir()) or p.is_file() and p.stat().st_size)]
    if record.exists():
        old = json.loads(record.read_text())
        changes = differing_fields(old, new)
        if changes:
            raise StaleOutputError(
                f"{output} was made under other settings than this run:\n  " + "\n  ".join(changes)
                + f"\nPass {flag} to delete it and start afresh, or write to another output."
            )
        return old
    if exists:
        names = ", ".join(str(p) for p in exists)
        raise StaleOutputError(f"{names} exists without a fingerprint ({record}), so what made it is unknown. "
                               f"Pass {flag} to delete it and start afresh, or write to another output.")
    target = record.parent
    try:
        target.mkdir(parents=True, exist_ok=True)
        _write_atomic(record, json.dumps(new, indent=1, sort_keys=True) + "\n")
    except OSError as error:
        raise OSError(f"cannot write the output {output}: {error.strerror or error}") from error
    return new


def check_unique_ids(rows: list[dict], what: str = "the dataset") -> list[dict]:
    """Give rows without an `id` their index, then raise `ValueError` naming the first repeated id and its rows:
    records are resumed by id, so a repeated one would be counted once per row."""
    first_row: dict[str, int] = {}
    for i, row in enumerate(rows):
        row.setdefault("id", i)
        key = str(row["id"])
        if key in first_row:
            raise ValueError(f"{what} repeats id {row['id']!r} (rows {first_row[key]} and {i}); ids must be unique "
                             "because results are resumed by id.")
        first_row[key] = i
    return rows


def row_hash(row: Mapping) -> str:
    """Identity of one input row (every column, its `id` included): each record made from the row stores it."""
    return rows_identity([row])


def check_records_rows(records: Mapping[str, Mapping], rows: Sequence[Mapping], output: str | Path,
                       flag: str = "--overwrite") -> None:
    """Raise [`StaleOutputError`] unless every record of `output` (by `str(id)`, each with the `row_hash` of the row
    it was made from) belongs to a row of `rows` with the same content.

    The data set is checked record by record rather than as one hash, so that an output may grow with its data set (a
    longer prefix of the same rows resumes it), while a record of a changed row, or of a row this data set does not
    have, is never reused.
    """
    by_id = {str(row["id"]): (i, row) for i, row in enumerate(rows)}
    foreign = [key for key in records if key not in by_id]
    changed = [(i, row["id"]) for key, record in records.items() if key in by_id
               for i, row in [by_id[key]] if record.get("row_hash") != row_hash(row)]
    if not foreign and not changed:
        return
    lines = []
    if changed:
        i, key = min(changed)
        lines.append(f"dataset: {len(changed)} row(s) differ from the rows their records were made from (first: row "
                     f"{i}, id {key!r})")
    if foreign:
        lines.append(f"dataset: {len(foreign)} record(s) of ids this dataset does not have (first: {foreign[0]!r})")
    raise StaleOutputError(f"{output} was made from other data than this run's:\n  " + "\n  ".join(lines)
                           + f"\nPass {flag} to delete it and start afresh, or write to another output.")
