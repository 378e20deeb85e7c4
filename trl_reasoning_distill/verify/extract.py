"""Final-answer extraction from model text, by named mode (lm-evaluation-harness style).

Every function is linear in the length of the text and returns `None` when it finds no answer.
"""

import re
from collections import deque

EXTRACTION_MODES = ("boxed", "last_number", "gsm8k", "auto")

MAX_BRACE_DEPTH = 64  # deeper `{...}` nesting is refused (no real answer nests this deep)
MAX_BOXED_CHARS = 10_000  # longer `\boxed{...}` contents are refused

_BOXED_OPEN = re.compile(r"\\(?:boxed|fbox)\s*\{")
_BRACE_OR_ESCAPE = re.compile(r"[{}\\]")
# An optional sign (not when the `-` is a binary minus after a digit, letter or `)`), then a number with thousands
# separators `1,234.5`, an integer, a decimal or a fraction `a/b`. Possessive `++` keeps it linear on long digit runs.
_NUMBER = re.compile(r"(?:(?<![\w)])-)?(?:\d{1,3}(?:,\d{3})++(?!\d)(?:\.\d++)?|\d++(?:/\d++|\.\d++)?|(?<!\d)\.\d++)")
_GSM8K_ANSWER = re.compile(r"####[ \t]*\$?[ \t]*(-?[\d,]*\d(?:\.\d+)?)")


def closing_brace(text: str, open_index: int, max_depth: int = MAX_BRACE_DEPTH) -> int | None:
    r"""
    Index of the `}` that closes the `{` at `open_index`.

    Escaped characters (`\{`, `\}`, `\\`) are skipped, so `\left\{ ... \right.` inside a group is balanced.

    Args:
        text (`str`):
            Text to scan.
        open_index (`int`):
            Index of an opening `{` in `text`.
        max_depth (`int`, *optional*, defaults to `64`):
            Nesting depth above which the group is refused.

    Returns:
        `int | None`: The index of the closing brace, or `None` if the group is unbalanced, nests deeper than
        `max_depth` or spans more than `MAX_BOXED_CHARS` characters.
    """
    depth, position = 0, open_index
    end = min(len(text), open_index + MAX_BOXED_CHARS + 2)
    while (match := _BRACE_OR_ESCAPE.search(text, position, end)) is not None:
        position = match.end()
        if match.group() == "\\":
            position += 1  # skip the escaped character
            continue
        depth += 1 if match.group() == "{" else -1
        if depth == 0:
            return match.start()
        if depth > max_depth:
            return None
    return None


def extract_boxed(text: str) -> str | None:
    r"""
    Content of the last `\boxed{...}` (or `\fbox{...}`) in `text`, nested braces included.

    Args:
        text (`str`):
            Model output.

    Returns:
        `str | None`: The stripped content, or `None` if there is no box or the last box is unbalanced (e.g. a
        truncated generation), nests deeper than 64 or is longer than 10,000 characters.

    Example:
        >>> extract_boxed(r"so \boxed{1} or rather \boxed{\frac{1}{2}}.")
        '\\frac{1}{2}'
    """
    last_open = _last_match(_BOXED_OPEN, text)
    if last_open is None:
        return None
    open_index = last_open.end() - 1
    close_index = closing_brace(text, open_index)
    if close_index is None:
        return None
    return text[open_index + 1 : close_index].strip()


def extract_last_number(text: str) -> str | None:
    """
    Last number in `text`: an integer, a decimal or a fraction `a/b`, with its sign and without thousands separators.

    A `-` counts as a sign only when it does not follow a digit, a letter or `)` (so `10-3` gives `3`).

    Args:
        text (`str`):
            Model output.

    Returns:
        `str | None`: The number as written (`"-12"`, `"3.5"`, `"1234"` for `1,234`, `"3/4"`), or `None`.
    """
    last = _last_match(_NUMBER, text)
    return None if last is None else last.group().replace(",", "")


def extract_gsm8k(text: str) -> str | None:
    """
    Number after the last `####` marker (the GSM8K answer convention), without `$` and thousands separators.

    Args:
        text (`str`):
            Model output or GSM8K reference solution.

    Returns:
        `str | None`: The number (`"1234"` for `#### $1,234`), or `None` if no `####` is followed by a number.
    """
    last = _last_match(_GSM8K_ANSWER, text)
    return None if last is None else last.group(1).replace(",", "")


def extract_answer(text: str, mode: str = "auto") -> str | None:
    """
    Final answer of `text` under a named extraction mode.

    Args:
        text (`str`):
            Model output.
        mode (`str`, *optional*, defaults to `"auto"`):
            One of `EXTRACTION_MODES`: `"boxed"` ([`extract_boxed`]), `"last_number"` ([`extract_last_number`]),
            `"gsm8k"` ([`extract_gsm8k`]), or `"auto"`: the first of boxed, gsm8k and last number that finds an
            answer. Record the mode next to every accuracy it produces.

    Returns:
        `str | None`: The answer, or `None` if the mode finds none.
    """
    if mode == "boxed":
        return extract_boxed(text)
    if mode == "last_number":
        return extract_last_number(text)
    if mode == "gsm8k":
        return extract_gsm8k(text)
    if mode == "auto":
        for extractor in (extract_boxed, extract_gsm8k, extract_last_number):
            if (answer := extractor(text)) is not None:
                return answer
        return None
    raise ValueError(f"mode must be one of {EXTRACTION_MODES}, got {mode!r}.")


def _last_match(pattern: re.Pattern, text: str) -> re.Match | None:
    """Last match of `pattern` in `text`, keeping no others in memory."""
    last = deque(pattern.finditer(text), maxlen=1)
    return last[0] if last else None
