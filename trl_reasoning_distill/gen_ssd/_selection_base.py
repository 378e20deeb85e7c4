"""Gen-SSD selection: the result types and argument checks shared by `perplexity.py`, `beam_search.py` and
`termination.py` (all re-exported by `selection.py`)."""

from typing import NamedTuple

import torch

__all__ = ["BeamState", "BeamStep", "CandidatePool", "FinalPick", "Selection"]


class CandidatePool(NamedTuple):
    """Layout of one chunk round's candidates, `(P, N)` each: `parent` (long, the beam a slot extends),
    `sample` (long, its sample index within that beam; both -1 on empty slots) and `valid` (bool)."""

    parent: torch.Tensor
    sample: torch.Tensor
    valid: torch.Tensor


class Selection(NamedTuple):
    """Ranked choice, `(P, K)` each, best first: `index` (long pool slot, -1 where nothing is kept), `score` (the
    kept slot's score, NaN where nothing is kept) and `kept` (bool; False when a row has fewer than K valid slots)."""

    index: torch.Tensor
    score: torch.Tensor
    kept: torch.Tensor


class BeamState(NamedTuple):
    """Beams of every prompt, `(P, B)` each: `nll` (summed student NLL of the accepted chunks), `tokens` (long, their
    token count) and `live` (bool: extended in the next round). Ended and empty entries are not live."""

    nll: torch.Tensor
    tokens: torch.Tensor
    live: torch.Tensor


class BeamStep(NamedTuple):
    """Result of [`advance_beams`]: the new `beams`; `parent` (long `(P, B)`, the previous beam each new beam extends,
    -1 for an empty entry) and `done` (bool `(P, B)`: the new beam ended in this round and is a final candidate)."""

    beams: BeamState
    parent: torch.Tensor
    done: torch.Tensor


class FinalPick(NamedTuple):
    """Result of [`final_pick`], `(P,)` each: `index` (long into F, -1 if none), `perplexity` (overall PPL of the pick,
    NaN if none) and `found` (bool: the prompt has an ended trajectory)."""

    index: torch.Tensor
    perplexity: torch.Tensor
    found: torch.Tensor


# --- checks ------------------------------------------------------------------------------------------------------


def _check_positive_int(name: str, value: int) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ValueError(f"`{name}` must be an integer >= 1, got {value!r}.")


def _check_mask(name: str, mask: torch.Tensor, shape: torch.Size | tuple) -> None:
    if mask.dtype != torch.bool or tuple(mask.shape) != tuple(shape):
        raise ValueError(
            f"`{name}` must be a bool tensor of shape {tuple(shape)}, got {mask.dtype} {tuple(mask.shape)}."
        )


def _check_ints(name: str, values: torch.Tensor, shape: torch.Size | tuple) -> None:
    if values.is_floating_point() or values.dtype == torch.bool or tuple(values.shape) != tuple(shape):
        raise ValueError(
            f"`{name}` must be an integer tensor of shape {tuple(shape)}, got {values.dtype} {tuple(values.shape)}."
        )


def _float(values: torch.Tensor) -> torch.Tensor:
    """At least float32 (float64 stays float64): log-softmax and NLL sums in fp32, spec §2.4 / §8 A6."""
    return values.to(torch.promote_types(values.dtype, torch.float32))
