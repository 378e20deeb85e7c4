"""The toy reasoning task: seeded multi-step integer arithmetic with several valid solution styles.

A problem is a chain such as `47+38-19+25`; the prompt asks `47+38-19+25=?` and a completion looks like a reasoning
model's: `<think>` one `a op b=c` step per line `</think>\\boxed{91}`. Four styles solve the same problem in different
ways and lengths, so sampled solutions differ in learnability (what Gen-SSD's selection, BRTS's alignment and TSD-KD's
opener act on):

- `ltr`: left-to-right accumulation, one line per operator.
- `grouped`: add every positive term first, then subtract the negative ones.
- `verbose`: restates the problem, solves left to right, restates the answer.
- `split`: left to right, each step split into tens and ones (`85-19=85-10-9=75-9=66`).

Splits are disjoint by problem text (a stable hash), so a held-out problem is never a training problem.
"""

import hashlib
import random
from dataclasses import dataclass

STYLES = ("ltr", "grouped", "verbose", "split")
SPLITS = ("train", "validation", "test")
_SPLIT_OF_BUCKET = {0: "test", 1: "validation"}  # hash bucket (mod 10) -> split; the other 8 buckets are "train"


@dataclass(frozen=True)
class Problem:
    """`operands[0] signs[0]... ` with `signs[i]` in {+1, -1} applied to `operands[i + 1]`."""

    operands: tuple[int, ...]
    signs: tuple[int, ...]

    @property
    def text(self) -> str:
        out = str(self.operands[0])
        for sign, value in zip(self.signs, self.operands[1:]):
            out += ("+" if sign > 0 else "-") + str(value)
        return out

    @property
    def answer(self) -> int:
        return self.operands[0] + sum(s * v for s, v in zip(self.signs, self.operands[1:]))

    @property
    def prompt(self) -> str:
        return f"{self.text}=?"


def split_of(problem_text: str) -> str:
    """Which split a problem belongs to: a stable hash of its text (10% test, 10% validation, 80% train)."""
    bucket = int(hashlib.md5(problem_text.encode()).hexdigest(), 16) % 10
    return _SPLIT_OF_BUCKET.get(bucket, "train")


def sample_problem(rng: random.Random, min_ops: int, max_ops: int, max_value: int) -> Problem:
    """One problem with `min_ops..max_ops` operands, each in `1..max_value`, `+`/`-` equally likely."""
    n = rng.randint(min_ops, max_ops)
    operands = tuple(rng.randint(1, max_value) for _ in range(n))
    signs = tuple(rng.choice((1, -1)) for _ in range(n - 1))
    return Problem(operands, signs)


def parse_problem(text: str) -> Problem:
    """Inverse of `Problem.text` (also accepts the prompt form with a trailing `=?`)."""
    text = text.removesuffix("=?").strip()
    operands, signs, number = [], [], ""
    for i, ch in enumerate(text):
        if ch.isdigit():
            number += ch
        elif ch in "+-" and number:
            operands.append(int(number))
            signs.append(1 if ch == "+" else -1)
            number = ""
        else:
            raise ValueError(f"not a toy problem: {text!r} (unexpected {ch!r} at {i})")
    if not number:
        raise ValueError(f"not a toy problem: {text!r}")
    return Problem((*operands, int(number)), tuple(signs))


def _op(a: int, sign: int, b: int) -> str:
    return f"{a}{'+' if sign > 0 else '-'}{b}"


def _ltr_steps(problem: Problem, split_digits: bool = False) -> list[str]:
    acc, lines = problem.operands[0], []
    for sign, value in zip(problem.signs, problem.operands[1:]):
        result = acc + sign * value
        tens, ones = value - value % 10, value % 10
        if split_digits and tens and ones:
            middle = acc + sign * tens
            lines.append(f"{_op(acc, sign, value)}={_op(acc, sign, tens)}{'+' if sign > 0 else '-'}{ones}"
                         f"={_op(middle, sign, ones)}={result}")
        else:
            lines.append(f"{_op(acc, sign, value)}={result}")
        acc = result
    return lines


def _grouped_steps(problem: Problem) -> list[str]:
    terms = list(zip((1, *problem.signs), problem.operands))
    ordered = [t for t in terms if t[0] > 0] + [t for t in terms if t[0] < 0]
    first_sign, first = ordered[0]
    if first_sign < 0:  # every term after the first is negative: nothing to group
        return _ltr_steps(problem)
    return _ltr_steps(Problem((first, *(v for _, v in ordered[1:])), tuple(s for s, _ in ordered[1:])))


def solution(problem: Problem, style: str) -> str:
    """The completion of `problem` in `style` (one of `STYLES`), ending with the boxed answer."""
    if style == "ltr":
        lines = _ltr_steps(problem)
    elif style == "grouped":
        lines = _grouped_steps(problem)
    elif style == "verbose":
        lines = [f"We need {problem.text}.", *_ltr_steps(problem), f"So the answer is {problem.answer}."]
    elif style == "split":
        lines = _ltr_steps(problem, split_digits=True)
    else:
        raise ValueError(f"style must be one of {STYLES}, got {style!r}.")
    return "<think>" + "\n".join(lines) + "</think>\\boxed{" + str(problem.answer) + "}"


def sample_problems(
    split: str, n: int, seed: int, min_ops: int = 2, max_ops: int = 4, max_value: int = 30
) -> list[Problem]:
    """`n` problems of `split`, drawn deterministically from `seed` (repeats allowed, as in any i.i.d. sample)."""
    if split not in SPLITS:
        raise ValueError(f"split must be one of {SPLITS}, got {split!r}.")
    if not 2 <= min_ops <= max_ops:
        raise ValueError(f"need 2 <= min_ops <= max_ops, got min_ops={min_ops}, max_ops={max_ops}.")
    if max_value < 2:
        raise ValueError(f"max_value must be >= 2, got {max_value}.")
    rng = random.Random(f"{split}:{seed}:{min_ops}:{max_ops}:{max_value}")
    problems: list[Problem] = []
    for _ in range(1000 * (n + 10)):
        if len(problems) == n:
            break
        problem = sample_problem(rng, min_ops, max_ops, max_value)
        if split_of(problem.text) == split:
            problems.append(problem)
    if len(problems) == n:
        return problems
    raise ValueError(f"could not draw {n} {split} problems with min_ops={min_ops}, max_ops={max_ops}.")
