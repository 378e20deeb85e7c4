"""The toy world: task, solution styles, splits, tokenizer round trips, and the exact step checker."""

import pytest

from trl_reasoning_distill.toy import problem_rows, toy_dataset
from trl_reasoning_distill.toy.models import build_student, build_teacher
from trl_reasoning_distill.toy.prm import score_steps, split_steps, value
from trl_reasoning_distill.toy.task import STYLES, Problem, parse_problem, sample_problems, solution, split_of
from trl_reasoning_distill.verify import extract_boxed, grade


@pytest.mark.parametrize("style", STYLES)
def test_every_style_is_correct_and_fully_valid(style):
    for problem in sample_problems("train", 200, seed=3, min_ops=2, max_ops=6):
        text = solution(problem, style)
        assert grade(extract_boxed(text), str(problem.answer))
        assert score_steps(text, problem.prompt) == [1.0] * len(split_steps(text))


def test_styles_differ_in_length():
    problem = Problem((47, 38, 19, 25), (1, -1, 1))
    lengths = {style: len(solution(problem, style)) for style in STYLES}
    assert problem.answer == 91 and problem.prompt == "47+38-19+25=?"
    assert len(set(lengths.values())) >= 3


def test_grouped_style_adds_positives_first():
    text = solution(Problem((5, 3, 10), (-1, 1)), "grouped")
    assert text.startswith("<think>5+10=15\n15-3=12</think>")


def test_splits_are_disjoint_and_deterministic():
    test = {p.text for p in sample_problems("test", 300, seed=0)}
    train = {p.text for p in sample_problems("train", 2000, seed=0)}
    assert not test & train
    assert all(split_of(t) == "test" for t in test)
    assert sample_problems("test", 50, seed=7) == sample_problems("test", 50, seed=7)
    assert sample_problems("test", 50, seed=7) != sample_problems("test", 50, seed=8)


def test_difficulty_range_is_respected():
    problems = sample_problems("test", 100, seed=0, min_ops=5, max_ops=6, max_value=9)
    assert all(5 <= len(p.operands) <= 6 and max(p.operands) <= 9 for p in problems)


@pytest.mark.parametrize("kwargs", [{"split": "dev"}, {"min_ops": 1}, {"min_ops": 4, "max_ops": 3}, {"max_value": 1}])
def test_bad_arguments_raise(kwargs):
    with pytest.raises(ValueError):
        sample_problems(**{"split": "test", "n": 1, "seed": 0, **kwargs})


def test_parse_problem_round_trip():
    for problem in sample_problems("train", 50, seed=1, max_ops=6):
        assert parse_problem(problem.prompt) == problem
    with pytest.raises(ValueError):
        parse_problem("2*3")


def test_toy_dataset_columns():
    ds = toy_dataset("test", n=5, seed=0)
    assert set(ds.column_names) == {"prompt", "answer", "id", "num_ops"}
    assert ds[0]["prompt"][0]["role"] == "user" and ds[0]["prompt"][0]["content"].endswith("=?")
    assert len(set(ds["id"])) == 5
    assert problem_rows(sample_problems("test", 5, 0), "test", 0) == ds.to_list()


def test_ids_are_unique_across_splits_operand_ranges_max_values_and_seeds():
    draws = [
        {"split": "test"}, {"split": "validation"}, {"split": "train"},
        {"split": "test", "min_ops": 2, "max_ops": 3}, {"split": "test", "min_ops": 4, "max_ops": 6},
        {"split": "test", "max_value": 9}, {"split": "test", "seed": 1}, {"split": "test", "seed": 100},
    ]
    ids = [toy_dataset(n=20, **draw)["id"] for draw in draws]
    assert all(len(set(group)) == 20 for group in ids)
    every = [i for group in ids for i in group]
    assert len(set(every)) == len(every)  # the old `{split}-{seed}-{i}` repeated across ranges and max values
    assert toy_dataset("test", 3, seed=0, min_ops=2, max_ops=3)["id"][2] == "test-s0-ops2-3-max30-2"
    assert toy_dataset("test", 3, seed=0)["id"] == toy_dataset("test", 3, seed=0)["id"]  # stable


def test_prm_scores_each_step():
    completion = "<think>We need 47+38-19.\n47+38=85\n85-19=67\nSo the answer is 67.</think>\\boxed{67}"
    assert score_steps(completion, "47+38-19=?") == [1.0, 1.0, 0.0, 1.0, 0.0]
    assert score_steps(completion) == [1.0, 1.0, 0.0, 1.0, 1.0]  # without the problem: consistent with the last step
    assert score_steps("<think>We need 1+2.\nblah</think>\\boxed{3}", "47+38=?") == [0.0, 0.0, 0.0]


def test_prm_step_spans_index_the_completion():
    completion = solution(Problem((47, 38, 19), (1, -1)), "split")
    for step in split_steps(completion):
        assert completion[step.start : step.end] == step.text


def test_prm_value_is_parsed_not_evaluated():
    assert value("12-5+3") == 10 and value("-4") == -4
    assert value("9**9") is None and value("__import__('os')") is None and value("1" * 13) is None


def test_tokenizer_round_trips_and_templates(tokenizer):
    text = solution(Problem((47, 38), (1,)), "verbose")
    ids = tokenizer(text, add_special_tokens=False)["input_ids"]
    assert tokenizer.decode(ids) == text
    assert tokenizer.convert_ids_to_tokens(ids[:1]) == ["<think>"]
    messages = [{"role": "user", "content": "1+2=?"}]
    prompt = tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
    full = tokenizer.apply_chat_template(messages + [{"role": "assistant", "content": text}], tokenize=False)
    assert full.startswith(prompt)
    assert tokenizer.pad_token_id != tokenizer.eos_token_id


def test_models_pad_their_vocabularies_differently(tokenizer):
    teacher, student = build_teacher(tokenizer), build_student(tokenizer)
    rows = {teacher.config.vocab_size, student.config.vocab_size}
    assert min(rows) > len(tokenizer) and len(rows) == 2
