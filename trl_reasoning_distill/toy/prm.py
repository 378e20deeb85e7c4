"""Exact process reward for the toy world: one score in {0, 1} per reasoning step, usable wherever a PRM is.

A step is one line of the `<think>` block, plus the final `\\boxed{}` answer as a last step:
- an equation line (`85-19=85-10-9=75-9=66`) scores 1 when every `=`-separated side has the same value;
- `We need <expr>.` scores 1 when it restates the problem;
- `So the answer is <n>.` scores 1 when `n` is the value the previous step reached;
- the boxed answer scores 1 when it equals the problem's answer (without a problem: the value the last step reached);
- any other line scores 0.
Arithmetic is parsed by hand (integers joined by `+`/`-`, at most 12 digits each); nothing is evaluated.
"""

import re
from dataclasses import dataclass

from .task import parse_problem

_EXPR = re.compile(r"^-?\d{1,12}([+-]\d{1,12})*$")
_RESTATE = re.compile(r"^We need (.+)\.$")
_CONCLUDE = re.compile(r"^So the answer is (-?\d{1,12})\.$")
_BOXED = re.compile(r"\\boxed\{(-?\d{1,12})\}")


@dataclass(frozen=True)
class Step:
    """One reasoning step: its text and its `[start, end)` character span in the completion."""

    text: str
    start: int
    end: int


def value(expr: str) -> int | None:
    """Value of `expr` (integers joined by `+`/`-`, optional leading minus), or None for anything else."""
    expr = expr.strip()
    if not _EXPR.match(expr):
        return None
    return sum(int(term) for term in re.findall(r"[+-]?\d+", expr))


def split_steps(completion: str) -> list[Step]:
    """The lines of the `<think>` block and the boxed answer, with their character spans."""
    begin = completion.find("<think>")
    begin = 0 if begin < 0 else begin + len("<think>")
    end = completion.find("</think>", begin)
    end = len(completion) if end < 0 else end
    steps, pos = [], begin
    for line in completion[begin:end].split("\n"):
        if line.strip():
            steps.append(Step(line, pos, pos + len(line)))
        pos += len(line) + 1
    boxed = list(_BOXED.finditer(completion, end))
    if boxed:
        steps.append(Step(boxed[-1].group(0), boxed[-1].start(), boxed[-1].end()))
    return steps


def _line_score(line: str, previous: int | None, problem_text: str | None) -> tuple[float, int | None]:
    """(score, value reached) of one `<think>` line."""
    if restate := _RESTATE.match(line):
        ok = value(restate.group(1)) is not None and (problem_text is None or restate.group(1) == problem_text)
        return float(ok), previous
    if conclude := _CONCLUDE.match(line):
        return float(previous is not None and int(conclude.group(1)) == previous), previous
    sides = [value(side) for side in line.split("=")]
    if len(sides) < 2 or None in sides:
        return 0.0, previous
    return float(len(set(sides)) == 1), sides[-1]


def score_steps(completion: str, problem: str | None = None) -> list[float]:
    """One score in {0, 1} per step of `split_steps(completion)`; `problem` is `47+38-19=?` or `47+38-19`."""
    parsed = parse_problem(problem) if problem else None
    problem_text = parsed.text if parsed else None
    scores, reached = [], None
    for step in split_steps(completion):
        if step.text.startswith("\\boxed"):
            answer = int(_BOXED.match(step.text).group(1))
            target = parsed.answer if parsed else reached
            scores.append(float(answer == target))
        else:
            score, reached = _line_score(step.text, reached, problem_text)
            scores.append(score)
    return scores
