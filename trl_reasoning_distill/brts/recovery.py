"""BRTS ground-truth-hinted recovery prompt (spec §2.8): the Tier-2 retry of a prompt without a correct rollout.

Pure: standard library only. The hint (`RECOVERY_HINT_TEMPLATE`, `recovery_hint`), the teacher-side prompt with the
hint before the assistant turn (`build_recovery_prompt`, `recovery_prompts`, which also return the hint-free student
side) and the checks for a leaked hint (`contains_recovery_hint`, `mentions_validation_key`). The waterfall that
uses the retried rollouts is in `tiers.py`.
"""

import re
from dataclasses import dataclass

__all__ = [
    "RECOVERY_HINT_TEMPLATE", "ASSISTANT_MARKERS", "recovery_hint", "build_recovery_prompt", "RecoveryPrompts",
    "recovery_prompts", "contains_recovery_hint", "mentions_validation_key",
]

# Spec §2.8, verbatim; `{gt}` is the ground-truth answer.
RECOVERY_HINT_TEMPLATE = (
    "[SILENT_VALIDATION_KEY — DO NOT MENTION IN THINKING OR RESPONSE: {gt}]\n"
    "\n"
    "STRICT RULES about the validation key:\n"
    "  1. NEVER mention, quote, paraphrase, or allude to it anywhere — not in <think>, not in your answer.\n"
    "  2. NEVER say things like 'the key says', 'based on the hint', 'the answer is given', 'I can see the correct "
    "answer is', or any equivalent phrasing.\n"
    "  3. Your entire chain of thought must be derived from what you observe in the problem.\n"
    "  4. Only use the validation key silently as a final sanity-check after you have already reasoned to a "
    "conclusion — never as a starting point or shortcut."
)
# Spec §2.8: tried in this order; the first one present is used, at its last occurrence.
ASSISTANT_MARKERS = ("<｜Assistant｜>", "<|Assistant|>", "<|im_start|>assistant", "Assistant:")
_HINT_KEY = "SILENT_VALIDATION_KEY"
_KEY_MENTION = re.compile(r"validation[\s_-]*key", re.IGNORECASE)


# --- the ground-truth-hinted recovery prompt (spec §2.8) -------------------------------------------------------------


def recovery_hint(ground_truth: str, template: str = RECOVERY_HINT_TEMPLATE) -> str:
    """The hint of spec §2.8 for `ground_truth`: `template` with `{gt}` replaced (other braces are left as is)."""
    if "{gt}" not in template:
        raise ValueError("`template` must contain the placeholder `{gt}` for the ground truth.")
    return template.replace("{gt}", ground_truth)


def build_recovery_prompt(
    prompt: str,
    ground_truth: str,
    *,
    template: str = RECOVERY_HINT_TEMPLATE,
    markers: tuple[str, ...] = ASSISTANT_MARKERS,
) -> str:
    """
    The teacher's ground-truth-hinted prompt of spec §2.8, for Tier-2 generation only.

    The first of `markers` found in `prompt` is located at its **last** occurrence, and the prompt becomes
    `pre.rstrip() + "\\n\\n" + hint + "\\n\\n" + marker + post`; without any marker the hint is appended:
    `prompt.rstrip() + "\\n\\n" + hint`. Tokenize the result with `add_special_tokens=False`.

    Args:
        prompt (`str`):
            The templated prompt, decoded **with** its special tokens.
        ground_truth (`str`):
            The ground-truth answer.
        template (`str`, *optional*, defaults to [`RECOVERY_HINT_TEMPLATE`]):
            The hint, with a `{gt}` placeholder.
        markers (`tuple[str, ...]`, *optional*, defaults to [`ASSISTANT_MARKERS`]):
            Assistant-turn markers, in order of preference.

    Returns:
        `str`: The hinted prompt.
    """
    hint = recovery_hint(ground_truth, template)
    for marker in markers:
        if marker in prompt:
            pre, _, post = prompt.rpartition(marker)
            return pre.rstrip() + "\n\n" + hint + "\n\n" + marker + post
    return prompt.rstrip() + "\n\n" + hint


@dataclass(frozen=True)
class RecoveryPrompts:
    """The two sides of a Tier-2 row: `teacher` is the hinted prompt to sample from; `student` is the original prompt,
    the context of both models in the teacher-context loss (spec §2.8: the student never sees the hint)."""

    teacher: str
    student: str


def recovery_prompts(
    prompt: str,
    ground_truth: str,
    *,
    template: str = RECOVERY_HINT_TEMPLATE,
    markers: tuple[str, ...] = ASSISTANT_MARKERS,
) -> RecoveryPrompts:
    """
    The hinted teacher prompt of [`build_recovery_prompt`] and, separately, the hint-free student prompt.

    Args:
        prompt (`str`):
            The original templated prompt; it must not already hold a hint (a `ValueError` says so).
        ground_truth, template, markers:
            As in [`build_recovery_prompt`].

    Returns:
        [`RecoveryPrompts`]: `teacher` (hinted) and `student` (`prompt` unchanged).
    """
    if contains_recovery_hint(prompt, ground_truth, template):
        raise ValueError(
            "`prompt` already holds a recovery hint; pass the original (un-hinted) prompt, the student's context."
        )
    return RecoveryPrompts(
        teacher=build_recovery_prompt(prompt, ground_truth, template=template, markers=markers), student=prompt
    )


def contains_recovery_hint(text: str, ground_truth: str, template: str = RECOVERY_HINT_TEMPLATE) -> bool:
    """Whether `text` holds the hint of `ground_truth` or the hint's key marker; check the student's inputs with it."""
    return _HINT_KEY in text or recovery_hint(ground_truth, template).split("\n", 1)[0] in text


def mentions_validation_key(response: str) -> bool:
    """Whether a hinted rollout mentions the validation key (spec §8 item 14: optional leak filter, off by default)."""
    return _KEY_MENTION.search(response) is not None
