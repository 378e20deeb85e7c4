"""Answer extraction and grading: many one-line cases, both with and without math-verify."""

import importlib
import importlib.util
import os
import signal
import subprocess
import sys
import threading
import time

import pytest

from trl_reasoning_distill.verify import (
    EXTRACTION_MODES,
    extract_answer,
    extract_boxed,
    extract_gsm8k,
    extract_last_number,
    grade,
    grade_batch,
)

# the module itself: `trl_reasoning_distill.verify.grade` as an attribute is the function
grade_module = importlib.import_module("trl_reasoning_distill.verify.grade")
HAS_MATH_VERIFY = importlib.util.find_spec("math_verify") is not None
posix_only = pytest.mark.skipif(os.name != "posix", reason="the math-verify deadline uses SIGALRM")


@pytest.fixture
def with_math_verify():
    if not HAS_MATH_VERIFY:
        pytest.skip("math-verify is not installed")
    grade_module._load_math_verify()  # import and warm up outside the timed part of a test


@pytest.fixture
def without_math_verify(monkeypatch):
    monkeypatch.setitem(sys.modules, "math_verify", None)  # `import math_verify` now raises ImportError
    grade_module._load_math_verify.cache_clear()
    yield
    grade_module._load_math_verify.cache_clear()


@pytest.fixture(params=["with_math_verify", "without_math_verify"])
def backend(request):
    request.getfixturevalue(request.param)
    return request.param


def _timed(function, *args):
    start = time.perf_counter()
    result = function(*args)
    return result, time.perf_counter() - start


def _in_thread(function, *args):
    results = []
    thread = threading.Thread(target=lambda: results.append(function(*args)))
    thread.start()
    thread.join(timeout=10)
    assert not thread.is_alive()
    return results[0]


# ----------------------------------------------------------------------------------------------------- extraction


@pytest.mark.parametrize(
    "text, expected",
    [
        (r"\boxed{42}", "42"),
        (r"so the answer is $\boxed{-14}$.", "-14"),
        (r"\boxed{\frac{1}{2}}", r"\frac{1}{2}"),
        (r"\boxed{\frac{\sqrt{2}}{2}}", r"\frac{\sqrt{2}}{2}"),
        (r"first \boxed{1}, then \boxed{2}", "2"),
        (r"\fbox{7}", "7"),
        (r"\boxed{1} or \fbox{3}", "3"),
        (r"\boxed { 3 }", "3"),
        (r"\boxed{\boxed{5}}", "5"),
        (r"\boxed{\{1, 2\}}", r"\{1, 2\}"),
        (r"\boxed{f(x) = \left\{ x \right.}", r"f(x) = \left\{ x \right."),
        ("no box here, 5", None),
        (r"\boxed 5", None),
        (r"\boxed{\frac{1}{2}", None),
        (r"\boxed{1} and then \boxed{2", None),
        ("", None),
    ],
)
def test_extract_boxed(text, expected):
    assert extract_boxed(text) == expected


def test_extract_boxed_accepts_depth_64():
    assert extract_boxed(r"\boxed{" + "{" * 63 + "x" + "}" * 64) == "{" * 63 + "x" + "}" * 63


def test_extract_boxed_refuses_depth_65():
    assert extract_boxed(r"\boxed{" + "{" * 64 + "x" + "}" * 65) is None


@pytest.mark.parametrize(
    "text",
    [
        pytest.param(r"\boxed{" + "{" * 10**6, id="boxed_then_1e6_open_braces"),
        pytest.param("{" * 10**6, id="1e6_open_braces"),
        pytest.param(r"\boxed{" + "{" * 10**6 + "}" * (10**6 + 1), id="1e6_balanced_braces"),
        pytest.param(r"\boxed{" + "x" * 10**6 + "}", id="1e6_char_box"),
    ],
)
def test_extract_boxed_refuses_pathological_input_fast(text):
    result, seconds = _timed(extract_boxed, text)
    assert result is None
    assert seconds < 0.1


@pytest.mark.parametrize(
    "text, expected",
    [
        ("the answer is 42", "42"),
        ("it is -12 degrees", "-12"),
        ("x = 3.5.", "3.5"),
        ("total: 1,234 apples", "1234"),
        ("1,234,567", "1234567"),
        ("-1,234.5", "-1234.5"),
        ("3/4 of the cake", "3/4"),
        ("x = -3/4", "-3/4"),
        ("12 then 7", "7"),
        ("10-3", "3"),
        ("$-0.5$", "-0.5"),
        ("no digits at all", None),
        ("", None),
    ],
)
def test_extract_last_number(text, expected):
    assert extract_last_number(text) == expected


@pytest.mark.parametrize(
    "text, expected",
    [
        ("so she has 42 left.\n#### 42", "42"),
        ("#### 1,234", "1234"),
        ("#### $5", "5"),
        ("#### -3", "-3"),
        ("#### 3.50", "3.50"),
        ("#### 42.", "42"),
        ("#### 1\n#### 2", "2"),
        ("the answer is 42", None),
        ("#### forty-two", None),
    ],
)
def test_extract_gsm8k(text, expected):
    assert extract_gsm8k(text) == expected


@pytest.mark.parametrize(
    "text, mode, expected",
    [
        (r"7 so \boxed{5}", "boxed", "5"),
        ("7 so 5", "boxed", None),
        (r"\boxed{5} then 7", "last_number", "7"),
        ("#### 5\nbut 7", "gsm8k", "5"),
        (r"#### 3 and \boxed{5}", "auto", "5"),
        ("#### 3 then 7", "auto", "3"),
        ("it is 7", "auto", "7"),
        ("no answer", "auto", None),
    ],
)
def test_extract_answer(text, mode, expected):
    assert extract_answer(text, mode) == expected


def test_extraction_modes():
    assert EXTRACTION_MODES == ("boxed", "last_number", "gsm8k", "auto")


def test_extract_answer_unknown_mode_lists_modes():
    with pytest.raises(ValueError, match="boxed.*last_number.*gsm8k.*auto"):
        extract_answer("42", mode="strict")


# ------------------------------------------------------------------------------------------------------- grading

EQUIVALENT = [
    ("0.5", r"\frac{1}{2}"),
    ("1/2", r"\frac{1}{2}"),
    ("1/2", "0.5"),
    (r"\frac12", "0.5"),
    ("91", "91.0"),
    ("-14", "-14"),
    (r"-\frac{1}{2}", "-0.5"),
    (r"\frac{-1}{2}", "-1/2"),
    ("1,234", "1234"),
    (r"\boxed{42}", "42"),
    ("$42$", "42"),
    ("42.", "42"),
    (r"\dfrac{3}{4}", r"\frac{3}{4}"),
    (r"\text{Yes}", "Yes"),
    (r"90^\circ", "90"),
    (r"\left( 1, 2 \right)", "(1,2)"),
]
NOT_EQUIVALENT = [
    ("0.5", r"\frac{1}{3}"),
    ("0.333333", r"\frac{1}{3}"),
    ("91", "19"),
    ("-14", "14"),
    ("1/2", "2"),
    ("x+1", "x+2"),
    ("", "0"),
    (r"\boxed{}", "0"),
    ("1" + "0" * 150, "1" + "0" * 150 + ".0"),  # numbers over 100 digits are not compared
]
MATH_VERIFY_ONLY = [
    ("x^2+2x+1", "(x+1)^2"),
    (r"\frac{\sqrt{2}}{2}", r"\sqrt{2}/2"),
    (r"5\text{ cm}", "5"),
    (r"\{1,2\}", r"\{2,1\}"),
]
HOSTILE = [
    pytest.param("9**9**9**9", id="python_power_tower"),
    pytest.param("9^{9^{9^{9}}}", id="latex_power_tower"),
    pytest.param("9^9^9^9", id="latex_power_chain"),
    pytest.param("10^{10}!", id="huge_factorial"),
    pytest.param("{" * 10**6, id="1e6_open_braces"),
    pytest.param("{" * 300 + "1" + "}" * 300, id="300_nested_braces"),
    pytest.param(r"\boxed{" + "{" * 10**6, id="boxed_1e6_open_braces"),
    pytest.param("__import__('os').system('echo hi')", id="code_injection"),
    pytest.param("9" * 10**5, id="1e5_digit_number"),
    pytest.param(r"\frac{1}{0}", id="division_by_zero"),
]


@pytest.mark.parametrize("prediction, gold", EQUIVALENT)
def test_equivalent(backend, prediction, gold):
    assert grade(prediction, gold) is True


@pytest.mark.parametrize("prediction, gold", NOT_EQUIVALENT)
def test_not_equivalent(backend, prediction, gold):
    assert grade(prediction, gold) is False


@pytest.mark.parametrize("prediction, gold", MATH_VERIFY_ONLY)
def test_math_verify_settles_symbolic_forms(with_math_verify, prediction, gold):
    assert grade(prediction, gold) is True


@pytest.mark.parametrize("prediction, gold", MATH_VERIFY_ONLY)
def test_fallback_refuses_symbolic_forms(without_math_verify, prediction, gold):
    assert grade(prediction, gold) is False


def test_math_verify_rejects_symbolic_non_equivalence(with_math_verify):
    assert grade("x^2+1", "(x+1)^2") is False


def test_none_prediction_is_false(backend):
    assert grade(None, "42") is False


@pytest.mark.parametrize("gold", ["1", "0", "x+1"])
@pytest.mark.parametrize("prediction", HOSTILE)
def test_hostile_prediction_is_false_fast(backend, prediction, gold, capfd):
    result, seconds = _timed(grade, prediction, gold)
    assert result is False
    assert seconds < 1.0
    assert "hi" not in capfd.readouterr().out  # nothing was executed


@pytest.mark.parametrize("gold", HOSTILE)
def test_hostile_gold_is_false_fast(backend, gold):
    result, seconds = _timed(grade, "1", gold)
    assert result is False
    assert seconds < 1.0


MISSING_GOLD = [
    pytest.param(None, id="None"),
    pytest.param("", id="empty"),
    pytest.param(" \n", id="blank"),
    pytest.param("$ $", id="empty_math"),
    pytest.param(r"\boxed{}", id="empty_box"),
    pytest.param(r"\boxed{ \, }", id="box_of_spaces"),
    pytest.param(".", id="dot"),
    pytest.param("None", id="str_of_None"),
    pytest.param(" None ", id="str_of_None_spaced"),
    pytest.param("nan", id="str_of_float_nan"),
    pytest.param("NaN", id="NaN"),
    pytest.param("null", id="json_null"),
    pytest.param("<NA>", id="str_of_pandas_NA"),
]


@pytest.mark.parametrize("prediction", [None, "", "None", "nan", "null", "42", r"\boxed{}"],
                         ids=["no_answer", "empty", "str_None", "nan", "null", "42", "empty_box"])
@pytest.mark.parametrize("gold", MISSING_GOLD)
def test_missing_gold_raises_never_matches(prediction, gold):
    with pytest.raises(ValueError, match="gold answer .*a missing reference answer cannot be graded"):
        grade(prediction, gold)


def test_missing_gold_in_a_batch_raises():
    with pytest.raises(ValueError, match="gold answer is None"):
        grade_batch(["1", "2"], ["1", None])
    with pytest.raises(ValueError, match="gold answer is 'None'"):
        grade_batch(["None"], [str(None)])


def test_gold_must_be_text():
    with pytest.raises(TypeError, match="gold answer must be a string, got int 42"):
        grade("42", 42)


def test_none_written_as_latex_text_is_an_answer(backend):
    assert grade("None", r"\text{None}") is True
    assert grade("5", r"\text{None}") is False


def test_timeout_must_be_positive():
    with pytest.raises(ValueError, match="timeout"):
        grade("1", "1", timeout=0)


def test_grade_batch(backend):
    assert grade_batch(["1", None, "2", "0.5"], ["1", "1", "3", "1/2"]) == [True, False, False, True]


def test_grade_batch_length_mismatch():
    with pytest.raises(ValueError, match="same length, got 2 and 1"):
        grade_batch(["1", "2"], ["1"])


# ------------------------------------------------------------------------------------ deadline and threads


@posix_only
def test_deadline_interrupts_slow_math_verify(with_math_verify, monkeypatch):
    monkeypatch.setattr(grade_module, "_verify", lambda *args: time.sleep(10))
    result, seconds = _timed(lambda: grade("x+1", "y", timeout=0.2))
    assert result is False
    assert seconds < 1.0


@posix_only
def test_deadline_interrupts_real_slow_case(with_math_verify):
    result, seconds = _timed(lambda: grade("(9^{9999})^{9999}", "1", timeout=0.3))  # passes the screen; sympy is slow
    assert result is False
    assert seconds < 1.0


@posix_only
def test_deadline_fires_again_when_swallowed(with_math_verify, monkeypatch):
    swallowed = []

    def swallows_first_interrupt(*args):
        try:
            time.sleep(10)
        except grade_module._DeadlineExceeded:
            swallowed.append(True)
        time.sleep(10)

    monkeypatch.setattr(grade_module, "_verify", swallows_first_interrupt)
    result, seconds = _timed(lambda: grade("x+1", "y", timeout=0.2))
    assert (result, swallowed) == (False, [True])
    assert seconds < 1.0


@posix_only
def test_deadline_restores_outer_timer_and_handler(with_math_verify):
    def outer_handler(signum, frame):
        pass

    previous = signal.signal(signal.SIGALRM, outer_handler)
    signal.setitimer(signal.ITIMER_REAL, 30.0)
    try:
        assert grade("x^2+2x+1", "(x+1)^2") is True
        assert signal.getsignal(signal.SIGALRM) is outer_handler
        assert 25.0 < signal.getitimer(signal.ITIMER_REAL)[0] <= 30.0
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, previous)


def test_thread_uses_exact_comparisons(backend):
    assert _in_thread(grade, "0.5", r"\frac{1}{2}") is True


def test_thread_skips_math_verify(with_math_verify):
    assert _in_thread(grade, "x^2+2x+1", "(x+1)^2") is False


@pytest.mark.parametrize("prediction", HOSTILE)
def test_thread_hostile_prediction_is_false_fast(with_math_verify, prediction):
    result, seconds = _timed(_in_thread, grade, prediction, "1")
    assert result is False
    assert seconds < 1.0


def test_import_loads_no_math_verify_or_sympy():
    code = "import sys, trl_reasoning_distill.verify; print('math_verify' in sys.modules, 'sympy' in sys.modules)"
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert result.stdout.split() == ["False", "False"]
