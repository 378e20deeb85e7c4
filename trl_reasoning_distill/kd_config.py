"""`KDConfig`: `GKDConfig` plus the fields of our shared distillation base."""

import importlib.util
from dataclasses import dataclass, field

import torch

from ._trl import GKDConfig
from .divergence import DIVERGENCES
from .validation import check_finite_fields


def default_attn_implementation() -> str:
    """`flash_attention_2` where flash-attn is installed and a GPU is present, else `sdpa` (works everywhere)."""
    if torch.cuda.is_available() and importlib.util.find_spec("flash_attn") is not None:
        return "flash_attention_2"
    return "sdpa"


@dataclass
class KDConfig(GKDConfig):
    r"""
    Configuration class for [`KDTrainer`]. Only the fields added to [`GKDConfig`] are listed; `lmbda` (on-policy
    fraction), `beta`, `temperature` (now used by the loss as well as by sampling), `max_new_tokens` and `seq_kd` keep
    GKD's meaning and defaults.

    Parameters:
        divergence (`str`, *optional*, defaults to `"generalized_jsd"`):
            Per-token divergence, one of `divergence.DIVERGENCES`. GKD's loss is `generalized_jsd` with `beta`.
        skew_alpha (`float`, *optional*, defaults to `0.1`):
            Mixing weight of `skew_kl`/`skew_reverse_kl` (DistiLLM-2's default).
        vocab_size (`int`, *optional*):
            Number of vocabulary rows compared between student and teacher. Defaults to the tokenizer's length, so
            padded embedding rows (Qwen2.5: 152064 vs 151936) are dropped.
        loss_chunk_size (`int`, *optional*, defaults to `-1`):
            Tokens per chunk of the memory-lean loss (`chunked.py`): the logits of both models are formed this many
            tokens at a time from the last hidden states and never held whole. `-1` picks the size that keeps each
            `[chunk, vocab]` buffer at 256 MiB; `0` computes full logits (GKD's way).
        attn_implementation (`str`, *optional*):
            Attention kernel for models loaded from a path: `flash_attention_2` when flash-attn and a GPU exist, else
            `sdpa`.
    """

    divergence: str = field(
        default="generalized_jsd", metadata={"help": f"Per-token divergence, one of {', '.join(DIVERGENCES)}."}
    )
    skew_alpha: float = field(default=0.1, metadata={"help": "alpha of skew (reverse) KL; DistiLLM-2's default."})
    vocab_size: int | None = field(
        default=None, metadata={"help": "Vocabulary rows compared (default: the tokenizer's length)."}
    )
    loss_chunk_size: int = field(
        default=-1, metadata={"help": "Tokens per loss chunk: -1 auto (256 MiB buffers), 0 full logits (GKD's way)."}
    )
    attn_implementation: str | None = field(
        default=None, metadata={"help": "Attention kernel for models loaded by name (default: flash-attn or sdpa)."}
    )

    def __post_init__(self):
        check_finite_fields(self)  # every float field, those of subclasses and of GKD/TrainingArguments included
        if self.bf16 is None and not self.fp16:  # ours: TRL turns bf16 on by default, which is slow and lossy on CPU
            self.bf16 = torch.cuda.is_available()
        super().__post_init__()
        if self.divergence not in DIVERGENCES:
            raise ValueError(f"divergence must be one of {DIVERGENCES}, got {self.divergence!r}.")
        if not 0.0 <= self.skew_alpha <= 1.0:
            raise ValueError(f"skew_alpha must be in [0, 1], got {self.skew_alpha}.")
        if self.temperature <= 0:
            raise ValueError(f"temperature must be > 0, got {self.temperature}.")
        if self.loss_chunk_size < -1:
            raise ValueError(f"loss_chunk_size must be -1 (auto), 0 (full logits) or > 0, got {self.loss_chunk_size}.")
        if self.vocab_size is not None and self.vocab_size < 1:
            raise ValueError(f"vocab_size must be >= 1, got {self.vocab_size}.")
        self.attn_implementation = self.attn_implementation or default_attn_implementation()
