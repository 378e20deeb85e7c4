"""CoTD-PO loss pieces against the float64 references of `tests/reference_cotd_po.py` (spec §2, §7, §8 invariants)."""

import math

import pytest
import reference_cotd_po as ref
import torch
import torch.nn.functional as F

from trl_reasoning_distill.cotd_po import (
    CoTDPOOutput,
    aggregate_logps,
    cotd_po_loss,
    listwise_preference_loss,
    listwise_score_gradient,
    normalize_rewards,
    pairwise_preference_loss,
    rationale_nll,
    sequence_log_likelihood,
    target_distribution,
    token_log_probs,
)

F64 = torch.float64


def _grad(value: torch.Tensor, wrt: torch.Tensor) -> torch.Tensor:
    (grad,) = torch.autograd.grad(value, wrt, retain_graph=True)
    return grad


def _mask(B: int, G: int, p: float = 0.7) -> torch.Tensor:
    """Random candidate mask with at least one valid candidate per prompt."""
    mask = torch.rand(B, G) < p
    mask[torch.arange(B), torch.randint(G, (B,))] = True
    return mask


def _logps(B: int, G: int) -> torch.Tensor:
    return (-3 * torch.rand(B, G, dtype=F64) - 0.1).requires_grad_()


# --- token and sequence log-likelihoods ------------------------------------------------------------------------------


@pytest.mark.parametrize("N, L, V", [(1, 2, 3), (2, 5, 7), (3, 6, 11)])
def test_token_log_probs_matches_reference(N, L, V):
    logits = (2 * torch.randn(N, L, V, dtype=F64)).requires_grad_()
    labels = torch.randint(V, (N, L))
    labels[torch.rand(N, L) < 0.3] = -100
    value = token_log_probs(logits, labels)
    expected = ref.token_logprob_ref(logits, labels)
    assert value.shape == (N, L - 1)
    torch.testing.assert_close(value, expected)
    torch.testing.assert_close(_grad(value.sum(), logits), _grad(expected.sum(), logits))
    assert (value[labels[:, 1:] == -100] == 0).all()


def test_token_log_probs_computes_low_precision_logits_in_float32():
    logits = torch.randn(2, 6, 9, dtype=F64)
    labels = torch.randint(9, (2, 6))
    value = token_log_probs(logits.bfloat16(), labels)
    assert value.dtype == torch.float32
    torch.testing.assert_close(value.double(), ref.token_logprob_ref(logits.bfloat16().double(), labels))


def test_sequence_log_likelihood_sum_mean_and_count():
    logits = torch.randn(3, 7, 10, dtype=F64)
    labels = torch.randint(10, (3, 7))
    labels[0, :4] = -100
    labels[2, 1:] = -100  # no scored token: labels[:, 0] is never a target
    out = sequence_log_likelihood(logits, labels)
    expected = ref.token_logprob_ref(logits, labels).sum(-1)
    torch.testing.assert_close(out.sum, expected)
    assert out.num_tokens.tolist() == [3, 6, 0]
    torch.testing.assert_close(out.mean[:2], expected[:2] / torch.tensor([3.0, 6.0], dtype=F64))
    assert math.isnan(out.mean[2].item())


def test_sequence_log_likelihood_is_invariant_to_extra_right_padding():
    logits = torch.randn(2, 5, 8, dtype=F64)
    labels = torch.randint(8, (2, 5))
    padded_logits = torch.cat([logits, 50 * torch.randn(2, 4, 8, dtype=F64)], dim=1)
    padded_labels = torch.cat([labels, torch.full((2, 4), -100)], dim=1)
    a, b = sequence_log_likelihood(logits, labels), sequence_log_likelihood(padded_logits, padded_labels)
    torch.testing.assert_close(a.sum, b.sum)
    assert torch.equal(a.num_tokens, b.num_tokens)


def test_token_log_probs_rejects_mismatched_shapes():
    with pytest.raises(ValueError, match="labels"):
        token_log_probs(torch.randn(2, 5, 8), torch.zeros(2, 4, dtype=torch.long))


# --- aggregation (spec §7 item 1) ------------------------------------------------------------------------------------


def test_aggregate_logps_three_modes():
    logp_sum = torch.tensor([[-6.0, -2.0, -9.0], [-1.0, -4.0, -3.0]], dtype=F64)
    num_tokens = torch.tensor([[3, 1, 0], [2, 4, 6]])
    group_max_len = torch.tensor([11, 5])
    torch.testing.assert_close(aggregate_logps(logp_sum, num_tokens, "sum"), logp_sum)
    torch.testing.assert_close(
        aggregate_logps(logp_sum, num_tokens, "mean"),
        torch.tensor([[-2.0, -2.0, -9.0], [-0.5, -1.0, -0.5]], dtype=F64),
    )
    torch.testing.assert_close(
        aggregate_logps(logp_sum, num_tokens, "padded_mean", group_max_len), logp_sum / torch.tensor([[10.0], [4.0]])
    )
    with pytest.raises(ValueError, match="group_max_len"):
        aggregate_logps(logp_sum, num_tokens, "padded_mean")
    with pytest.raises(ValueError, match="aggregation"):
        aggregate_logps(logp_sum, num_tokens, "median")


# --- teacher target (Eq. 4, spec §2.4, §8 item 1) --------------------------------------------------------------------


@pytest.mark.parametrize("method", ["minmax", "none", "zscore"])
@pytest.mark.parametrize("B, G", [(1, 1), (1, 2), (3, 4), (4, 8)])
def test_normalize_rewards_matches_reference(method, B, G):
    rewards = 3 * torch.randn(B, G, dtype=F64)
    valid = _mask(B, G)
    rewards[~valid] = torch.nan  # failed scores in invalid slots must not leak
    value = normalize_rewards(rewards, valid, method=method, scale=5.0, eps=1e-3)
    torch.testing.assert_close(value, ref.normalize_rewards_ref(rewards, valid, method, 5.0, 1e-3))
    assert torch.isfinite(value).all() and (value[~valid] == 0).all()


def test_normalize_rewards_treats_non_finite_rewards_as_invalid():
    rewards = torch.tensor([[1.0, math.nan, 3.0, -math.inf]], dtype=F64)
    value = normalize_rewards(rewards)
    torch.testing.assert_close(value, torch.tensor([[0.0, 0.0, 5 * 2 / (2 + 1e-3), 0.0]], dtype=F64))


def test_minmax_best_is_below_scale_and_worst_is_zero():
    rewards = torch.randn(5, 6, dtype=F64)
    value = normalize_rewards(rewards, method="minmax", scale=5.0)
    assert (value.amax(-1) < 5).all() and (value.amax(-1) > 4.99).all()
    assert (value.amin(-1) == 0).all()


def test_minmax_target_is_invariant_to_positive_affine_maps():
    rewards = torch.randn(4, 5, dtype=F64)
    base = target_distribution(normalize_rewards(rewards, eps=0.0))
    moved = target_distribution(normalize_rewards(3.7 * rewards - 11.0, eps=0.0))
    torch.testing.assert_close(base, moved)
    flipped = target_distribution(normalize_rewards(-rewards, eps=0.0))
    assert not torch.allclose(base, flipped)


def test_unnormalised_target_is_invariant_to_shifts_only():
    rewards = torch.randn(4, 5, dtype=F64)
    base = target_distribution(normalize_rewards(rewards, method="none", scale=1.0))
    torch.testing.assert_close(base, target_distribution(normalize_rewards(rewards + 42.0, method="none", scale=1.0)))
    assert not torch.allclose(base, target_distribution(normalize_rewards(2 * rewards, method="none", scale=1.0)))


@pytest.mark.parametrize("method", ["minmax", "none", "zscore"])
def test_equal_rewards_give_a_uniform_target_without_nan(method):
    valid = torch.tensor([[True, True, False, True], [False, False, False, False]])
    rewards = torch.full((2, 4), 2.5, dtype=F64)
    target = target_distribution(normalize_rewards(rewards, valid, method=method), valid)
    torch.testing.assert_close(target, torch.tensor([[1 / 3, 1 / 3, 0, 1 / 3], [0, 0, 0, 0]], dtype=F64))


def test_target_distribution_sums_to_one_and_is_zero_on_masked():
    scores = 4 * torch.randn(6, 5, dtype=F64)
    mask = _mask(6, 5)
    target = target_distribution(scores, mask, target_temp=0.7)
    torch.testing.assert_close(target.sum(-1), torch.ones(6, dtype=F64))
    assert (target >= 0).all() and (target[~mask] == 0).all()
    _, expected, _ = ref.listwise_ref(torch.zeros(6, 5, dtype=F64), scores, 1.0, 0.7, mask)
    torch.testing.assert_close(target, expected)


# --- listwise loss (Eq. 8) and its gradient (spec §2.7) --------------------------------------------------------------


SHAPES = [(1, 1), (1, 2), (3, 4), (2, 8), (5, 3)]


@pytest.mark.parametrize("target_temp", [1.0, 0.5])
@pytest.mark.parametrize("lam", [0.05, 0.5, 2.0])
@pytest.mark.parametrize("masked", [False, True])
@pytest.mark.parametrize("B, G", SHAPES)
def test_listwise_matches_reference_values_and_gradients(B, G, masked, lam, target_temp):
    logps, scores = _logps(B, G), 3 * torch.randn(B, G, dtype=F64)
    mask = _mask(B, G) if masked else None
    value = listwise_preference_loss(logps, scores, lam, target_temp, mask)
    expected, _, _ = ref.listwise_ref(logps, scores, lam, target_temp, mask)
    torch.testing.assert_close(value, expected)
    grad = _grad(value.sum(), logps)
    torch.testing.assert_close(grad, _grad(expected.sum(), logps))
    torch.testing.assert_close(grad, ref.listwise_grad_ref(logps, scores, lam, target_temp, mask))  # spec §2.7


def test_listwise_gradcheck():
    logps, scores, mask = _logps(3, 5), torch.randn(3, 5, dtype=F64), _mask(3, 5)
    assert torch.autograd.gradcheck(lambda s: listwise_preference_loss(s, scores, 0.7, 1.0, mask), (logps,))


def test_exact_score_gradient_is_lambda_q_minus_target_and_sums_to_zero():
    lam = 0.8
    logps, scores, mask = _logps(4, 6), 2 * torch.randn(4, 6, dtype=F64), _mask(4, 6)
    grad = _grad(listwise_preference_loss(logps, scores, lam, mask=mask).sum(), logps)
    q = torch.where(mask, (lam * logps.detach()).masked_fill(~mask, -torch.inf).softmax(-1), 0.0)
    target = target_distribution(scores, mask)
    torch.testing.assert_close(grad, lam * (q - target))
    torch.testing.assert_close(grad.sum(-1), torch.zeros(4, dtype=F64))
    torch.testing.assert_close(listwise_score_gradient(logps, scores, lam, mask=mask), grad)
    assert not listwise_score_gradient(logps, scores, lam, mask=mask).requires_grad


def test_two_candidates_with_a_hard_target_is_reference_free_dpo():
    lam = 0.3
    logps = _logps(6, 2)
    winner = torch.randint(2, (6,))
    scores = torch.where(torch.arange(2)[None, :] == winner[:, None], 0.0, -torch.inf).to(F64)  # one-hot target
    value = listwise_preference_loss(logps, scores, lam)
    chosen, rejected = logps.gather(1, winner[:, None])[:, 0], logps.gather(1, 1 - winner[:, None])[:, 0]
    expected = ref.reference_free_dpo_ref(chosen, rejected, lam)
    torch.testing.assert_close(value, expected)
    torch.testing.assert_close(value, -F.logsigmoid(lam * (chosen - rejected)))
    torch.testing.assert_close(_grad(value.sum(), logps), _grad(expected.sum(), logps))


def test_cotd_po_loss_with_sum_aggregation_and_two_candidates_is_reference_free_dpo():
    """Spec §8 item 4 through the composite loss: sum aggregation, a one-hot target (unscaled rewards 1000 apart),
    no rationale term; equals DPO's sigmoid loss with β = λ and reference log-probs 0."""
    B, T, lam = 3, 7, 0.2
    token_logps = (-2 * torch.rand(B, 2, T, dtype=F64)).requires_grad_()
    answer_mask = torch.rand(B, 2, T) < 0.6
    answer_mask[..., 0] = True
    rewards = torch.tensor([[1000.0, 0.0], [0.0, 1000.0], [1000.0, 0.0]], dtype=F64)
    out = cotd_po_loss(token_logps, answer_mask, rewards, lam=lam, logp_aggregation="sum",
                       reward_normalization="none", reward_scale=1.0, rationale_weight=0.0)
    sums = ref.masked_sum_ref(token_logps, answer_mask)
    winner = rewards.argmax(-1)
    chosen, rejected = sums.gather(1, winner[:, None])[:, 0], sums.gather(1, 1 - winner[:, None])[:, 0]
    expected = ref.reference_free_dpo_ref(chosen, rejected, lam).mean()
    torch.testing.assert_close(out.loss, expected)
    torch.testing.assert_close(_grad(out.loss, token_logps), _grad(expected, token_logps))


def test_loss_is_bounded_below_by_target_entropy_with_equality_at_the_target():
    scores, lam = torch.randn(3, 5, dtype=F64), 0.5
    target = target_distribution(scores)
    entropy = -(target * target.log()).sum(-1)
    for _ in range(5):
        assert (listwise_preference_loss(_logps(3, 5), scores, lam) >= entropy - 1e-12).all()
    matching = (target.log() - 7.0) / lam  # softmax(λ s) = p̃ exactly
    torch.testing.assert_close(listwise_preference_loss(matching, scores, lam), entropy)


def test_shift_invariance_and_permutation_invariance():
    logps, scores, lam = _logps(2, 6), torch.randn(2, 6, dtype=F64), 0.9
    base = listwise_preference_loss(logps, scores, lam)
    torch.testing.assert_close(listwise_preference_loss(logps + 3.3, scores, lam), base)
    perm = torch.randperm(6)
    torch.testing.assert_close(listwise_preference_loss(logps[:, perm], scores[:, perm], lam), base)
    assert not torch.allclose(listwise_preference_loss(logps, scores[:, perm.roll(1)], lam), base)


def test_small_lambda_limit_is_log_k_with_linear_gradient():
    logps, scores = _logps(2, 4), torch.randn(2, 4, dtype=F64)
    small = listwise_preference_loss(logps, scores, 1e-6)
    torch.testing.assert_close(small, torch.full((2,), math.log(4), dtype=F64), atol=1e-5, rtol=0)
    g1 = _grad(listwise_preference_loss(logps, scores, 1e-4).sum(), logps)
    g2 = _grad(listwise_preference_loss(logps, scores, 2e-4).sum(), logps)
    torch.testing.assert_close(g2, 2 * g1, rtol=1e-3, atol=1e-7)  # linear in λ up to O(λ²)
    uniform_direction = 1e-4 * (0.25 - target_distribution(scores))  # λ Σ (1/K - p̃_i) ∇ s_i
    torch.testing.assert_close(g1, uniform_direction, rtol=1e-3, atol=1e-7)


def test_padded_dummy_candidates_change_neither_loss_nor_gradient():
    """Spec §8 item 10: K real candidates plus dummy slots holding -inf / NaN / 0 scores and garbage rewards."""
    logps, scores = _logps(1, 5), torch.randn(1, 5, dtype=F64)
    alone = listwise_preference_loss(logps, scores, 0.5)
    dummy_logps = torch.tensor([[-torch.inf, torch.nan, 0.0]], dtype=F64)
    padded = torch.cat([logps, dummy_logps], dim=1)
    padded_scores = torch.cat([scores, torch.tensor([[100.0, torch.nan, 5.0]], dtype=F64)], dim=1)
    mask = torch.tensor([[True] * 5 + [False] * 3])
    value = listwise_preference_loss(padded, padded_scores, 0.5, mask=mask)
    torch.testing.assert_close(value, alone)
    grad = _grad(value.sum(), logps)
    torch.testing.assert_close(grad, _grad(alone.sum(), logps))
    assert torch.isfinite(grad).all()


def test_all_masked_and_single_candidate_prompts_give_zero_without_nan():
    logps, scores = _logps(3, 4), torch.randn(3, 4, dtype=F64)
    mask = torch.tensor([[False] * 4, [False, True, False, False], [True] * 4])
    value = listwise_preference_loss(logps, scores, 0.5, mask=mask)
    assert value[0] == 0 and value[1] == 0 and value[2] > 0
    grad = _grad(value.sum(), logps)
    assert torch.isfinite(grad).all() and (grad[:2] == 0).all()


def test_listwise_rejects_bad_arguments():
    with pytest.raises(ValueError, match="lam"):
        listwise_preference_loss(torch.zeros(1, 2), torch.zeros(1, 2), lam=0.0)
    with pytest.raises(ValueError, match="target_temp"):
        listwise_preference_loss(torch.zeros(1, 2), torch.zeros(1, 2), target_temp=-1.0)
    with pytest.raises(ValueError, match="teacher_scores"):
        listwise_preference_loss(torch.zeros(1, 2), torch.zeros(1, 3))
    with pytest.raises(ValueError, match="mask"):
        listwise_preference_loss(torch.zeros(1, 2), torch.zeros(1, 2), mask=torch.ones(2, 1, dtype=torch.bool))


# --- pairwise ablation (Eq. 11, spec §8 item 16) ---------------------------------------------------------------------


@pytest.mark.parametrize("B, G", [(1, 2), (4, 3), (3, 8)])
def test_pairwise_matches_reference(B, G):
    logp_sum = (-10 * torch.rand(B, G, dtype=F64)).requires_grad_()
    num_tokens = torch.randint(1, 9, (B, G))
    rewards = torch.randint(0, 4, (B, G)).to(F64)  # ties on purpose: first index wins
    mask = _mask(B, G)
    value = pairwise_preference_loss(logp_sum, num_tokens, rewards, mask, beta=2.0, gamma=0.7, chosen_nll_weight=0.3)
    expected = ref.pairwise_ref(logp_sum, num_tokens, rewards, mask, 2.0, 0.7, 0.3)
    torch.testing.assert_close(value, expected)
    torch.testing.assert_close(_grad(value.sum(), logp_sum), _grad(expected.sum(), logp_sum))


def test_pairwise_uses_best_and_worst_only_and_skips_prompts_without_a_pair():
    logp_sum = torch.tensor([[-4.0, -9.0, -2.0, -1.0], [-1.0, -2.0, -3.0, -4.0]], dtype=F64, requires_grad=True)
    num_tokens = torch.tensor([[2, 3, 1, 1], [1, 1, 1, 1]])
    rewards = torch.tensor([[0.5, 3.0, 0.1, 1.0], [2.0, 2.0, 2.0, math.nan]], dtype=F64)
    value = pairwise_preference_loss(logp_sum, num_tokens, rewards, beta=1.0, gamma=0.0, chosen_nll_weight=0.0)
    torch.testing.assert_close(value[0], -F.logsigmoid(torch.tensor(-3.0 - (-2.0), dtype=F64)))
    assert value[1] == 0  # equal rewards: no preference
    grad = _grad(value.sum(), logp_sum)
    assert grad[0, 0] == 0 and grad[0, 3] == 0 and grad[0, 1] < 0 < grad[0, 2] and (grad[1] == 0).all()


def test_pairwise_gradcheck():
    logp_sum = (-5 * torch.rand(3, 4, dtype=F64)).requires_grad_()
    num_tokens, rewards = torch.randint(1, 5, (3, 4)), torch.randn(3, 4, dtype=F64)
    assert torch.autograd.gradcheck(lambda s: pairwise_preference_loss(s, num_tokens, rewards), (logp_sum,))


# --- rationale NLL (Eq. 9, spec §7 item 4, §8 item 8) ----------------------------------------------------------------


@pytest.mark.parametrize("reduction", ["token_mean", "sum"])
def test_rationale_nll_reads_the_first_valid_row(reduction):
    token_logps = (-torch.rand(2, 3, 6, dtype=F64)).requires_grad_()
    rationale_mask = torch.zeros(2, 3, 6, dtype=torch.bool)
    rationale_mask[:, :, 1:4] = True
    candidate_mask = torch.tensor([[False, True, True], [True, True, True]])
    value = rationale_nll(token_logps, rationale_mask, candidate_mask, reduction)
    rows = torch.stack([token_logps[0, 1, 1:4], token_logps[1, 0, 1:4]])
    expected = -rows.sum(-1) / (3 if reduction == "token_mean" else 1)
    torch.testing.assert_close(value, expected)
    grad = _grad(value.sum(), token_logps)
    assert (grad[0, 0] == 0).all() and (grad[0, 2] == 0).all() and (grad[1, 1:] == 0).all()


def test_rationale_nll_without_rationale_tokens_is_zero():
    value = rationale_nll(torch.randn(2, 2, 4), torch.zeros(2, 2, 4, dtype=torch.bool))
    assert (value == 0).all()


# --- the composite objective (Eq. 9) ---------------------------------------------------------------------------------


def _group_tensors(B: int, G: int, T: int):
    """Random token log-probs with a shared rationale span and answer spans of varied lengths after it."""
    token_logps = (-3 * torch.rand(B, G, T, dtype=F64)).requires_grad_()
    rationale_mask = torch.zeros(B, G, T, dtype=torch.bool)
    answer_mask = torch.zeros(B, G, T, dtype=torch.bool)
    group_max_len = torch.zeros(B, dtype=torch.long)
    for b in range(B):
        start = int(torch.randint(0, 2, ()))
        end = start + int(torch.randint(1, 4, ()))
        rationale_mask[b, :, start:end] = True
        for g in range(G):
            answer_mask[b, g, end : end + int(torch.randint(1, T - end + 1, ()))] = True
        group_max_len[b] = int(answer_mask[b].nonzero()[:, 1].max()) + 2  # last target + shift + 1
    rewards = torch.randn(B, G, dtype=F64)
    return token_logps, answer_mask, rationale_mask, rewards, group_max_len


@pytest.mark.parametrize("aggregation", ["padded_mean", "sum", "mean"])
@pytest.mark.parametrize("normalization", ["minmax", "none", "zscore"])
@pytest.mark.parametrize("reduction", ["token_mean", "sum"])
@pytest.mark.parametrize("B, G, T", [(1, 1, 6), (2, 3, 8), (3, 8, 10)])
def test_cotd_po_loss_matches_reference(B, G, T, aggregation, normalization, reduction):
    token_logps, answer_mask, rationale_mask, rewards, group_max_len = _group_tensors(B, G, T)
    valid = _mask(B, G)
    kwargs = dict(lam=0.7, alpha=0.6, rationale_weight=1.3)
    out = cotd_po_loss(token_logps, answer_mask, rewards, rationale_mask=rationale_mask, candidate_mask=valid,
                       group_max_len=group_max_len, logp_aggregation=aggregation, reward_normalization=normalization,
                       reward_scale=2.0, reward_norm_eps=1e-3, rationale_reduction=reduction, **kwargs)
    loss, rat, apa = ref.cotd_po_ref(token_logps, answer_mask, rationale_mask, rewards, valid, group_max_len,
                                     aggregation=aggregation, reward_method=normalization, reward_scale=2.0, eps=1e-3,
                                     rationale_reduction=reduction, **kwargs)
    torch.testing.assert_close(out.loss, loss)
    torch.testing.assert_close(out.rationale, rat)
    torch.testing.assert_close(out.preference, apa)
    torch.testing.assert_close(_grad(out.loss, token_logps), _grad(loss, token_logps))


@pytest.mark.parametrize("aggregation", ["padded_mean", "sum", "mean"])
def test_cotd_po_loss_is_invariant_to_extra_right_padding(aggregation):
    """Spec §8 item 9: extra padded positions (any values, masks False) change nothing; `"padded_mean"` divides by
    the group's own length, not the tensor width."""
    token_logps, answer_mask, rationale_mask, rewards, group_max_len = _group_tensors(2, 4, 7)
    kwargs = dict(group_max_len=group_max_len, logp_aggregation=aggregation)
    base = cotd_po_loss(token_logps, answer_mask, rewards, rationale_mask=rationale_mask, **kwargs)

    def pad(x, value):
        return torch.cat([x, torch.full((*x.shape[:2], 5), value, dtype=x.dtype)], dim=-1)

    padded = cotd_po_loss(pad(token_logps, -torch.inf), pad(answer_mask, False), rewards,
                          rationale_mask=pad(rationale_mask, False), **kwargs)
    torch.testing.assert_close(padded.loss, base.loss)
    torch.testing.assert_close(_grad(padded.loss, token_logps), _grad(base.loss, token_logps))


def test_cotd_po_loss_dummy_candidate_slots_change_nothing():
    token_logps, answer_mask, rationale_mask, rewards, group_max_len = _group_tensors(1, 4, 8)
    base = cotd_po_loss(token_logps, answer_mask, rewards, rationale_mask=rationale_mask, group_max_len=group_max_len)
    extra = torch.zeros(1, 3, 8, dtype=F64)
    padded = cotd_po_loss(
        torch.cat([token_logps, extra], dim=1),
        torch.cat([answer_mask, torch.ones(1, 3, 8, dtype=torch.bool)], dim=1),  # dummy answers, masked by the slots
        torch.cat([rewards, torch.tensor([[9.0, math.nan, -9.0]], dtype=F64)], dim=1),
        rationale_mask=torch.cat([rationale_mask, torch.ones(1, 3, 8, dtype=torch.bool)], dim=1),
        candidate_mask=torch.tensor([[True] * 4 + [False] * 3]),
        group_max_len=group_max_len,
    )
    torch.testing.assert_close(padded.loss, base.loss)
    torch.testing.assert_close(_grad(padded.loss, token_logps), _grad(base.loss, token_logps))


def test_nan_reward_and_empty_answer_mark_a_candidate_invalid():
    token_logps, answer_mask, rationale_mask, rewards, group_max_len = _group_tensors(1, 4, 8)
    kwargs = dict(rationale_mask=rationale_mask, group_max_len=group_max_len)
    rewards[0, 1] = math.nan
    empty = answer_mask.clone()
    empty[0, 2] = False
    masked = cotd_po_loss(token_logps, empty, rewards, **kwargs)
    explicit = cotd_po_loss(token_logps, answer_mask, rewards.nan_to_num(0.0),
                            candidate_mask=torch.tensor([[True, False, False, True]]), **kwargs)
    torch.testing.assert_close(masked.loss, explicit.loss)
    assert masked.valid_frac.item() == 0.5


def test_prompts_without_a_valid_candidate_do_not_dilute_the_preference_term():
    token_logps, answer_mask, rationale_mask, rewards, group_max_len = _group_tensors(3, 4, 8)
    rewards[1] = math.nan  # every score of prompt 1 failed
    kwargs = dict(rationale_weight=0.0, best_answer_nll_weight=0.3)
    out = cotd_po_loss(token_logps, answer_mask, rewards, rationale_mask=rationale_mask, group_max_len=group_max_len,
                       **kwargs)
    keep = torch.tensor([0, 2])
    alone = cotd_po_loss(token_logps[keep], answer_mask[keep], rewards[keep], rationale_mask=rationale_mask[keep],
                         group_max_len=group_max_len[keep], **kwargs)
    torch.testing.assert_close(out.preference, alone.preference)
    torch.testing.assert_close(out.loss, alone.loss)
    assert out.valid_frac.item() == 8 / 12


def test_masks_separate_the_answer_and_rationale_terms():
    """Spec §8 item 7: zeroing the rationale mask leaves the preference term alone, zeroing the answer masks leaves
    the rationale NLL alone; answer scores use answer positions only."""
    token_logps, answer_mask, rationale_mask, rewards, group_max_len = _group_tensors(2, 3, 8)
    kwargs = dict(group_max_len=group_max_len)
    base = cotd_po_loss(token_logps, answer_mask, rewards, rationale_mask=rationale_mask, **kwargs)
    no_rationale = cotd_po_loss(token_logps, answer_mask, rewards, rationale_mask=torch.zeros_like(rationale_mask),
                                **kwargs)
    torch.testing.assert_close(no_rationale.preference, base.preference)
    assert no_rationale.rationale == 0
    no_answers = cotd_po_loss(token_logps, torch.zeros_like(answer_mask), rewards, rationale_mask=rationale_mask,
                              **kwargs)
    torch.testing.assert_close(no_answers.rationale, base.rationale)
    assert no_answers.preference == 0
    outside = token_logps.detach().clone()
    outside[~answer_mask] = -50.0  # anything off the answer span must not move the preference term
    moved = cotd_po_loss(outside, answer_mask, rewards, **kwargs)
    torch.testing.assert_close(moved.preference, base.preference)


def test_alpha_zero_and_rationale_weight_zero():
    token_logps, answer_mask, rationale_mask, rewards, group_max_len = _group_tensors(2, 3, 8)
    kwargs = dict(rationale_mask=rationale_mask, group_max_len=group_max_len)
    sft = cotd_po_loss(token_logps, answer_mask, rewards, alpha=0.0, **kwargs)
    torch.testing.assert_close(sft.loss, rationale_nll(token_logps, rationale_mask).mean())
    pure = cotd_po_loss(token_logps, answer_mask, rewards, rationale_weight=0.0, **kwargs)
    scores = aggregate_logps(ref.masked_sum_ref(token_logps, answer_mask), answer_mask.sum(-1), "padded_mean",
                             group_max_len)
    torch.testing.assert_close(pure.loss, listwise_preference_loss(scores, normalize_rewards(rewards), 0.5).mean())


def test_best_answer_nll_term_and_metrics():
    token_logps, answer_mask, rationale_mask, rewards, group_max_len = _group_tensors(2, 3, 8)
    kwargs = dict(rationale_mask=rationale_mask, group_max_len=group_max_len)
    base = cotd_po_loss(token_logps, answer_mask, rewards, **kwargs)
    weighted = cotd_po_loss(token_logps, answer_mask, rewards, best_answer_nll_weight=0.4, **kwargs)
    means = ref.masked_sum_ref(token_logps, answer_mask) / answer_mask.sum(-1)
    expected_nll = -means.gather(1, rewards.argmax(-1, keepdim=True)).mean()
    torch.testing.assert_close(base.best_answer_nll, expected_nll)
    torch.testing.assert_close(weighted.loss, base.loss + 0.4 * expected_nll)
    metrics = base.metrics
    assert isinstance(base, CoTDPOOutput) and "loss" not in metrics
    assert set(metrics) == {"preference", "rationale", "best_answer_nll", "kl", "target_entropy", "student_entropy",
                            "score_best", "score_worst", "answer_len", "valid_frac", "pair_frac"}
    assert all(isinstance(v, float) and math.isfinite(v) for v in metrics.values())
    torch.testing.assert_close(base.kl + base.target_entropy, base.preference)  # L_apa = KL + H(p̃)
    assert metrics["kl"] >= 0 and 0 <= metrics["student_entropy"] <= math.log(3) + 1e-9
    torch.testing.assert_close(base.answer_len, answer_mask.sum(-1).double().mean())


def test_pairwise_mode_of_the_composite_loss():
    token_logps, answer_mask, rationale_mask, rewards, group_max_len = _group_tensors(3, 4, 8)
    out = cotd_po_loss(token_logps, answer_mask, rewards, rationale_mask=rationale_mask, group_max_len=group_max_len,
                       loss_mode="pairwise_simpo", simpo_beta=1.5, simpo_gamma=0.4, chosen_nll_weight=0.2, alpha=0.5)
    pair = ref.pairwise_ref(ref.masked_sum_ref(token_logps, answer_mask), answer_mask.sum(-1), rewards,
                            torch.ones(3, 4, dtype=torch.bool), 1.5, 0.4, 0.2)
    torch.testing.assert_close(out.preference, pair.mean())
    torch.testing.assert_close(out.loss, out.rationale + 0.5 * pair.mean())
    assert out.pair_frac.item() == 1.0


def test_cotd_po_loss_rejects_bad_arguments():
    token_logps, answer_mask, rationale_mask, rewards, group_max_len = _group_tensors(1, 2, 5)
    with pytest.raises(ValueError, match="loss_mode"):
        cotd_po_loss(token_logps, answer_mask, rewards, group_max_len=group_max_len, loss_mode="dpo")
    with pytest.raises(ValueError, match="group_max_len"):
        cotd_po_loss(token_logps, answer_mask, rewards)
    with pytest.raises(ValueError, match="rewards"):
        cotd_po_loss(token_logps, answer_mask, rewards[:, :1], group_max_len=group_max_len)
    with pytest.raises(ValueError, match="alpha"):
        cotd_po_loss(token_logps, answer_mask, rewards, group_max_len=group_max_len, alpha=-1.0)
    with pytest.raises(ValueError, match="reward_normalization|method"):
        cotd_po_loss(token_logps, answer_mask, rewards, group_max_len=group_max_len, reward_normalization="rank")


# --- on the tiny model: masks, rationale NLL, parity with the released code, descent ---------------------------------


RATIONALE = "My thought: 47+38=85\n85-19=66My answer:"


def _encode(tokenizer, text):
    return tokenizer(text, add_special_tokens=False)["input_ids"]


def _toy_group(tokenizer, answers, prompt="47+38-19=?", rationale=RATIONALE):
    """Sequences prefix ⊕ rationale ⊕ answer ⊕ EOS, with the rationale and answer spans (token index ranges)."""
    prefix = _encode(tokenizer, tokenizer.apply_chat_template([{"role": "user", "content": prompt}], tokenize=False,
                                                              add_generation_prompt=True))
    thought = _encode(tokenizer, rationale)
    sequences, rationale_spans, answer_spans = [], [], []
    for answer in answers:
        sequence = prefix + thought + _encode(tokenizer, " " + answer) + [tokenizer.eos_token_id]
        sequences.append(sequence)
        rationale_spans.append((len(prefix), len(prefix) + len(thought)))
        answer_spans.append((len(prefix) + len(thought), len(sequence)))
    return sequences, rationale_spans, answer_spans


def _collate(groups, pad_id, slots=None, extra_width=0):
    """Right-padded `(B·K, L)` rows (row b·K + k is candidate k of group b), unshifted masks and group lengths."""
    K = slots or max(len(g[0]) for g in groups)
    width = max(len(s) for g in groups for s in g[0]) + extra_width
    ids = torch.full((len(groups) * K, width), pad_id, dtype=torch.long)
    attention = torch.zeros_like(ids)
    rationale_mask = torch.zeros_like(ids, dtype=torch.bool)
    answer_mask = torch.zeros_like(ids, dtype=torch.bool)
    candidate_mask = torch.zeros(len(groups), K, dtype=torch.bool)
    group_max_len = torch.zeros(len(groups), dtype=torch.long)
    for b, (sequences, rationale_spans, answer_spans) in enumerate(groups):
        group_max_len[b] = max(len(s) for s in sequences)
        for k, sequence in enumerate(sequences):
            row = b * K + k
            ids[row, : len(sequence)] = torch.tensor(sequence)
            attention[row, : len(sequence)] = 1
            rationale_mask[row, slice(*rationale_spans[k])] = True
            answer_mask[row, slice(*answer_spans[k])] = True
            candidate_mask[b, k] = True
    return dict(input_ids=ids, attention_mask=attention, rationale_mask=rationale_mask, answer_mask=answer_mask,
                candidate_mask=candidate_mask, group_max_len=group_max_len)


def _model_loss(model, batch, rewards, **kwargs):
    B, K = batch["candidate_mask"].shape
    targets = batch["rationale_mask"] | batch["answer_mask"]
    labels = batch["input_ids"].masked_fill(~targets, -100)
    logits = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits
    token_logps = token_log_probs(logits, labels).view(B, K, -1)
    return cotd_po_loss(token_logps, batch["answer_mask"][:, 1:].view(B, K, -1), rewards,
                        rationale_mask=batch["rationale_mask"][:, 1:].view(B, K, -1),
                        candidate_mask=batch["candidate_mask"], group_max_len=batch["group_max_len"], **kwargs)


ANSWERS = ["\\boxed{66}", "\\boxed{65}", "the answer is \\boxed{66}", "\\boxed{7}"]
REWARDS = [0.9, 0.1, 0.7, -0.4]


def test_released_code_parity_on_the_tiny_model(tokenizer, tiny_student):
    """Spec §8 item 18: B = 1, λ = 0.5, padded_mean, min-max × 5, right padding: the released code's loss."""
    group = _toy_group(tokenizer, ANSWERS)
    batch = _collate([group], tokenizer.pad_token_id, extra_width=3)  # wider than the group: L_pad must not see it
    out = _model_loss(tiny_student, batch, torch.tensor([REWARDS]))
    expected = ref.released_code_loss_ref(tiny_student, *group, REWARDS, tokenizer.pad_token_id)
    torch.testing.assert_close(out.loss.double(), expected, rtol=1e-5, atol=1e-5)


def test_rationale_nll_is_the_models_causal_lm_loss_and_row_independent(tokenizer, tiny_student):
    """Spec §8 item 8: L_rat equals the model's own loss with labels on the rationale tokens, from any row."""
    group = _toy_group(tokenizer, ANSWERS)
    batch = _collate([group], tokenizer.pad_token_id)
    logits = tiny_student(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits
    token_logps = token_log_probs(logits, batch["input_ids"]).view(1, 4, -1)
    rationale_mask = batch["rationale_mask"][:, 1:].view(1, 4, -1)
    for k in range(4):
        only_k = torch.zeros(1, 4, dtype=torch.bool)
        only_k[0, k] = True
        labels = batch["input_ids"][k : k + 1].masked_fill(~batch["rationale_mask"][k : k + 1], -100)
        hf_loss = tiny_student(input_ids=batch["input_ids"][k : k + 1],
                               attention_mask=batch["attention_mask"][k : k + 1], labels=labels).loss
        torch.testing.assert_close(rationale_nll(token_logps, rationale_mask, only_k)[0], hf_loss,
                                   rtol=1e-5, atol=1e-5)


def test_model_loss_is_invariant_to_padding_and_dummy_slots(tokenizer, tiny_student):
    groups = [_toy_group(tokenizer, ANSWERS), _toy_group(tokenizer, ANSWERS[:3], prompt="5+3=?")]
    rewards = torch.tensor([REWARDS, [0.2, 0.5, 0.1, 0.0]])
    tight = _model_loss(tiny_student, _collate(groups, tokenizer.pad_token_id), rewards)  # slot 4 of group 2 is empty
    wide = _model_loss(tiny_student, _collate(groups, tokenizer.pad_token_id, slots=6, extra_width=9),
                       torch.cat([rewards, torch.zeros(2, 2)], dim=1))
    torch.testing.assert_close(wide.loss, tight.loss, rtol=1e-5, atol=1e-6)
    assert tight.valid_frac.item() == 7 / 8


def _params(model):
    return [p for p in model.parameters() if p.requires_grad]


def test_surrogate_weights_give_the_parameter_gradient_of_the_listwise_loss(tokenizer, tiny_student):
    """Spec §8 item 15: Σ_i sg[λ (q_i - p̃_i)] · s_i has the parameter gradient of L_apa."""
    batch = _collate([_toy_group(tokenizer, ANSWERS)], tokenizer.pad_token_id)
    rewards = torch.tensor([REWARDS])
    out = _model_loss(tiny_student, batch, rewards, rationale_weight=0.0, lam=5.0)
    direct = torch.autograd.grad(out.loss, _params(tiny_student))
    labels = batch["input_ids"].masked_fill(~batch["answer_mask"], -100)
    logits = tiny_student(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits
    sums = token_log_probs(logits, labels).sum(-1).view(1, 4)
    scores = sums / (batch["group_max_len"][:, None] - 1)
    weights = listwise_score_gradient(scores, normalize_rewards(rewards), 5.0)
    surrogate = torch.autograd.grad((weights * scores).sum(), _params(tiny_student))
    for a, b in zip(direct, surrogate):
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-7)


def _sgd_step(model, batch, rewards, lr, **kwargs):
    before = _model_loss(model, batch, rewards, **kwargs)
    model.zero_grad()
    before.loss.backward()
    with torch.no_grad():
        for p in _params(model):
            p -= lr * p.grad
        after = _model_loss(model, batch, rewards, **kwargs)
    return before, after


def test_one_sgd_step_moves_the_student_towards_the_teacher(tokenizer, tiny_student):
    """Spec §8 item 14: a small step lowers KL(p̃ || q); on a pair (where the loss is DPO's) it raises the best
    answer's score over the worst's (to first order: the change is lr · σ · λ · |∇(s_w - s_l)|² > 0)."""
    kwargs = dict(rationale_weight=0.0, lam=5.0, logp_aggregation="mean")
    batch = _collate([_toy_group(tokenizer, ANSWERS)], tokenizer.pad_token_id)
    before, after = _sgd_step(tiny_student, batch, torch.tensor([REWARDS]), 1e-3, **kwargs)
    assert after.kl < before.kl
    pair = _collate([_toy_group(tokenizer, [ANSWERS[0], ANSWERS[3]])], tokenizer.pad_token_id)
    before, after = _sgd_step(tiny_student, pair, torch.tensor([[REWARDS[0], REWARDS[3]]]), 1e-3, **kwargs)
    assert after.score_best - after.score_worst > before.score_best - before.score_worst
    assert after.kl < before.kl
