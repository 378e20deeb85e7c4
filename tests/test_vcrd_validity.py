"""VCRD proposals and judges (VCRD spec §2.3, §2.4, §8 items 10, 13, 16): pairs, token proposals, the toy step checker,
and packed PRM scoring against one separate forward per prefix (`tests/reference_vcrd.py`)."""

import pytest
import reference_vcrd as vref
import torch
from transformers import Qwen2Config, Qwen2ForTokenClassification

from trl_reasoning_distill.toy.task import parse_problem, solution
from trl_reasoning_distill.vcrd import (
    ProcessRewardModelScorer,
    ProposalPairs,
    StepCheckerScorer,
    build_proposal_pairs,
    pack_rollout,
    packed_attention_mask,
    propose_tokens,
    toy_steps,
    validity_weights,
)

# --- build_proposal_pairs ------------------------------------------------------------------------------------------


def test_same_prefix_pairs_score_the_other_models_drawn_proposal_under_each_rollouts_prefix():
    on_teacher, on_student = build_proposal_pairs(
        [1, 2, 3], [4, 5], student_on_teacher_prefix=[7, 2, 8], teacher_on_student_prefix=[4, 9]
    )
    assert on_teacher == ProposalPairs(rollout=(1, 2, 3), teacher=(1, 2, 3), student=(7, 2, 8))
    assert on_student == ProposalPairs(rollout=(4, 5), teacher=(4, 9), student=(4, 5))


def test_aligned_rollout_pairs_use_the_other_rollout_at_the_same_position_and_parity_past_its_end():
    on_teacher, on_student = build_proposal_pairs([1, 2, 3], [4, 2], source="aligned_rollout")
    assert on_teacher == ProposalPairs(rollout=(1, 2, 3), teacher=(1, 2, 3), student=(4, 2, 3))
    assert on_student == ProposalPairs(rollout=(4, 2), teacher=(1, 2), student=(4, 2))


def test_pairs_hold_text_steps_and_token_tuples_alike():
    on_teacher, _ = build_proposal_pairs(("a=1", "b=2"), ("c=3",), source="aligned_rollout")
    assert on_teacher.student == ("c=3", "b=2")
    on_teacher, _ = build_proposal_pairs(
        [(1, 2), (3,)], [(4,)], student_on_teacher_prefix=[(5, 6), (3,)], teacher_on_student_prefix=[(7,)]
    )
    assert on_teacher.student == ((5, 6), (3,)) and len(on_teacher) == 2


@pytest.mark.parametrize(
    "kwargs, match",
    [
        ({"source": "same_prefix"}, "needs"),
        ({"source": "same_prefix", "student_on_teacher_prefix": [1, 2]}, "needs"),
        ({"source": "aligned_rollout", "student_on_teacher_prefix": [1, 2], "teacher_on_student_prefix": [3]}, "no"),
        ({"source": "student_prefix_only"}, "source"),
        ({"student_on_teacher_prefix": [1], "teacher_on_student_prefix": [3]}, "one teacher and one student"),
    ],
)
def test_build_proposal_pairs_rejects_bad_input(kwargs, match):
    with pytest.raises(ValueError, match=match):
        build_proposal_pairs([1, 2], [3], **kwargs)


# --- propose_tokens --------------------------------------------------------------------------------------------------


def test_greedy_proposals_are_the_argmax_and_deterministic():
    logits = torch.randn(3, 5, 11)
    assert torch.equal(propose_tokens(logits, "greedy"), logits.argmax(-1))
    assert torch.equal(propose_tokens(logits, "greedy"), propose_tokens(logits, "greedy"))


def test_sampled_proposals_follow_the_tempered_softmax_and_the_generator():
    logits = torch.tensor([0.0, torch.log(torch.tensor(3.0))]).expand(20000, 2)
    samples = propose_tokens(logits, generator=torch.Generator().manual_seed(0))
    assert samples.shape == (20000,) and abs(samples.float().mean().item() - 0.75) < 0.015
    hotter = propose_tokens(logits, temperature=1e6, generator=torch.Generator().manual_seed(0))
    assert abs(hotter.float().mean().item() - 0.5) < 0.015
    again = propose_tokens(logits, generator=torch.Generator().manual_seed(0))
    assert torch.equal(samples, again)
    masked = torch.tensor([[-float("inf"), 0.0, -float("inf")]]).expand(50, 3)
    assert (propose_tokens(masked) == 1).all()


def test_propose_tokens_rejects_bad_settings():
    with pytest.raises(ValueError, match="strategy"):
        propose_tokens(torch.randn(2, 3), "beam")
    with pytest.raises(ValueError, match="temperature"):
        propose_tokens(torch.randn(2, 3), temperature=0.0)


# --- StepCheckerScorer: the toy world's exact judge ------------------------------------------------------------------

PROBLEM = "47+38-19+25=?"


def test_step_checker_scores_the_teacher_solution_valid_and_a_wrong_student_step_invalid():
    teacher = toy_steps(solution(parse_problem(PROBLEM), "ltr"))  # 47+38=85, 85-19=66, 66+25=91, boxed 91
    student = ("47+38=85", "85-19=76", "76+25=101", "\\boxed{101}")
    on_teacher, on_student = build_proposal_pairs(teacher, student, source="aligned_rollout")
    (teacher_prefix, student_prefix) = StepCheckerScorer()([PROBLEM, PROBLEM], [on_teacher, on_student])
    assert teacher_prefix.teacher.tolist() == [1.0, 1.0, 1.0, 1.0]
    assert teacher_prefix.student.tolist() == [1.0, 0.0, 1.0, 0.0]  # 76+25=101 is a true equation; 101 is wrong
    assert student_prefix.student.tolist() == [1.0, 0.0, 1.0, 0.0]
    w_T = validity_weights(teacher_prefix.student, teacher_prefix.teacher)
    assert w_T[0] == pytest.approx(1.0) and w_T[1] == 0.0  # parity, then the teacher's move is better


def test_step_checker_scores_each_candidate_after_the_prefix():
    rollout = ("We need 47+38-19+25.", "47+38=85", "So the answer is 85.")
    pairs = ProposalPairs(
        rollout=rollout,
        teacher=("We need 47+38-19+25.", "47+38=85", "So the answer is 85."),
        student=("We need 1+1.", "47+38=86", "So the answer is 91."),
    )
    (scores,) = StepCheckerScorer()([PROBLEM], [pairs])
    assert scores.teacher.tolist() == [1.0, 1.0, 1.0]  # "So the answer is 85." repeats the value the prefix reached
    assert scores.student.tolist() == [0.0, 0.0, 0.0]


@pytest.mark.parametrize("candidate", ["", "   ", "47+38=85\n85-19=66", "</think>"])
def test_step_checker_gives_zero_to_anything_but_one_step(candidate):
    pairs = ProposalPairs(rollout=("47+38=85",), teacher=("47+38=85",), student=(candidate,))
    (scores,) = StepCheckerScorer()([PROBLEM], [pairs])
    assert scores.teacher.tolist() == [1.0] and scores.student.tolist() == [0.0]


# --- ProcessRewardModelScorer: packed sibling scoring vs one forward per prefix --------------------------------------


def _tiny_prm(tokenizer, num_labels: int, attn: str, seed: int = 0) -> Qwen2ForTokenClassification:
    torch.manual_seed(seed)
    config = Qwen2Config(
        vocab_size=len(tokenizer) + 5, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
        num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=256, num_labels=num_labels,
        attn_implementation=attn, pad_token_id=tokenizer.pad_token_id,
    )  # fmt: skip
    return Qwen2ForTokenClassification(config).eval()


def _rollouts(tokenizer, multi_token: bool) -> tuple[list[str], list[ProposalPairs]]:
    """Two prompts with a teacher and a student rollout each (different lengths), same-prefix drawn proposals that
    agree with the rollout at some positions, as token ids or as tuples of ids."""
    prompts, pairs = ["12+7=?", "3-1+40=?"], []
    for teacher_text, student_text in zip(["12+7=19", "3-1=2\n2+40=42"], ["12+7=20", "3-1=2"], strict=True):
        teacher = tokenizer(teacher_text, add_special_tokens=False)["input_ids"]
        student = tokenizer(student_text, add_special_tokens=False)["input_ids"]
        if multi_token:
            teacher = [tuple(teacher[i : i + 3]) for i in range(0, len(teacher), 3)]
            student = [tuple(student[i : i + 2]) for i in range(0, len(student), 2)]
        alt_on_teacher = [step if t % 3 == 0 else _other(step, t) for t, step in enumerate(teacher)]
        alt_on_student = [step if t % 2 == 1 else _other(step, t) for t, step in enumerate(student)]
        pairs += build_proposal_pairs(
            teacher, student, student_on_teacher_prefix=alt_on_teacher, teacher_on_student_prefix=alt_on_student
        )
    return [p for p in prompts for _ in range(2)], pairs


def _other(step, t: int):
    """A different step: token ids shifted inside the toy vocabulary (a tuple also changes length)."""
    if isinstance(step, int):
        return 3 + (step + 5 + t) % 90
    return (*(3 + (i + 5) % 90 for i in step), 7)[: len(step) + t % 2]


def _loop_reference(scorer, model, prompts, pairs, separator):
    out = []
    for prompt, pair in zip(prompts, pairs, strict=True):
        prompt_ids = scorer.prompt_ids(prompt)
        out.append(
            (
                vref.prm_score_loop_ref(model, prompt_ids, pair.rollout, pair.teacher, separator),
                vref.prm_score_loop_ref(model, prompt_ids, pair.rollout, pair.student, separator),
            )
        )
    return out


@pytest.mark.parametrize("attn", ["eager", "sdpa"])
@pytest.mark.parametrize(
    "num_labels, separator, multi_token", [(1, None, False), (2, 100, False), (1, None, True), (2, 100, True)]
)
@pytest.mark.parametrize("batch_size", [1, 3])
def test_packed_prm_scoring_equals_one_forward_per_prefix(
    tokenizer, attn, num_labels, separator, multi_token, batch_size
):
    model = _tiny_prm(tokenizer, num_labels, attn)
    scorer = ProcessRewardModelScorer(model, tokenizer, separator_token_id=separator, batch_size=batch_size)
    prompts, pairs = _rollouts(tokenizer, multi_token)
    scores = scorer(prompts, pairs)
    expected = _loop_reference(scorer, model, prompts, pairs, separator)
    for got, (teacher, student) in zip(scores, expected, strict=True):
        torch.testing.assert_close(got.teacher.double(), teacher, atol=1e-5, rtol=0)
        torch.testing.assert_close(got.student.double(), student, atol=1e-5, rtol=0)
        assert not got.teacher.requires_grad and ((got.teacher >= 0) & (got.teacher <= 1)).all()


def test_loop_prm_scoring_equals_the_reference(tokenizer):
    model = _tiny_prm(tokenizer, 2, "eager")
    scorer = ProcessRewardModelScorer(model, tokenizer, separator_token_id=100, scoring_impl="loop")
    prompts, pairs = _rollouts(tokenizer, multi_token=True)
    for got, (teacher, student) in zip(scorer(prompts, pairs), _loop_reference(scorer, model, prompts, pairs, 100)):
        torch.testing.assert_close(got.teacher.double(), teacher, atol=1e-6, rtol=0)
        torch.testing.assert_close(got.student.double(), student, atol=1e-6, rtol=0)


def test_own_step_scores_are_one_plain_forward_and_identical_proposals_score_identically(tokenizer):
    model = _tiny_prm(tokenizer, 1, "sdpa")
    scorer = ProcessRewardModelScorer(model, tokenizer)
    rollout = tuple(tokenizer("5+6=11\n11-2=9", add_special_tokens=False)["input_ids"])
    alternatives = tuple(rollout[t] if t % 2 else 40 + t for t in range(len(rollout)))
    (scores,) = scorer(["5+6-2=?"], [ProposalPairs(rollout, rollout, alternatives)])
    prompt_ids = scorer.prompt_ids("5+6-2=?")
    with torch.no_grad():
        plain = torch.sigmoid(model(input_ids=torch.tensor([[*prompt_ids, *rollout]])).logits[0, len(prompt_ids) :, 0])
    torch.testing.assert_close(scores.teacher, plain, atol=1e-6, rtol=0)  # the siblings do not leak into the rollout
    same = torch.tensor([a == y for a, y in zip(alternatives, rollout, strict=True)])
    assert torch.equal(scores.student[same], scores.teacher[same])  # exactly: one read-out
    assert not torch.equal(scores.student[~same], scores.teacher[~same])


def test_prm_prompt_follows_the_template(tokenizer):
    scorer = ProcessRewardModelScorer(_tiny_prm(tokenizer, 1, "eager"), tokenizer)
    assert scorer.prompt_ids("1+2=?") == tokenizer("1+2=?\n", add_special_tokens=False)["input_ids"]
    custom = ProcessRewardModelScorer(_tiny_prm(tokenizer, 1, "eager"), tokenizer, prompt_template="Q:{prompt}{bos}")
    assert custom.prompt_ids("1+2=?") == tokenizer("Q:1+2=?", add_special_tokens=False)["input_ids"]


def test_packed_layout_and_mask():
    """Prompt [10, 11], rollout [20, 21]; at t=1 the alternative 30 sits at position 3 and sees the prompt and y_1."""
    packed = pack_rollout([10, 11], ProposalPairs((20, 21), (20, 21), (20, 30)))
    assert packed.input_ids == [10, 11, 20, 21, 30] and packed.position_ids == [0, 1, 2, 3, 3]
    assert packed.teacher_index == [2, 3] and packed.student_index == [2, 4]
    allowed = packed_attention_mask([packed], torch.float32)[0, 0] == 0
    assert allowed.tolist() == [
        [True, False, False, False, False],
        [True, True, False, False, False],
        [True, True, True, False, False],
        [True, True, True, True, False],
        [True, True, True, False, True],
    ]


def test_prm_scorer_rejects_bad_input(tokenizer):
    model = _tiny_prm(tokenizer, 1, "eager")
    scorer = ProcessRewardModelScorer(model, tokenizer)
    pairs = ProposalPairs((5, 6), (5, 6), (5, len(tokenizer) + 5))
    with pytest.raises(ValueError, match="outside the PRM"):
        scorer(["1+1=?"], [pairs])
    with pytest.raises(ValueError, match="prompts"):
        scorer(["1+1=?", "2+2=?"], [pairs])
    with pytest.raises(ValueError, match="at least one token"):
        scorer(["1+1=?"], [ProposalPairs((5,), (5,), ((),))])
    with pytest.raises(ValueError, match="labels"):
        ProcessRewardModelScorer(_tiny_prm(tokenizer, 3, "eager"), tokenizer)(
            ["1+1=?"], [ProposalPairs((5,), (5,), (6,))]
        )
    with pytest.raises(ValueError, match="scoring_impl"):
        ProcessRewardModelScorer(model, tokenizer, scoring_impl="fused")
    model.config._attn_implementation = "flash_attention_2"
    with pytest.raises(ValueError, match="sdpa"):
        ProcessRewardModelScorer(model, tokenizer)
    ProcessRewardModelScorer(model, tokenizer, scoring_impl="loop")  # the loop needs no 4-D mask
