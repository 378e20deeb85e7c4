"""The committed toy models: they load offline, are aligned with the tokenizer, and meet the accuracy targets."""

import pytest

from trl_reasoning_distill.evaluation import evaluate
from trl_reasoning_distill.toy import load_toy_student, load_toy_teacher, load_toy_tokenizer, toy_dataset
from trl_reasoning_distill.toy.tokenizer import build_tokenizer


def test_committed_tokenizer_equals_the_builder():
    assert load_toy_tokenizer().get_vocab() == build_tokenizer().get_vocab()


def test_models_are_padded_past_the_tokenizer():
    n = len(load_toy_tokenizer())
    teacher, student = load_toy_teacher(), load_toy_student()
    assert teacher.config.vocab_size > n and student.config.vocab_size > n
    assert teacher.config.vocab_size != student.config.vocab_size
    assert teacher.num_parameters() > 1.5 * student.num_parameters()  # v2: the student has about half the weights


@pytest.mark.slow
def test_accuracy_targets_on_500_held_out_problems():
    """Issue targets: teacher greedy >= 0.90; cold-started student in [0.15, 0.40] (room for the methods to lift it:
    tests/test_toy_headroom.py)."""
    tokenizer, test = load_toy_tokenizer(), toy_dataset("test", 500, seed=0)
    teacher = evaluate(load_toy_teacher(), tokenizer, test, max_new_tokens=192, progress=False).greedy_accuracy
    student = evaluate(load_toy_student(), tokenizer, test, max_new_tokens=192, progress=False).greedy_accuracy
    assert teacher >= 0.90
    assert 0.15 <= student <= 0.40
