r"""Is a predicted final answer equal to the reference answer?

Cheapest first: a normalised string match; an exact rational comparison of plain numbers, `a/b` and `\frac{a}{b}`;
then, for what those leave open, math-verify (`pip install 'trl_reasoning_distill[math]'`) with LaTeX parsing only,
so that no model text reaches sympy's `eval`-based parser. math-verify runs under a SIGALRM deadline, which only the
main thread can set: off the main thread (and on Windows) only the first two steps run, so grading never hangs there
but accepts fewer equivalent forms.
"""

import functools
import logging
import os
import re
import signal
import threading
import time
from collections.abc import Callable, Sequence
from fractions import Fraction

from .extract import closing_brace, extract_boxed

logger = logging.getLogger(__name__)

MAX_NUMBER_CHARS = 100  # numbers written with more characters are not compared (nothing huge is computed)
MAX_MATH_VERIFY_CHARS = 1_000  # longer answers are not given to math-verify
# `str()` of a missing value (None, a float NaN, JSON null, pandas' NA): a gold answer written so is missing, not text
MISSING_GOLD_TEXTS = frozenset({"None", "nan", "NaN", "null", "<NA>"})
_MAX_PARSE_DEPTH = 16  # deeper brace nesting makes math-verify's parser take seconds
_REFIRE_SECONDS = 0.05  # the deadline re-fires at this period until the interrupted code gives up

_TEXT_COMMAND = re.compile(r"\\(?:text|textbf|textrm|mathrm|mbox)\{([^{}]*)\}")
_NOISE = re.compile(r"\\[!,;: ]|\\(?:left|right)(?![A-Za-z])|\^\{?\\circ\}?")
_SHORT_FRAC = re.compile(r"\\frac(\d)(\d)")
_THOUSANDS = re.compile(r"(?<=\d),(?=\d{3}(?!\d))")
_DECIMAL = re.compile(r"-?(?:\d+(?:\.\d+)?|\.\d+)")
_SLASH_FRACTION = re.compile(r"()(-?\d+)/(\d+)")
_LATEX_FRACTION = re.compile(r"(-?)\\frac\{(-?\d+)\}\{(-?\d+)\}")
_LONG_NUMBER = re.compile(rf"\d{{{MAX_NUMBER_CHARS + 1}}}")
_BIG_FACTORIAL = re.compile(r"(?:\d{5}|\})\s*!")
_CARET = re.compile(r"\^\s*")
_WORD = re.compile(r"[\w.]*")
_POWER_AFTER = re.compile(r"\s*\^")
_TOWER_IN_EXPONENT = re.compile(r"[\^!]|\d{5}")


class _DeadlineExceeded(BaseException):
    """Raised from the SIGALRM handler; a `BaseException` so that math-verify's `except Exception` lets it through."""


def grade(prediction: str | None, gold: str, timeout: float = 2.0) -> bool:
    r"""
    Whether `prediction` is shown equal to the reference answer `gold`.

    Both sides are normalised (content of a `\boxed{}`, no `$`, spaces, `\!`, `\left`/`\right`, `^\circ` or trailing
    `.`, `\text{x}` -> `x`, `\dfrac` -> `\frac`, `1,234` -> `1234`) and compared as strings, then as exact rationals
    when both are plain numbers, `a/b` or `\frac{a}{b}` (`0.5 == 1/2`, `91 == 91.0`, but `0.333333 != 1/3`). Other
    pairs go to math-verify when it is installed, the text is at most 1,000 characters and free of power towers, and
    the call runs on the main thread; anything else, and anything math-verify cannot settle within `timeout`, is
    `False`. No model text is ever evaluated. A missing gold answer is an error, never a match: `None`, text that is
    empty once normalised (`""`, `"$ $"`, `"\boxed{}"`), and the text a missing value prints as (`"None"`, `"nan"`,
    `"NaN"`, `"null"`, `"<NA>"`, e.g. from `str(row["answer"])`) raise `ValueError`.

    Args:
        prediction (`str | None`):
            Extracted answer of the model (e.g. from [`extract_answer`]); `None` (no answer found) grades `False`.
        gold (`str`):
            Reference answer; must not be missing (see above).
        timeout (`float`, *optional*, defaults to `2.0`):
            Seconds math-verify may spend on this pair.

    Returns:
        `bool`: `True` iff the two answers are shown equal.

    Raises:
        `ValueError`: When `gold` is missing (see above). `TypeError`: When `gold` is not a string.
    """
    if timeout <= 0:
        raise ValueError(f"timeout must be a positive number of seconds, got {timeout}.")
    _check_gold(gold)
    gold = _strip_answer(gold)
    normal_gold = _normalize(gold)
    if not normal_gold:
        raise ValueError(f"The gold answer is empty once normalised ({gold!r}): a missing reference answer cannot be "
                         f"graded. Drop or fix the row before grading.")
    if prediction is None:
        return False
    prediction = _strip_answer(prediction)
    normal_prediction = _normalize(prediction)
    if not normal_prediction:
        return False
    if normal_prediction == normal_gold:
        return True
    prediction_value, gold_value = _to_fraction(normal_prediction), _to_fraction(normal_gold)
    if prediction_value is not None and gold_value is not None:
        return prediction_value == gold_value
    return _math_verify_equal(prediction, gold, timeout)


def grade_batch(predictions: Sequence[str | None], golds: Sequence[str], timeout: float = 2.0) -> list[bool]:
    """
    [`grade`] over aligned lists.

    Args:
        predictions (`Sequence[str | None]`):
            Extracted answers.
        golds (`Sequence[str]`):
            Reference answers, one per prediction; none may be missing (see [`grade`]).
        timeout (`float`, *optional*, defaults to `2.0`):
            Seconds math-verify may spend on each pair.

    Returns:
        `list[bool]`: One verdict per pair.
    """
    if len(predictions) != len(golds):
        raise ValueError(f"predictions and golds must have the same length, got {len(predictions)} and {len(golds)}.")
    return [grade(prediction, gold, timeout) for prediction, gold in zip(predictions, golds, strict=True)]


def _check_gold(gold: str) -> None:
    """Raise if `gold` is not a string or is the text of a missing value (see [`grade`])."""
    if gold is None:
        raise ValueError("The gold answer is None: a missing reference answer cannot be graded. Drop or fix the row "
                         "before grading.")
    if not isinstance(gold, str):
        raise TypeError(f"The gold answer must be a string, got {type(gold).__name__} {gold!r:.80}; pass its text.")
    if gold.strip() in MISSING_GOLD_TEXTS:
        raise ValueError(f"The gold answer is {gold!r}, the text of a missing value (str() of None, NaN, null or NA): "
                         f"a missing reference answer cannot be graded. Drop or fix the row before grading.")


def _strip_answer(text: str) -> str:
    """Content of the last box if there is one, without `$` (or `\\$`), surrounding spaces and trailing `.`."""
    boxed = extract_boxed(text)
    text = text if boxed is None else boxed
    return re.sub(r"\\?\$", "", text).strip().rstrip(".")


def _normalize(text: str) -> str:
    """Canonical string form of a stripped answer (see [`grade`])."""
    text = _TEXT_COMMAND.sub(r"\1", text)
    text = text.replace("\\dfrac", "\\frac").replace("\\tfrac", "\\frac")
    text = _SHORT_FRAC.sub(r"\\frac{\1}{\2}", _NOISE.sub("", text))
    text = "".join(text.split())
    return _THOUSANDS.sub("", text).rstrip(".")


def _to_fraction(text: str) -> Fraction | None:
    """Exact value of a normalised plain number, `a/b` or `\\frac{a}{b}`; `None` for anything else or `x/0`."""
    if len(text) > MAX_NUMBER_CHARS:
        return None
    if _DECIMAL.fullmatch(text):
        return Fraction(text)
    match = _SLASH_FRACTION.fullmatch(text) or _LATEX_FRACTION.fullmatch(text)
    if match is None or int(match[3]) == 0:
        return None
    value = Fraction(int(match[2]), int(match[3]))
    return -value if match[1] else value


def _math_verify_equal(prediction: str, gold: str, timeout: float) -> bool:
    """math-verify's verdict within `timeout` seconds; `False` when it is missing, unsafe to run, or too slow."""
    math_verify = _load_math_verify()
    if math_verify is None or not (_is_tractable(prediction) and _is_tractable(gold)):
        return False
    if os.name != "posix" or threading.current_thread() is not threading.main_thread():
        _warn_fallback_only()
        return False
    try:
        return _run_with_deadline(functools.partial(_verify, math_verify, prediction, gold), timeout)
    except _DeadlineExceeded:
        logger.warning("math-verify took over %.1f s on %.80r; graded as incorrect.", timeout, prediction)
        return False


def _verify(math_verify, prediction: str, gold: str) -> bool:
    """math-verify on LaTeX only (its `ExprExtractionConfig` runs sympy's `eval`-based `parse_expr`)."""
    latex_only = [math_verify.LatexExtractionConfig()]
    parsed_gold = math_verify.parse(f"${gold}$", latex_only, parsing_timeout=None)
    parsed_prediction = math_verify.parse(f"${prediction}$", latex_only, parsing_timeout=None)
    if not parsed_gold or not parsed_prediction:
        return False
    return math_verify.verify(parsed_gold, parsed_prediction, timeout_seconds=None)


def _is_tractable(text: str) -> bool:
    """Cheap screen before math-verify: short, balanced and shallow braces, no long numbers, no power towers."""
    if len(text) > MAX_MATH_VERIFY_CHARS or "**" in text or _LONG_NUMBER.search(text) or _BIG_FACTORIAL.search(text):
        return False
    if closing_brace("{" + text + "}", 0, max_depth=_MAX_PARSE_DEPTH) != len(text) + 1:
        return False
    return not _has_power_tower(text)


def _has_power_tower(text: str) -> bool:
    """Whether an exponent holds a `^`, a `!` or a 5-digit number, or is itself raised to a power (`a^b^c`)."""
    for caret in _CARET.finditer(text):
        start = caret.end()
        if text.startswith("(", start):
            end = len(text)  # conservative: the whole rest is the exponent
        elif text.startswith("{", start):
            close = closing_brace(text, start)
            end = len(text) if close is None else close + 1
        else:
            end = _WORD.match(text, start).end()
        if _TOWER_IN_EXPONENT.search(text, start, end) or _POWER_AFTER.match(text, end):
            return True
    return False


@functools.cache
def _load_math_verify():
    """The `math_verify` module, warmed up, or `None` when it is not installed (looked up once per process)."""
    try:
        import math_verify
    except ImportError:
        return None
    for name in ("math_verify.parser", "math_verify.grader"):
        # math-verify's own signal timeouts are disabled (they would cancel our timer); silence its notice about it
        logging.getLogger(name).addFilter(lambda record: not record.getMessage().startswith("Timeout is disabled"))
    # build the LaTeX parser now, on a constant, so that the first real answer does not spend its deadline on it
    math_verify.parse("$x$", [math_verify.LatexExtractionConfig()], parsing_timeout=None)
    return math_verify


@functools.cache
def _warn_fallback_only() -> None:
    """Log, once per process, that grading off the main thread skips math-verify."""
    logger.warning(
        "grade() runs off the main thread, where math-verify cannot be given a deadline (SIGALRM): only the exact "
        "string and number comparisons are used there. Call it from the main thread to use math-verify."
    )


def _run_with_deadline(function: Callable[[], bool], seconds: float) -> bool:
    """`function()`, interrupted by `_DeadlineExceeded` after `seconds` (main thread only); restores prior timers."""
    armed = True

    def on_alarm(signum, frame):
        if armed:
            raise _DeadlineExceeded

    previous_handler = signal.signal(signal.SIGALRM, on_alarm)
    previous_delay, previous_interval = signal.setitimer(signal.ITIMER_REAL, seconds, _REFIRE_SECONDS)
    start = time.monotonic()
    try:
        return function()
    finally:
        try:
            armed = False
        finally:  # runs even if the deadline fires on the way out: the timer and handler are always given back
            signal.setitimer(signal.ITIMER_REAL, 0)
            signal.signal(signal.SIGALRM, signal.SIG_DFL if previous_handler is None else previous_handler)
            if previous_delay > 0:  # someone else's timer (e.g. pytest-timeout) was running: give back what is left
                remaining = max(previous_delay - (time.monotonic() - start), 1e-3)
                signal.setitimer(signal.ITIMER_REAL, remaining, previous_interval)
