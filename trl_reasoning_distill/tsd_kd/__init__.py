"""TSD-KD, token-selective dual knowledge distillation (https://huggingface.co/papers/2603.13260).

The pure loss pieces are imported here and need torch only; `TSDKDConfig` and `TSDKDTrainer` (which import trl)
load on first access, so importing this package stays light.
"""

import importlib

from .loss import TSDKDOutput, entropy_gap_gate, plackett_luce_loss, tsd_kd_loss, tsd_kd_loss_chunked
from .selection import adaptive_opener_ratio, opener_mask, sample_entropy_gap, top_entropy_mask

_LAZY = {"TSDKDConfig": "config", "TSDKDTrainer": "trainer"}

__all__ = [
    "TSDKDConfig",
    "TSDKDOutput",
    "TSDKDTrainer",
    "adaptive_opener_ratio",
    "entropy_gap_gate",
    "opener_mask",
    "plackett_luce_loss",
    "sample_entropy_gap",
    "top_entropy_mask",
    "tsd_kd_loss",
    "tsd_kd_loss_chunked",
]


def __getattr__(name: str):
    if name not in _LAZY:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    return getattr(importlib.import_module(f".{_LAZY[name]}", __name__), name)
