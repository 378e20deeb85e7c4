"""What every CoTD-PO scorer shares: the prompt type, its chat messages, and the check and regrouping of the K
candidate answers of each prompt."""

from collections.abc import Sequence

Prompt = str | list[dict[str, str]]


def prompt_messages(prompt: Prompt) -> list[dict[str, str]]:
    """Chat messages of a prompt: a string is one user turn; a message list is copied."""
    if isinstance(prompt, str):
        if not prompt:
            raise ValueError("Got an empty prompt string.")
        return [{"role": "user", "content": prompt}]
    if isinstance(prompt, list) and prompt and all(isinstance(m, dict) and "content" in m for m in prompt):
        return [dict(m) for m in prompt]
    raise TypeError(f"A prompt must be a non-empty string or a list of chat messages, got {prompt!r:.200}.")


def check_groups(prompts, candidates, rationales) -> None:
    if len(candidates) != len(prompts):
        raise ValueError(f"Got {len(prompts)} prompts but {len(candidates)} candidate lists; pass one per prompt.")
    if rationales is not None and len(rationales) != len(prompts):
        raise ValueError(f"Got {len(prompts)} prompts but {len(rationales)} rationales; pass one per prompt or None.")
    for i, group in enumerate(candidates):
        if isinstance(group, str):
            raise TypeError(f"candidates[{i}] is a string; pass a list of answers per prompt.")


def regroup(flat: list[float], candidates: Sequence[Sequence[str]]) -> list[list[float]]:
    out, start = [], 0
    for group in candidates:
        out.append(flat[start : start + len(group)])
        start += len(group)
    return out
