"""The toy world: a small, real reasoning task with a trained teacher and a weak student, all on CPU.

    from trl_reasoning_distill.toy import load_toy_teacher, load_toy_student, load_toy_tokenizer, toy_dataset
"""

from pathlib import Path

from .task import STYLES, Problem, parse_problem, sample_problems, solution

ASSETS = Path(__file__).parent / "assets"

__all__ = ["ASSETS", "STYLES", "Problem", "load_toy_student", "load_toy_teacher", "load_toy_tokenizer",
           "parse_problem", "problem_rows", "sample_problems", "solution", "toy_dataset"]


def _assets(name: str) -> Path:
    path = ASSETS / name
    if not path.exists():
        raise FileNotFoundError(f"{path} is missing; rebuild the toy world: python -m trl_reasoning_distill.toy.build")
    return path


def load_toy_tokenizer():
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(_assets("tokenizer"))


def _load_model(name: str):
    from transformers import AutoModelForCausalLM

    return AutoModelForCausalLM.from_pretrained(_assets(name), dtype="float32")


def load_toy_teacher():
    """The trained toy teacher (Qwen2, 4 layers, hidden 128, embedding padded past the tokenizer)."""
    return _load_model("teacher")


def load_toy_student():
    """The cold-started toy student (Qwen2, 3 layers, hidden 96, about half the teacher's weights; embedding padded to
    another size)."""
    return _load_model("student")


def problem_rows(problems: list[Problem], split: str = "test", seed: int = 0, min_ops: int = 2, max_ops: int = 4,
                 max_value: int = 30) -> list[dict]:
    """Dataset rows: `prompt` (chat messages), `answer`, `id`, plus `num_ops` for difficulty splits.

    `split`, `seed`, `min_ops`, `max_ops` and `max_value` are those `problems` were drawn with: the id names them
    all (`test-s0-ops2-4-max30-17`), so ids are unique across splits, seeds and difficulty ranges and records of one
    draw are never taken for another's.
    """
    tag = f"{split}-s{seed}-ops{min_ops}-{max_ops}-max{max_value}"
    return [{"prompt": [{"role": "user", "content": p.prompt}], "answer": str(p.answer), "id": f"{tag}-{i}",
             "num_ops": len(p.operands)} for i, p in enumerate(problems)]


def toy_dataset(split: str = "train", n: int = 1000, seed: int = 0, min_ops: int = 2, max_ops: int = 4,
                max_value: int = 30):
    """A `datasets.Dataset` of `n` toy problems with columns `prompt` (chat messages), `answer`, `id`, `num_ops`.

    `split` is "train", "validation" or "test" (disjoint by problem text); difficulty grows with `min_ops..max_ops`
    operands of `1..max_value`. Ids name the draw (see [`problem_rows`]), so they are unique across splits, seeds
    and difficulties.
    """
    from datasets import Dataset

    problems = sample_problems(split, n, seed, min_ops, max_ops, max_value)
    return Dataset.from_list(problem_rows(problems, split, seed, min_ops, max_ops, max_value))
