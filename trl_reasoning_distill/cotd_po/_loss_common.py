"""Shared helpers of the CoTD-PO loss pieces (`likelihood.py`, `listwise.py`, `pairwise.py`, `loss.py`): argument
checks, the float dtype every term is computed in, and the `(B, G)` candidate mask."""

import torch


def _check_positive(name: str, value: float) -> None:
    if not value > 0:
        raise ValueError(f"`{name}` must be > 0, got {value}.")


def _check_non_negative(name: str, value: float) -> None:
    if not value >= 0:
        raise ValueError(f"`{name}` must be >= 0, got {value}.")


def _float_dtype(*tensors: torch.Tensor) -> torch.dtype:
    """float64 if any input is float64, else float32 (bf16/fp16 inputs are computed in float32)."""
    return torch.float64 if any(t.dtype == torch.float64 for t in tensors) else torch.float32


def _valid_mask(reference_BG: torch.Tensor, mask_BG: torch.Tensor | None) -> torch.Tensor:
    """Bool `(B, G)` candidate mask, all True when `mask_BG` is None; checks the shape."""
    if reference_BG.dim() != 2:
        raise ValueError(f"Expected a (B, G) tensor, got shape {tuple(reference_BG.shape)}.")
    if mask_BG is None:
        return torch.ones(reference_BG.shape, dtype=torch.bool, device=reference_BG.device)
    if mask_BG.shape != reference_BG.shape:
        raise ValueError(f"`mask` must have shape {tuple(reference_BG.shape)}, got {tuple(mask_BG.shape)}.")
    return mask_BG.to(device=reference_BG.device).bool()
