"""BRTS selection pieces against the loop references of `tests/reference_brts.py` (spec §2.6-2.8, §9 items 5-13)."""

import pytest
import reference_brts as ref
import torch

from trl_reasoning_distill.brts import (
    ASSISTANT_MARKERS,
    RECOVERY_HINT_TEMPLATE,
    TIER_NAMES,
    build_recovery_prompt,
    contains_recovery_hint,
    mean_log_likelihood,
    mentions_validation_key,
    positional_topk_overlap,
    recovery_prompts,
    recovery_rows,
    select_rollout,
    selection_metrics,
    student_alignment,
    take_selected,
    teacher_context_mask,
    teacher_context_topk_overlap,
)

VOCAB = 9  # small, so that random teacher tokens often fall inside a top-K


def _pool(B: int, N: int, L: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Random teacher ids with right padding of random length per rollout (some rollouts empty when L allows)."""
    ids_BNL = torch.randint(0, VOCAB, (B, N, L))
    lengths_BN = torch.randint(0, L + 1, (B, N))
    return ids_BNL, torch.arange(L) < lengths_BN[..., None]


def _student(B: int, L: int, K: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Distinct random top-K ids per position and a right-padded response mask."""
    topk_BLK = torch.rand(B, L, VOCAB).argsort(dim=-1)[..., :K]
    lengths_B = torch.randint(0, L + 1, (B,))
    return topk_BLK, torch.arange(L) < lengths_B[:, None]


def _tensor_pair(indices, tiers):
    return torch.tensor(indices), torch.tensor(tiers, dtype=torch.int8)


# --- alignment scores (spec §2.6, §8 item 5, §9 item 13) -------------------------------------------------------------


@pytest.mark.parametrize("B, N, L_T, L_S, K", [(1, 1, 1, 1, 1), (2, 3, 7, 7, 2), (3, 2, 9, 5, 3), (2, 4, 4, 11, 5)])
def test_positional_overlap_matches_loop_reference(B, N, L_T, L_S, K):
    teacher_ids, teacher_mask = _pool(B, N, L_T)
    student_topk, student_mask = _student(B, L_S, K)
    L = min(L_T, L_S)
    student_mask[-1], teacher_mask[-1, -1] = torch.arange(L_S) < (L_S + 1) // 2, True  # student ends mid-rollout
    teacher_ids[-1, -1, :L] = student_topk[-1, :L, 0]  # hits, but past the student's end they count as misses
    teacher_mask[0, 0] = B * N == 1  # an all-pad rollout (scores 0)
    sim_BN = positional_topk_overlap(teacher_ids, teacher_mask, student_topk, student_mask)
    expected = ref.positional_overlap_ref(teacher_ids, teacher_mask, student_topk, student_mask)
    torch.testing.assert_close(sim_BN, expected.float())
    assert (sim_BN[0, 0] == 0 or B * N == 1) and ((sim_BN >= 0) & (sim_BN <= 1)).all()


@pytest.mark.parametrize("B, N, L, K", [(1, 1, 1, 1), (2, 3, 6, 2), (3, 2, 10, 4)])
def test_teacher_context_overlap_and_log_likelihood_match_loop_references(B, N, L, K):
    teacher_ids, teacher_mask = _pool(B, N, L)
    teacher_mask[-1, -1] = False
    student_topk = torch.rand(B, N, L, VOCAB).argsort(dim=-1)[..., :K]
    sim_BN = teacher_context_topk_overlap(teacher_ids, teacher_mask, student_topk)
    torch.testing.assert_close(
        sim_BN, ref.teacher_context_overlap_ref(teacher_ids, teacher_mask, student_topk).float()
    )
    logprobs_BNL = -3 * torch.rand(B, N, L, dtype=torch.float64)
    mean_BN = mean_log_likelihood(logprobs_BNL, teacher_mask)
    torch.testing.assert_close(mean_BN, ref.mean_log_likelihood_ref(logprobs_BNL, teacher_mask))
    assert mean_BN[-1, -1] == -torch.inf  # an empty rollout ranks last


def test_positional_overlap_is_one_on_the_students_top1_and_ignores_pad():
    student_topk = torch.tensor([[[3, 1], [4, 1], [5, 9], [2, 6], [0, 0]]])  # (1, 5, 2); position 4 is padding
    student_mask = torch.tensor([[True, True, True, True, False]])
    teacher_ids = torch.tensor([[[3, 4, 5, 2, 7], [1, 1, 9, 6, 7], [3, 8, 8, 8, 7]]])
    teacher_mask = torch.tensor([[[True, True, True, True, False], [True] * 4 + [False], [True] * 4 + [False]]])
    sim = positional_topk_overlap(teacher_ids, teacher_mask, student_topk, student_mask)
    assert sim.tolist() == [[1.0, 1.0, 0.25]]
    repadded = teacher_ids.clone()
    repadded[..., 4] = 0  # pad tokens are ignored, whatever their id (0 is even in the stored top-K there)
    assert torch.equal(positional_topk_overlap(repadded, teacher_mask, student_topk, student_mask), sim)


def test_positional_overlap_strictly_lower_with_junk_past_the_students_length():
    student_topk, student_mask = _student(4, 8, 3)
    student_mask[:] = torch.arange(8) < 5
    teacher_ids = student_topk[:, None, :, 0].clone()  # the student's top-1 everywhere, even past its end
    short_mask = (torch.arange(8) < 5).expand(4, 1, 8)
    base = positional_topk_overlap(teacher_ids, short_mask, student_topk, student_mask)
    assert torch.equal(base, torch.ones(4, 1))
    longer_mask = (torch.arange(8) < 7).expand(4, 1, 8)  # 2 more tokens, past the student's response
    longer = positional_topk_overlap(teacher_ids, longer_mask, student_topk, student_mask)
    torch.testing.assert_close(longer, torch.full((4, 1), 5 / 7))
    past_ids = torch.cat([teacher_ids, student_topk[:, None, :3, 0]], dim=-1)  # 3 more, past the student's tensor
    past_mask = torch.cat([longer_mask, torch.ones(4, 1, 3, dtype=torch.bool)], dim=-1)
    longest = positional_topk_overlap(past_ids, past_mask, student_topk, student_mask)
    torch.testing.assert_close(longest, torch.full((4, 1), 5 / 10))
    assert (longest < longer).all() and (longer < base).all()


def test_student_alignment_dispatches_and_names_missing_inputs():
    teacher_ids, teacher_mask = _pool(2, 3, 6)
    student_topk, student_mask = _student(2, 6, 2)
    on_teacher = torch.rand(2, 3, 6, VOCAB).argsort(dim=-1)[..., :2]
    logprobs = -torch.rand(2, 3, 6)
    positional = student_alignment(
        "positional", teacher_ids, teacher_mask, student_topk_ids=student_topk, student_mask=student_mask
    )
    assert torch.equal(positional, positional_topk_overlap(teacher_ids, teacher_mask, student_topk, student_mask))
    on_ctx = student_alignment("teacher_ctx", teacher_ids, teacher_mask, student_topk_ids=on_teacher)
    assert torch.equal(on_ctx, teacher_context_topk_overlap(teacher_ids, teacher_mask, on_teacher))
    likelihood = student_alignment("log_likelihood", teacher_ids, teacher_mask, student_logprobs=logprobs)
    assert torch.equal(likelihood, mean_log_likelihood(logprobs, teacher_mask))
    with pytest.raises(ValueError, match="student_mask"):
        student_alignment("positional", teacher_ids, teacher_mask, student_topk_ids=student_topk)
    with pytest.raises(ValueError, match="student_logprobs"):
        student_alignment("log_likelihood", teacher_ids, teacher_mask)
    with pytest.raises(ValueError, match="metric"):
        student_alignment("cosine", teacher_ids, teacher_mask)


def test_alignment_rejects_bad_inputs():
    teacher_ids, teacher_mask = _pool(2, 3, 6)
    student_topk, student_mask = _student(2, 6, 2)
    with pytest.raises(ValueError, match="teacher_mask"):
        positional_topk_overlap(teacher_ids, teacher_mask.long(), student_topk, student_mask)
    with pytest.raises(ValueError, match="teacher_ids"):
        positional_topk_overlap(teacher_ids.float(), teacher_mask, student_topk, student_mask)
    with pytest.raises(ValueError, match="student_topk_ids"):
        positional_topk_overlap(teacher_ids, teacher_mask, student_topk[:1], student_mask)
    with pytest.raises(ValueError, match="student_mask"):
        positional_topk_overlap(teacher_ids, teacher_mask, student_topk, student_mask[:, :3])
    with pytest.raises(ValueError, match="student_topk_ids"):
        teacher_context_topk_overlap(teacher_ids, teacher_mask, student_topk)


# --- the waterfall (spec §2.7, §9 items 5-9) -------------------------------------------------------------------------


@pytest.mark.parametrize("recovery", [None, 1, 2])
@pytest.mark.parametrize("B, N", [(1, 1), (5, 2), (16, 4)])
def test_select_rollout_matches_loop_reference_with_ties(B, N, recovery):
    correct = torch.rand(B, N) < 0.3
    alignment = torch.randint(0, 3, (B, N)) / 2  # few distinct values: many ties
    recovery_correct = recovery_alignment = None
    if recovery is not None:
        recovery_correct = torch.rand(B, recovery) < 0.5
        recovery_alignment = torch.randint(0, 3, (B, recovery)) / 2
    got = select_rollout(correct, alignment, recovery_correct, recovery_alignment)
    expected = _tensor_pair(*ref.select_rollout_ref(correct, alignment, recovery_correct, recovery_alignment))
    assert torch.equal(got[0], expected[0]) and torch.equal(got[1], expected[1])


def test_tier1_picks_the_most_aligned_correct_rollout_lowest_index_on_ties():
    correct = torch.tensor([[False, True, True, False], [True, False, True, True], [False, False, False, True]])
    alignment = torch.tensor([[0.9, 0.4, 0.6, 0.99], [0.5, 0.9, 0.7, 0.7], [0.9, 0.9, 0.9, 0.1]])
    index, tier = select_rollout(correct, alignment, recovery_correct=torch.ones(3, dtype=torch.bool))
    assert index.tolist() == [2, 2, 3]  # never the more aligned incorrect ones; 0.7 tie -> index 2
    assert tier.tolist() == [1, 1, 1] and tier.dtype == torch.int8  # recovery ignored when Tier 1 succeeds
    assert bool(correct[torch.arange(3), index].all())


def test_all_wrong_pool_triggers_recovery_and_tier2_picks_the_hinted_rollout():
    correct = torch.tensor([[False, False], [False, True], [False, False]])
    alignment = torch.tensor([[0.8, 0.3], [0.1, 0.2], [0.2, 0.6]])
    assert recovery_rows(correct).tolist() == [True, False, True]
    recovery_correct = torch.tensor([[False, True, True], [False, False, False], [False, False, False]])
    recovery_alignment = torch.tensor([[0.9, 0.1, 0.4], [0.0, 0.0, 0.0], [0.9, 0.9, 0.9]])
    index, tier = select_rollout(correct, alignment, recovery_correct, recovery_alignment)
    assert tier.tolist() == [2, 1, 3]
    assert index.tolist() == [2 + 2, 1, 1]  # Tier 2: hinted slot 2 (the correct one with 0.4) after N = 2
    index_no_scores, _ = select_rollout(correct, alignment, recovery_correct)
    assert index_no_scores[0] == 2 + 1  # no hinted scores: the first correct hinted rollout


def test_tier3_is_the_most_aligned_unhinted_rollout_never_a_hinted_one():
    correct = torch.zeros(2, 3, dtype=torch.bool)
    alignment = torch.tensor([[0.2, 0.7, 0.7], [0.0, 0.0, 0.0]])
    index, tier = select_rollout(correct, alignment, torch.zeros(2, dtype=torch.bool), torch.ones(2))
    assert index.tolist() == [1, 0] and tier.tolist() == [3, 3]
    index_off, tier_off = select_rollout(correct, alignment)  # Tier 2 disabled
    assert torch.equal(index_off, index) and torch.equal(tier_off, tier)
    assert TIER_NAMES[int(tier[0])] == "most_aligned"


def test_single_candidate_is_always_selected():
    correct = torch.rand(10, 1) < 0.5
    index, tier = select_rollout(correct, torch.rand(10, 1))
    assert index.tolist() == [0] * 10
    assert tier.tolist() == [1 if c else 3 for c in correct[:, 0].tolist()]


def test_log_likelihood_scores_with_empty_rollouts_still_select_correctly():
    alignment = torch.tensor([[-torch.inf, -2.0, -torch.inf], [-torch.inf, -torch.inf, -torch.inf]])
    correct = torch.tensor([[True, False, True], [False, True, True]])
    index, tier = select_rollout(correct, alignment)
    assert index.tolist() == [0, 1] and tier.tolist() == [1, 1]


def test_select_rollout_rejects_bad_inputs():
    correct, alignment = torch.rand(3, 2) < 0.5, torch.rand(3, 2)
    with pytest.raises(ValueError, match="`correct`"):
        select_rollout(correct.float(), alignment)
    with pytest.raises(ValueError, match="`alignment`"):
        select_rollout(correct, alignment[:, :1])
    with pytest.raises(ValueError, match="NaN"):
        select_rollout(correct, torch.tensor([[0.1, float("nan")]] * 3))
    with pytest.raises(ValueError, match="M >= 1"):
        select_rollout(correct[:, :0], alignment[:, :0])
    with pytest.raises(ValueError, match="recovery_correct"):
        select_rollout(correct, alignment, torch.ones(2, 1, dtype=torch.bool))
    with pytest.raises(ValueError, match="recovery_alignment"):
        select_rollout(correct, alignment, torch.ones(3, 2, dtype=torch.bool), torch.ones(3, 1))
    with pytest.raises(ValueError, match="recovery_correct"):
        select_rollout(correct, alignment, recovery_alignment=torch.ones(3, 1))
    with pytest.raises(ValueError, match="`correct`"):
        recovery_rows(correct.long())


def test_take_selected_and_metrics():
    pool_BML = torch.arange(3 * 4 * 2).reshape(3, 4, 2)  # N = 3 unhinted + M = 1 hinted
    correct = torch.tensor([[False, True, False], [False, False, False], [False, False, False]])
    alignment = torch.tensor([[0.5, 0.25, 0.75], [0.5, 0.0, 0.0], [0.0, 1.0, 0.0]])
    recovery_correct = torch.tensor([True, True, False])
    recovery_alignment = torch.tensor([0.0, 0.75, 0.0])
    index, tier = select_rollout(correct, alignment, recovery_correct, recovery_alignment)
    assert index.tolist() == [1, 3, 1] and tier.tolist() == [1, 2, 3]
    assert torch.equal(take_selected(pool_BML, index), pool_BML[[0, 1, 2], [1, 3, 1]])
    selected = take_selected(torch.cat([alignment, recovery_alignment[:, None]], dim=1), index)
    metrics = selection_metrics(correct, tier, selected, recovery_correct)
    assert metrics == pytest.approx(
        {
            "tier1_any_correct_frac": 1 / 3,
            "tier1_retry_frac": 2 / 3,
            "frac_tier1": 1 / 3,
            "frac_tier2": 1 / 3,
            "frac_tier3": 1 / 3,
            "avg_sim_tier1": 0.25,
            "avg_sim_tier2": 0.75,
            "avg_sim_tier3": 1.0,
            "tier2_rescue_frac": 0.5,
        }
    )
    assert sum(metrics[f"frac_tier{t}"] for t in (1, 2, 3)) == pytest.approx(1.0)
    assert "tier2_rescue_frac" not in selection_metrics(correct, tier, selected)
    with pytest.raises(ValueError, match="index"):
        take_selected(pool_BML, torch.tensor([0, 4, 1]))
    with pytest.raises(ValueError, match="index"):
        take_selected(pool_BML, index.int())


@pytest.mark.parametrize("B, N", [(7, 1), (9, 3)])
def test_tier_fractions_sum_to_one(B, N):
    correct = torch.rand(B, N) < 0.3
    index, tier = select_rollout(correct, torch.rand(B, N), torch.rand(B) < 0.5)
    metrics = selection_metrics(correct, tier, torch.rand(B))
    assert sum(metrics[f"frac_tier{t}"] for t in (1, 2, 3)) == pytest.approx(1.0)


def test_teacher_context_mask_truncates_and_skips_tier3():
    selected = torch.tensor([[True, True, True, False], [True, True, True, True], [True, False, False, False]])
    student = torch.tensor([[True, True, False, False], [True] * 4, [True] * 4])
    tier = torch.tensor([1, 3, 2], dtype=torch.int8)
    assert torch.equal(teacher_context_mask(selected), selected)
    assert teacher_context_mask(selected, student).tolist() == (selected & student).tolist()
    skipped = teacher_context_mask(selected, student, tier, fallback="skip")
    assert skipped[1].sum() == 0 and torch.equal(skipped[[0, 2]], (selected & student)[[0, 2]])
    with pytest.raises(ValueError, match="tier"):
        teacher_context_mask(selected, fallback="skip")
    with pytest.raises(ValueError, match="fallback"):
        teacher_context_mask(selected, fallback="drop")
    with pytest.raises(ValueError, match="student_mask"):
        teacher_context_mask(selected, student[:, :2])


# --- the recovery prompt (spec §2.8, §9 item 10) ---------------------------------------------------------------------

HINT_1_2 = (
    "[SILENT_VALIDATION_KEY — DO NOT MENTION IN THINKING OR RESPONSE: \\frac{1}{2}]\n\n"
    "STRICT RULES about the validation key:\n"
    "  1. NEVER mention, quote, paraphrase, or allude to it anywhere — not in <think>, not in your answer.\n"
    "  2. NEVER say things like 'the key says', 'based on the hint', 'the answer is given', 'I can see the correct "
    "answer is', or any equivalent phrasing.\n"
    "  3. Your entire chain of thought must be derived from what you observe in the problem.\n"
    "  4. Only use the validation key silently as a final sanity-check after you have already reasoned to a "
    "conclusion — never as a starting point or shortcut."
)


def test_hint_is_inserted_before_the_last_assistant_marker():
    prompt = "<｜begin▁of▁sentence｜><｜User｜>Say <｜Assistant｜> twice.  \n<｜Assistant｜><think>\n"
    hinted = build_recovery_prompt(prompt, "\\frac{1}{2}")
    expected = (
        "<｜begin▁of▁sentence｜><｜User｜>Say <｜Assistant｜> twice.\n\n" + HINT_1_2 + "\n\n<｜Assistant｜><think>\n"
    )
    assert hinted == expected
    assert RECOVERY_HINT_TEMPLATE.replace("{gt}", "\\frac{1}{2}") == HINT_1_2


def test_markers_are_tried_in_order_and_missing_marker_appends():
    prompt = "<|im_start|>user\nQ Assistant: no<|im_end|>\n<|im_start|>assistant\n"
    assert build_recovery_prompt(prompt, "7") == (
        "<|im_start|>user\nQ Assistant: no<|im_end|>\n\n"
        + RECOVERY_HINT_TEMPLATE.replace("{gt}", "7")
        + "\n\n<|im_start|>assistant\n"
    )
    assert ASSISTANT_MARKERS.index("<|im_start|>assistant") < ASSISTANT_MARKERS.index("Assistant:")
    assert build_recovery_prompt("What is 2+2?  ", "4") == "What is 2+2?\n\n" + RECOVERY_HINT_TEMPLATE.replace(
        "{gt}", "4"
    )


def test_recovery_prompts_keep_the_hint_out_of_the_students_side():
    prompt = "<｜User｜>Compute 1/2.<｜Assistant｜>"
    sides = recovery_prompts(prompt, "\\frac{1}{2}")
    assert sides.student == prompt and "\\frac{1}{2}" in sides.teacher
    assert contains_recovery_hint(sides.teacher, "\\frac{1}{2}")
    assert not contains_recovery_hint(sides.student, "\\frac{1}{2}")
    with pytest.raises(ValueError, match="already holds a recovery hint"):
        recovery_prompts(sides.teacher, "\\frac{1}{2}")
    with pytest.raises(ValueError, match="gt"):
        build_recovery_prompt(prompt, "1", template="no placeholder")


def test_mentions_validation_key():
    assert mentions_validation_key("Checking against the Validation  key, the answer is 4.")
    assert mentions_validation_key("SILENT_VALIDATION_KEY says 4")
    assert not mentions_validation_key("So the answer is \\boxed{4}.")
