"""The `Generator` protocol every sampling backend implements, and the `Sample` it returns.

Backends take token ids (not strings) so that the caller controls templating, and return `n` samples per prompt
grouped by prompt: `result[i][j]` is sample `j` of prompt `i`.
"""

from dataclasses import dataclass, field
from typing import Protocol, runtime_checkable


@dataclass
class Sample:
    """One sampled continuation.

    Args:
        token_ids (`list[int]`): generated ids, without padding; ends with EOS when `finish_reason == "eos"`.
        text (`str`): decoded `token_ids` (special tokens skipped), cut before the first stop string if one matched.
        finish_reason (`str`): `"eos"`, `"stop"` (a stop string) or `"length"` (hit `max_new_tokens`).
        logprobs (`list[float] | None`): per generated token, log-probability under the model's own distribution at
            temperature 1 (as vLLM reports it), when asked for.
    """

    token_ids: list[int]
    text: str
    finish_reason: str
    logprobs: list[float] | None = field(default=None)


@runtime_checkable
class Generator(Protocol):
    """Samples continuations of token-id prompts."""

    def generate(
        self,
        prompt_ids: list[list[int]],
        n: int = 1,
        max_new_tokens: int = 256,
        temperature: float = 1.0,
        top_p: float = 1.0,
        top_k: int = 0,
        stop: list[str] | None = None,
        return_logprobs: bool = False,
    ) -> list[list[Sample]]:
        """`n` samples for each prompt; `temperature=0` is greedy decoding."""
        ...

    def continue_(
        self,
        prefix_ids: list[list[int]],
        n: int = 1,
        max_new_tokens: int = 256,
        temperature: float = 1.0,
        top_p: float = 1.0,
        top_k: int = 0,
        stop: list[str] | None = None,
        return_logprobs: bool = False,
    ) -> list[list[Sample]]:
        """Like `generate`, from prefixes that already hold part of a completion (Gen-SSD's chunk loop)."""
        ...


def validate_sampling(n: int, max_new_tokens: int, temperature: float, top_p: float, top_k: int) -> None:
    """Raise `ValueError` naming the bad sampling argument, before any compute."""
    if n < 1:
        raise ValueError(f"n must be >= 1, got {n}.")
    if max_new_tokens < 1:
        raise ValueError(f"max_new_tokens must be >= 1, got {max_new_tokens}.")
    if temperature < 0:
        raise ValueError(f"temperature must be >= 0 (0 = greedy), got {temperature}.")
    if not 0 < top_p <= 1:
        raise ValueError(f"top_p must be in (0, 1], got {top_p}.")
    if top_k < 0:
        raise ValueError(f"top_k must be >= 0 (0 = off), got {top_k}.")
