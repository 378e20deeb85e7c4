"""TSD-KD, token-selective dual knowledge distillation (https://huggingface.co/papers/2603.13260).

Only the pure loss pieces live here so far; importing this package needs torch only (no trl, no transformers).
"""

from .loss import (
    TSDKDOutput,
    adaptive_opener_ratio,
    entropy_gap_gate,
    opener_mask,
    plackett_luce_loss,
    sample_entropy_gap,
    top_entropy_mask,
    tsd_kd_loss,
)

__all__ = [
    "TSDKDOutput",
    "adaptive_opener_ratio",
    "entropy_gap_gate",
    "opener_mask",
    "plackett_luce_loss",
    "sample_entropy_gap",
    "top_entropy_mask",
    "tsd_kd_loss",
]
