"""TSD-KD loss pieces against the float64 references of `tests/reference.py` (TSD-KD spec, section 9 invariants)."""

import itertools
import math
import subprocess
import sys

import pytest
import reference as ref
import torch

from trl_reasoning_distill.divergence import entropy, forward_kl, generalized_jsd, masked_mean, reverse_kl
from trl_reasoning_distill.tsd_kd import (
    adaptive_opener_ratio,
    entropy_gap_gate,
    opener_mask,
    plackett_luce_loss,
    sample_entropy_gap,
    top_entropy_mask,
    tsd_kd_loss,
    tsd_kd_loss_chunked,
)

F64 = torch.float64


def _grad(value: torch.Tensor, wrt: torch.Tensor) -> torch.Tensor:
    (grad,) = torch.autograd.grad(value, wrt)
    return grad


def _random_mask(B: int, T: int) -> torch.Tensor:
    """Left prompt, right padding and one hole per row, so valid tokens neither start at 0 nor run to T."""
    mask_BT = torch.rand(B, T) < 0.8
    mask_BT[:, 0] = False
    if T > 2:
        mask_BT[:, -1] = False
    return mask_BT


def _aligned_mask(lengths: list[int], T: int) -> torch.Tensor:
    """Completion-aligned layout of the released code: row b holds `lengths[b]` valid tokens from column 0."""
    return torch.arange(T)[None, :] < torch.tensor(lengths)[:, None]


# --- plackett_luce_loss: Eq. (4) -------------------------------------------------------------------------------------


@pytest.mark.parametrize("denominator", ["remaining", "preceding"])
@pytest.mark.parametrize("N, V, K", [(1, 2, 1), (1, 2, 2), (3, 7, 3), (5, 11, 10), (4, 6, 10), (2, 31, 5)])
def test_plackett_luce_matches_reference(N, V, K, denominator):
    student_NV = (2 * torch.randn(N, V, dtype=F64)).requires_grad_()
    teacher_NV = 2 * torch.randn(N, V, dtype=F64)
    loss_N = plackett_luce_loss(student_NV, teacher_NV, K, denominator=denominator)
    ref_N = ref.plackett_luce_loss_ref(student_NV, teacher_NV, K, reverse=denominator == "preceding")
    torch.testing.assert_close(loss_N, ref_N)
    torch.testing.assert_close(_grad(loss_N.sum(), student_NV), _grad(ref_N.sum(), student_NV))


@pytest.mark.parametrize("K", [2, 4])
def test_plackett_luce_gradcheck(K):
    student_NV = (2 * torch.randn(3, 9, dtype=F64)).requires_grad_()
    teacher_NV = torch.randn(3, 9, dtype=F64)
    assert torch.autograd.gradcheck(lambda s: plackett_luce_loss(s, teacher_NV, K), (student_NV,))


def test_plackett_luce_two_candidates_is_bradley_terry():
    student_NV, teacher_NV = torch.randn(8, 6, dtype=F64), torch.randn(8, 6, dtype=F64)
    candidates_N2 = student_NV.topk(2, dim=-1).indices
    teacher_prefers_first_N = teacher_NV.gather(-1, candidates_N2)[:, 0] > teacher_NV.gather(-1, candidates_N2)[:, 1]
    preferred_N2 = torch.where(teacher_prefers_first_N[:, None], candidates_N2, candidates_N2.flip(-1))
    z_win_N, z_lose_N = student_NV.gather(-1, preferred_N2).unbind(-1)
    loss_N = plackett_luce_loss(student_NV, teacher_NV, 2)
    torch.testing.assert_close(loss_N, ref.bradley_terry_ref(z_win_N, z_lose_N))
    torch.testing.assert_close(loss_N, torch.nn.functional.softplus(z_lose_N - z_win_N))


def test_plackett_luce_single_candidate_is_zero_with_zero_gradient():
    student_NV = torch.randn(4, 5, requires_grad=True)
    loss_N = plackett_luce_loss(student_NV, torch.randn(4, 5), 1)
    assert torch.equal(loss_N, torch.zeros(4))
    assert torch.equal(_grad(loss_N.sum(), student_NV), torch.zeros(4, 5))


@pytest.mark.parametrize("K", [1, 2, 3, 4])
def test_plackett_luce_is_a_distribution_over_rankings_minimal_at_the_students_order(K):
    student_V = 2 * torch.randn(6, dtype=F64)
    candidates = student_V.topk(K).indices.tolist()
    losses = []
    for ranking in itertools.permutations(range(K)):
        teacher_V = torch.full((6,), -10.0, dtype=F64)
        teacher_V[[candidates[i] for i in ranking]] = torch.arange(K, 0, -1, dtype=F64)  # ranking[0] is the best
        losses.append(plackett_luce_loss(student_V[None], teacher_V[None], K)[0])
    losses = torch.stack(losses)
    torch.testing.assert_close(torch.exp(-losses).sum(), torch.tensor(1.0, dtype=F64))
    own_order = plackett_luce_loss(student_V[None], student_V[None], K)[0]  # teacher == student
    torch.testing.assert_close(own_order, losses.min())


def test_plackett_luce_shift_invariant_and_blind_to_teacher_outside_candidates():
    student_NV, teacher_NV = torch.randn(5, 12, dtype=F64), torch.randn(5, 12, dtype=F64)
    loss_N = plackett_luce_loss(student_NV, teacher_NV, 4)
    torch.testing.assert_close(plackett_luce_loss(student_NV + 3.7, teacher_NV, 4), loss_N)
    outside_NV = torch.ones_like(student_NV, dtype=torch.bool).scatter(-1, student_NV.topk(4).indices, False)
    moved_NV = torch.where(outside_NV, 100 * torch.randn_like(teacher_NV), teacher_NV)
    assert torch.equal(plackett_luce_loss(student_NV, moved_NV, 4), loss_N)


def test_plackett_luce_gradient_raises_teacher_favourite_and_reaches_only_candidates():
    student_NV = torch.randn(6, 10, dtype=F64, requires_grad=True)
    teacher_NV = torch.randn(6, 10, dtype=F64, requires_grad=True)
    loss = plackett_luce_loss(student_NV, teacher_NV, 4).sum()
    grad_NV, teacher_grad = torch.autograd.grad(loss, (student_NV, teacher_NV), allow_unused=True)
    candidates_N4 = student_NV.detach().topk(4).indices
    ranked_N4 = candidates_N4.gather(-1, teacher_NV.detach().gather(-1, candidates_N4).argsort(-1, descending=True))
    assert (grad_NV.gather(-1, ranked_N4[:, :1]) < 0).all()  # descent raises the teacher's favourite
    assert (grad_NV.gather(-1, ranked_N4[:, -1:]) > 0).all()  # ... and lowers its least favourite
    assert torch.equal(grad_NV.scatter(-1, candidates_N4, 0.0), torch.zeros_like(grad_NV))
    torch.testing.assert_close(grad_NV.sum(-1), torch.zeros(6, dtype=F64))
    assert teacher_grad is None


@pytest.mark.parametrize("denominator, sign", [("remaining", 1), ("preceding", -1)])
def test_plackett_luce_step_moves_probability_towards_teacher_favourite(denominator, sign):
    student_NV = torch.randn(16, 8, dtype=F64, requires_grad=True)
    candidates_N3 = student_NV.detach().topk(3).indices
    scores_N3 = torch.tensor([[1.0, 2.0, 3.0]], dtype=F64).expand(16, 3)
    teacher_NV = torch.zeros(16, 8, dtype=F64).scatter(-1, candidates_N3, scores_N3)
    best_N1 = candidates_N3[:, -1:]  # the teacher prefers the student's lowest-ranked candidate
    grad_NV = _grad(plackett_luce_loss(student_NV, teacher_NV, 3, denominator=denominator).sum(), student_NV)
    logp_before_NV = student_NV.detach().log_softmax(-1)
    logp_after_NV = (student_NV.detach() - 0.1 * grad_NV).log_softmax(-1)
    gain_N = (logp_after_NV - logp_before_NV).gather(-1, best_N1).squeeze(-1)
    assert (sign * gain_N > 0).all()  # the released code's "preceding" normaliser moves it the wrong way (D1)


# --- entropy_gap_gate: Eq. (11) --------------------------------------------------------------------------------------


@pytest.mark.parametrize("tau", [0.5, 1.0, 2.0])
def test_entropy_gap_gate_matches_reference_in_unit_interval_and_detached(tau):
    student_N = (3 * torch.rand(17, dtype=F64)).requires_grad_()
    teacher_N = 3 * torch.rand(17, dtype=F64)
    gate_N = entropy_gap_gate(student_N, teacher_N, tau)
    torch.testing.assert_close(gate_N, ref.entropy_gap_gate_ref(student_N, teacher_N, tau))
    assert not gate_N.requires_grad
    assert ((gate_N > 0) & (gate_N < 1)).all()


def test_entropy_gap_gate_half_at_equal_entropies_and_monotone():
    logits_NV = torch.randn(5, 9)
    h = entropy(logits_NV)
    assert torch.equal(entropy_gap_gate(h, h.clone()), torch.full((5,), 0.5))
    assert torch.equal(entropy_gap_gate(h, h + 1.0, tau=math.inf), torch.full((5,), 0.5))
    gate = entropy_gap_gate(h, entropy(2 * logits_NV))
    assert (entropy_gap_gate(entropy(0.5 * logits_NV), entropy(2 * logits_NV)) > gate).all()  # flatter student
    assert (entropy_gap_gate(h, entropy(0.5 * logits_NV)) < entropy_gap_gate(h, entropy(logits_NV))).all()
    with pytest.raises(ValueError, match="tau"):
        entropy_gap_gate(h, h, tau=0.0)


# --- opener_mask: Eq. (10) -------------------------------------------------------------------------------------------


@pytest.mark.parametrize("ratio", [0.0, 0.05, 0.1, 0.37, 1.0, "per_row"])
@pytest.mark.parametrize("B, T", [(1, 1), (3, 9), (4, 23)])
def test_opener_mask_matches_reference(B, T, ratio):
    entropy_BT, mask_BT = 3 * torch.rand(B, T, dtype=F64), _random_mask(B, T)
    mask_BT[0, :] = T == 1  # an all-masked row (and a lone valid token when T = 1)
    ratio = torch.rand(B, dtype=F64) if ratio == "per_row" else ratio
    assert torch.equal(opener_mask(entropy_BT, mask_BT, ratio), ref.opener_mask_ref(entropy_BT, mask_BT, ratio))


@pytest.mark.parametrize("ratio, expected", [(0.25, 2), (0.3, 2), (0.31, 3), (1.0, 4), (0.0, 1)])
def test_opener_mask_includes_the_token_that_crosses_the_threshold(ratio, expected):
    entropy_BT = torch.tensor([[0.0, 1.0, 2.0, 3.0, 4.0, 0.0]], dtype=F64)  # total 10 over the valid tokens 1..4
    mask_BT = torch.tensor([[False, True, True, True, True, False]])
    assert opener_mask(entropy_BT, mask_BT, ratio).tolist() == [[False] + [t < expected for t in range(4)] + [False]]


@pytest.mark.parametrize("ratio", [0.1, 0.25, 0.5, 0.9])
def test_opener_mask_uniform_entropy_holds_ceil_ratio_times_length(ratio):
    mask_BT = _aligned_mask([7, 7], 9)
    opener_BT = opener_mask(torch.ones(2, 9), mask_BT, ratio)
    assert opener_BT.sum(-1).tolist() == [math.ceil(ratio * 7)] * 2


def test_opener_mask_edge_cases():
    mask_BT = torch.tensor([[0, 1, 1, 1, 1, 0], [0, 0, 0, 0, 0, 0], [0, 0, 1, 1, 1, 1], [1, 1, 1, 1, 0, 0]]).bool()
    entropy_BT = torch.tensor([[9, 1, 2, 3, 0, 9], [1, 1, 1, 1, 1, 1], [0, 0, 0, 0, 0, 0], [0, 0, 5, 0, 9, 9.0]])
    assert opener_mask(entropy_BT, mask_BT, 1.0).sum(-1).tolist() == [3, 0, 1, 3]  # trailing zero entropy is left out
    assert opener_mask(entropy_BT, mask_BT, 1e-6).sum(-1).tolist() == [1, 0, 1, 3]  # one-hot peak: t* is the peak
    assert opener_mask(entropy_BT, mask_BT, 0.0).sum(-1).tolist() == [1, 0, 1, 1]  # the first valid token only
    with pytest.raises(ValueError, match="ratio"):
        opener_mask(entropy_BT, mask_BT, 1.5)
    with pytest.raises(ValueError, match="ratio"):
        opener_mask(entropy_BT, mask_BT, torch.full((3,), 0.1))


def test_opener_mask_is_a_contiguous_per_row_prefix_invariant_to_scale():
    entropy_BT, mask_BT = torch.rand(5, 12, dtype=F64), _aligned_mask([12, 7, 3, 9, 1], 12).roll(2, dims=1)
    opener_BT = opener_mask(entropy_BT, mask_BT, 0.4)
    first_BT = mask_BT.cumsum(-1) <= opener_BT.sum(-1, keepdim=True)
    assert torch.equal(opener_BT, mask_BT & first_BT)  # the first |O| valid tokens of each row
    scale_B1 = torch.tensor([[1.0], [3.0], [0.25], [7.0], [2.0]], dtype=F64)
    assert torch.equal(opener_mask(entropy_BT * scale_B1, mask_BT, 0.4), opener_BT)
    perm = torch.tensor([3, 0, 4, 1, 2])
    assert torch.equal(opener_mask(entropy_BT[perm], mask_BT[perm], 0.4), opener_BT[perm])
    entropy_BT[1:] = 100 * torch.rand(4, 12, dtype=F64)  # other rows change, row 0 does not
    assert torch.equal(opener_mask(entropy_BT, mask_BT, 0.4)[0], opener_BT[0])


def test_opener_mask_per_row_ratio_equals_row_by_row_calls():
    entropy_BT, mask_BT = torch.rand(4, 10), _random_mask(4, 10)
    ratio_B = torch.tensor([0.0, 0.2, 0.55, 1.0])
    rows = [opener_mask(entropy_BT[b : b + 1], mask_BT[b : b + 1], float(ratio_B[b]))[0] for b in range(4)]
    assert torch.equal(opener_mask(entropy_BT, mask_BT, ratio_B), torch.stack(rows))


# --- top_entropy_mask: the set I of Eq. (12) -------------------------------------------------------------------------


@pytest.mark.parametrize("scope", ["sequence", "batch"])
@pytest.mark.parametrize("ratio", [0.0, 0.1, 0.3, 0.7, 1.0])
@pytest.mark.parametrize("B, T", [(1, 1), (3, 10), (4, 21)])
def test_top_entropy_mask_matches_reference(B, T, ratio, scope):
    entropy_BT, mask_BT = torch.rand(B, T, dtype=F64), _random_mask(B, T)
    mask_BT[-1, :] = False
    selected_BT = top_entropy_mask(entropy_BT, mask_BT, ratio, scope=scope)
    assert torch.equal(selected_BT, ref.top_entropy_mask_ref(entropy_BT, mask_BT, ratio, scope))


@pytest.mark.parametrize("ratio", [0.01, 0.1, 0.25, 0.7, 1.0])
def test_top_entropy_mask_count_order_and_padding(ratio):
    lengths = [10, 7, 1, 20]
    mask_BT = _aligned_mask(lengths, 20)
    entropy_BT = torch.where(mask_BT, torch.rand(4, 20), 1e6)  # padding has the highest entropy
    selected_BT = top_entropy_mask(entropy_BT, mask_BT, ratio)
    assert selected_BT.sum(-1).tolist() == [max(1, math.ceil(round(ratio * n, 9))) for n in lengths]
    assert not (selected_BT & ~mask_BT).any()
    for b in range(4):
        chosen, rest = entropy_BT[b][selected_BT[b]], entropy_BT[b][mask_BT[b] & ~selected_BT[b]]
        assert rest.numel() == 0 or chosen.min() >= rest.max()


def test_top_entropy_mask_ties_go_to_the_earliest_positions():
    mask_BT = _aligned_mask([5, 5], 6)
    assert top_entropy_mask(torch.ones(2, 6), mask_BT, 0.4).tolist() == [[True, True, False, False, False, False]] * 2
    batch_BT = top_entropy_mask(torch.ones(2, 6), mask_BT, 0.3, scope="batch")
    assert batch_BT.tolist() == [[True, True, True, False, False, False], [False] * 6]
    assert top_entropy_mask(torch.rand(2, 6), mask_BT, 0.0).sum() == 0
    assert torch.equal(top_entropy_mask(torch.rand(2, 6), mask_BT, 1.0), mask_BT)
    assert 0.07 * 100 > 7 and top_entropy_mask(torch.rand(1, 100), torch.ones(1, 100), 0.07).sum() == 7
    with pytest.raises(ValueError, match="scope"):
        top_entropy_mask(torch.ones(2, 6), mask_BT, 0.1, scope="row")


# --- adaptive opener, App. A.7 ---------------------------------------------------------------------------------------


def test_sample_entropy_gap_matches_reference():
    student_BT, teacher_BT, mask_BT = torch.rand(4, 7, dtype=F64), torch.rand(4, 7, dtype=F64), _random_mask(4, 7)
    mask_BT[2] = False
    gap_B = sample_entropy_gap(student_BT, teacher_BT, mask_BT)
    torch.testing.assert_close(gap_B, ref.sample_entropy_gap_ref(student_BT, teacher_BT, mask_BT))
    assert gap_B[2] == 0


@pytest.mark.parametrize("window", [1, 5])
@pytest.mark.parametrize("history_len", [0, 3, 40])
def test_adaptive_opener_ratio_matches_reference(window, history_len):
    gap_B, history_H = torch.randn(6, dtype=F64), torch.randn(history_len, dtype=F64)
    edges, ratios = (0.25, 0.5, 0.75), (0.05, 0.10, 0.15, 0.20)
    ratio_B = adaptive_opener_ratio(gap_B, history_H, window=window, quantile_edges=edges, ratios=ratios)
    torch.testing.assert_close(ratio_B, ref.adaptive_opener_ratio_ref(gap_B, history_H, window, edges, ratios))


def test_adaptive_opener_ratio_cold_start_monotone_and_checked():
    assert adaptive_opener_ratio(torch.tensor([0.7])).tolist() == [pytest.approx(0.10)]  # the fixed p of the paper
    history_H = torch.linspace(-1, 1, 50)
    ratio_B = adaptive_opener_ratio(torch.tensor([-5.0, -0.2, 0.2, 5.0]), history_H, window=1)
    assert ratio_B.tolist() == sorted(ratio_B.tolist()) and ratio_B[0] < ratio_B[-1]
    with pytest.raises(ValueError, match="quantile_edges"):
        adaptive_opener_ratio(torch.zeros(2), ratios=(0.1, 0.2))
    with pytest.raises(ValueError, match="ratios"):
        adaptive_opener_ratio(torch.zeros(2), quantile_edges=(0.5,), ratios=(0.1, 2.0))


# --- tsd_kd_loss: Eq. (13) -------------------------------------------------------------------------------------------

CONFIGS = {
    "paper": {},
    "batch_scope_tau_temperature": {"entropy_scope": "batch", "tau": 2.0, "temperature": 2.0, "opener_ratio": 0.4},
    "no_gate_big_ratios": {"use_gate": False, "opener_ratio": 1.0, "entropy_ratio": 0.5, "beta": 0.5},
    "forward_kl_two_candidates": {"beta": 0.0, "top_k": 2, "indirect_coef": 1.0, "entropy_coef": 0.3},
}


@pytest.mark.parametrize("config", CONFIGS)
@pytest.mark.parametrize("B, T, V", [(1, 1, 2), (2, 5, 7), (3, 8, 13)])
def test_tsd_kd_loss_matches_reference(B, T, V, config):
    kwargs = {"top_k": 4, **CONFIGS[config]}
    student_BTV = (2 * torch.randn(B, T, V, dtype=F64)).requires_grad_()
    teacher_BTV = 2 * torch.randn(B, T, V, dtype=F64)
    mask_BT = torch.ones(B, T, dtype=torch.bool) if T == 1 else _random_mask(B, T)
    out = tsd_kd_loss(student_BTV, teacher_BTV, mask_BT, **kwargs)
    expected = ref.tsd_kd_loss_ref(student_BTV, teacher_BTV, mask_BT, **kwargs)
    for name in ("loss", "direct", "indirect", "entropy"):
        torch.testing.assert_close(getattr(out, name), expected[name], msg=name)
    torch.testing.assert_close(_grad(out.loss, student_BTV), _grad(expected["loss"], student_BTV))


def test_tsd_kd_loss_per_row_opener_ratio_matches_reference():
    student_BTV = torch.randn(3, 6, 9, dtype=F64, requires_grad=True)
    teacher_BTV, mask_BT = torch.randn(3, 6, 9, dtype=F64), _random_mask(3, 6)
    ratio_B = torch.tensor([0.05, 0.5, 1.0], dtype=F64)
    out = tsd_kd_loss(student_BTV, teacher_BTV, mask_BT, opener_ratio=ratio_B, top_k=3)
    expected = ref.tsd_kd_loss_ref(student_BTV, teacher_BTV, mask_BT, opener_ratio=ratio_B, top_k=3)
    torch.testing.assert_close(out.indirect, expected["indirect"])
    torch.testing.assert_close(out.loss, expected["loss"])


def test_tsd_kd_loss_gradcheck():
    student_BTV = torch.randn(2, 4, 6, dtype=F64, requires_grad=True)
    teacher_BTV, mask_BT = torch.randn(2, 4, 6, dtype=F64), torch.tensor([[0, 1, 1, 0], [0, 1, 0, 0]]).bool()
    kwargs = {"top_k": 3, "opener_ratio": 0.5, "entropy_ratio": 0.5, "use_gate": False}  # a detached gate fails it
    assert torch.autograd.gradcheck(lambda s: tsd_kd_loss(s, teacher_BTV, mask_BT, **kwargs).loss, (student_BTV,))


def test_tsd_kd_loss_with_extra_terms_off_is_gkd_exactly():
    student_BTV, teacher_BTV, mask_BT = torch.randn(3, 7, 11), torch.randn(3, 7, 11), _random_mask(3, 7)
    out = tsd_kd_loss(student_BTV, teacher_BTV, mask_BT, use_gate=False, indirect_coef=0.0, entropy_coef=0.0)
    assert torch.equal(out.loss, masked_mean(generalized_jsd(student_BTV, teacher_BTV, beta=0.9), mask_BT))
    assert out.gate_mean == 1.0


def test_tsd_kd_loss_composition_and_defaults():
    student_BTV, teacher_BTV = torch.randn(2, 9, 12, dtype=F64), torch.randn(2, 9, 12, dtype=F64)
    mask_BT = _random_mask(2, 9)
    out = tsd_kd_loss(student_BTV, teacher_BTV, mask_BT)
    direct_only = tsd_kd_loss(student_BTV, teacher_BTV, mask_BT, indirect_coef=0.0, entropy_coef=0.0).loss
    doubled = tsd_kd_loss(student_BTV, teacher_BTV, mask_BT, indirect_coef=0.2, entropy_coef=2.0).loss
    torch.testing.assert_close(out.loss, out.direct + 1.0 * out.entropy + 0.1 * out.indirect)
    torch.testing.assert_close(direct_only, out.direct)
    torch.testing.assert_close(doubled - out.loss, out.entropy + 0.1 * out.indirect)
    expected = ref.tsd_kd_loss_ref(student_BTV, teacher_BTV, mask_BT)  # defaults: beta 0.9, K 10, p = rho = 0.1, ...
    torch.testing.assert_close(out.loss, expected["loss"])
    assert set(out.metrics) == {"direct", "indirect", "entropy", "gate_mean", "opener_len", "opener_frac",
                                "entropy_frac"}  # fmt: skip


def test_tsd_kd_loss_gate_is_stop_gradient_and_teacher_gets_none():
    student_BTV = torch.randn(2, 6, 8, dtype=F64, requires_grad=True)
    teacher_BTV, mask_BT = torch.randn(2, 6, 8, dtype=F64, requires_grad=True), _random_mask(2, 6)
    out = tsd_kd_loss(student_BTV, teacher_BTV, mask_BT)
    gate_BT = entropy_gap_gate(entropy(student_BTV), entropy(teacher_BTV)).detach()
    by_hand = masked_mean(gate_BT * generalized_jsd(student_BTV, teacher_BTV.detach(), beta=0.9), mask_BT)
    torch.testing.assert_close(_grad(out.direct, student_BTV), _grad(by_hand, student_BTV))
    assert torch.autograd.grad(out.loss, teacher_BTV, allow_unused=True) == (None,)


def test_tsd_kd_loss_term_gradients_reach_only_their_tokens():
    student_BTV = torch.randn(3, 10, 16, requires_grad=True)
    teacher_BTV, mask_BT = torch.randn(3, 10, 16), _random_mask(3, 10)
    out = tsd_kd_loss(student_BTV, teacher_BTV, mask_BT, top_k=5, opener_ratio=0.3, entropy_ratio=0.2)
    h_BT = entropy(student_BTV.detach())
    indirect_BTV, entropy_BTV = _grad(out.indirect, student_BTV), _grad(out.entropy, student_BTV)
    touched_BT = (indirect_BTV != 0).sum(-1)
    assert torch.equal(touched_BT > 0, opener_mask(h_BT, mask_BT, 0.3)) and touched_BT.max() <= 5
    assert torch.equal((entropy_BTV != 0).any(-1), top_entropy_mask(h_BT, mask_BT, 0.2))


def test_tsd_kd_loss_equal_models_give_zero_direct_and_minimal_indirect():
    student_BTV, mask_BT = torch.randn(2, 5, 9, dtype=F64), _random_mask(2, 5)
    out = tsd_kd_loss(student_BTV, student_BTV.clone(), mask_BT, top_k=3)
    torch.testing.assert_close(out.direct, torch.zeros((), dtype=F64))
    assert out.gate_mean == 0.5
    opener_BT = opener_mask(entropy(student_BTV), mask_BT, 0.1)
    shuffled_BTV = student_BTV.clone()
    shuffled_BTV[opener_BT] = shuffled_BTV[opener_BT].flip(-1)
    assert out.indirect <= tsd_kd_loss(student_BTV, shuffled_BTV, mask_BT, top_k=3).indirect


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_tsd_kd_loss_degenerate_masks_are_finite(dtype):
    student_BTV = torch.randn(3, 4, 6).to(dtype).requires_grad_()
    teacher_BTV, mask_BT = torch.randn(3, 4, 6).to(dtype), _random_mask(3, 4)
    mask_BT[1], empty_BT = False, torch.zeros_like(mask_BT)
    for m, compat in [(mask_BT, False), (mask_BT, True), (empty_BT, False), (empty_BT, True)]:
        out = tsd_kd_loss(student_BTV, teacher_BTV, m, top_k=3, reference_code_compat=compat)
        grad_BTV = _grad(out.loss, student_BTV)
        assert torch.isfinite(out.loss) and torch.isfinite(grad_BTV.float()).all()
        assert m.any() or (out.loss == 0 and not grad_BTV.any())


def _global_counts(student_BTV, mask_BT, opener_ratio=0.1, entropy_ratio=0.1, entropy_scope="sequence"):
    """The three normalisers of the whole batch, from the float64 reference's selections."""
    entropy_BT = ref.entropy_ref(student_BTV.detach())
    selected_BT = ref.top_entropy_mask_ref(entropy_BT, mask_BT, entropy_ratio, entropy_scope)
    units = selected_BT.sum() if entropy_scope == "batch" else selected_BT.any(-1).sum()
    return {"num_items_in_batch": int(mask_BT.sum()), "num_entropy_units": int(units),
            "num_opener_tokens": int(ref.opener_mask_ref(entropy_BT, mask_BT, opener_ratio).sum())}


@pytest.mark.parametrize("terms", [
    {"indirect_coef": 1.0, "entropy_coef": 0.0}, {"indirect_coef": 0.0, "entropy_coef": 1.0}, {},
])  # fmt: skip
@pytest.mark.parametrize("chunked", [False, True])
def test_tsd_kd_loss_global_normalisers_make_micro_batches_add_up(terms, chunked):
    """Items 4 and 7 of the scale issue: with the global batch's counts, the micro-batches' losses (and gradients) add
    up to the loss of the whole batch, for any split, and two processes' halves average to it; each term alone too."""
    student_BTH, student_VH, teacher_BTH, teacher_VH, mask_BT, vocab = _hidden_inputs(B=6, T=7)
    student_BTV, teacher_BTV = (student_BTH @ student_VH[:vocab].T).detach(), teacher_BTH @ teacher_VH[:vocab].T
    options = {"top_k": 3, "opener_ratio": 0.4, "entropy_ratio": 0.3, **terms}
    counts = _global_counts(student_BTV, mask_BT, options["opener_ratio"], options["entropy_ratio"])

    def loss(rows, **kwargs):
        if chunked:
            return tsd_kd_loss_chunked(student_BTH[rows], student_VH, teacher_BTH[rows], teacher_VH, mask_BT[rows],
                                       vocab_size=vocab, **options, **kwargs).loss
        student_logits_BTV = student_BTH[rows] @ student_VH[:vocab].T
        return tsd_kd_loss(student_logits_BTV, teacher_BTV[rows], mask_BT[rows], **options, **kwargs).loss

    whole = loss(slice(None))
    expected = ref.tsd_kd_loss_ref(student_BTV, teacher_BTV, mask_BT, **options)["loss"]
    torch.testing.assert_close(whole, expected)
    (whole_grad,) = torch.autograd.grad(whole, student_BTH)
    for splits in ([slice(0, 3), slice(3, 6)], [slice(0, 1), slice(1, 4), slice(4, 6)]):
        parts = [loss(rows, **counts) for rows in splits]
        torch.testing.assert_close(sum(parts), whole)
        torch.testing.assert_close(torch.autograd.grad(sum(parts), student_BTH)[0], whole_grad)
        for rows, part in zip(splits, parts, strict=True):  # each part against the reference with the global counts
            reference = ref.tsd_kd_loss_ref(student_BTV[rows], teacher_BTV[rows], mask_BT[rows], **options, **counts)
            torch.testing.assert_close(part, reference["loss"])
    halves = [loss(rows, num_processes=2, **counts) for rows in (slice(0, 3), slice(3, 6))]  # DDP averages
    torch.testing.assert_close((halves[0] + halves[1]) / 2, whole)


def test_tsd_kd_loss_logs_micro_batch_means_whatever_the_normalisers():
    student_BTV, teacher_BTV = torch.randn(2, 6, 7, dtype=F64), torch.randn(2, 6, 7, dtype=F64)
    mask_BT = _random_mask(2, 6)
    local = tsd_kd_loss(student_BTV, teacher_BTV, mask_BT, top_k=3)
    counts = {"num_items_in_batch": 40, "num_opener_tokens": 9, "num_entropy_units": 5}
    scaled = tsd_kd_loss(student_BTV, teacher_BTV, mask_BT, top_k=3, num_processes=2, **counts)
    expected = ref.tsd_kd_loss_ref(student_BTV, teacher_BTV, mask_BT, top_k=3, num_processes=2, **counts)
    for name in ("loss", "direct", "indirect", "entropy"):
        torch.testing.assert_close(getattr(scaled, name), expected[name], msg=name)
    for name in ("direct", "indirect", "entropy"):
        assert scaled.metrics[name] == pytest.approx(local.metrics[name], rel=1e-12)


def test_tsd_kd_loss_bf16_is_close_to_fp32():
    student_BTV = (2 * torch.randn(2, 8, 32)).bfloat16()
    teacher_BTV, mask_BT = (2 * torch.randn(2, 8, 32)).bfloat16(), _random_mask(2, 8)
    half = tsd_kd_loss(student_BTV, teacher_BTV, mask_BT)
    full = tsd_kd_loss(student_BTV.float(), teacher_BTV.float(), mask_BT)  # the same values, in fp32
    assert half.loss.dtype == torch.float32
    torch.testing.assert_close(half.loss, full.loss, rtol=1e-2, atol=1e-3)


def test_tsd_kd_loss_checks_its_arguments():
    student_BTV, mask_BT = torch.randn(2, 3, 5), torch.ones(2, 3, dtype=torch.bool)
    with pytest.raises(ValueError, match="mask"):
        tsd_kd_loss(student_BTV, student_BTV, mask_BT[:, :2])
    with pytest.raises(ValueError, match="one vocabulary"):
        tsd_kd_loss(student_BTV, torch.randn(2, 3, 6), mask_BT)
    with pytest.raises(ValueError, match="top_k"):
        tsd_kd_loss(student_BTV, student_BTV, mask_BT, top_k=0)


# --- reference_code_compat: the released code (spec section 2.9) ----------------------------------------------------


# --- tsd_kd_loss_chunked: the same loss from hidden states -----------------------------------------------------------


def _hidden_inputs(B=3, T=9, H=6, H_t=5, V_s=15, V_t=13, dtype=F64):
    """Hidden states and heads with different hidden sizes and padded vocabularies (shared vocabulary 12)."""
    student_BTH = torch.randn(B, T, H, dtype=dtype).requires_grad_()
    student_VH = (torch.randn(V_s, H, dtype=dtype) / 2).requires_grad_()
    teacher_BTH, teacher_VH = torch.randn(B, T, H_t, dtype=dtype), torch.randn(V_t, H_t, dtype=dtype) / 2
    return student_BTH, student_VH, teacher_BTH, teacher_VH, _random_mask(B, T), 12


@pytest.mark.parametrize(
    "options",
    [
        {},
        {"use_gate": False, "entropy_scope": "batch", "top_k": 3},
        {"temperature": 1.7, "beta": 0.0, "tau": 0.5, "opener_ratio": 0.6, "entropy_ratio": 0.3},
        {"beta": 1.0, "num_items_in_batch": 40, "num_processes": 2, "top_k": 2},
        {"opener_ratio": torch.tensor([0.05, 0.5, 1.0]), "chunk_size": 4},
        {"chunk_size": 1, "entropy_coef": 0.3, "indirect_coef": 2.0},
        {"opener_ratio": "adaptive"},
    ],
)
def test_chunked_loss_equals_the_logits_loss(options):
    student_BTH, student_VH, teacher_BTH, teacher_VH, mask_BT, vocab = _hidden_inputs()
    if options.get("opener_ratio") == "adaptive":  # a function of the loss's own entropies (App. A.7)
        history_H = torch.tensor([0.1, -0.3, 0.8, 0.2], dtype=F64)
        options["opener_ratio"] = lambda student_BT, teacher_BT: adaptive_opener_ratio(
            sample_entropy_gap(student_BT, teacher_BT, mask_BT), history_H
        )
    chunk = {"chunk_size": options.pop("chunk_size", None)}
    chunked = tsd_kd_loss_chunked(
        student_BTH, student_VH, teacher_BTH, teacher_VH, mask_BT, vocab_size=vocab, **chunk, **options
    )
    dense = tsd_kd_loss(student_BTH @ student_VH[:vocab].T, teacher_BTH @ teacher_VH[:vocab].T, mask_BT, **options)
    for name in ("loss", "direct", "indirect", "entropy", "gate_mean", "opener_len", "entropy_frac"):
        torch.testing.assert_close(getattr(chunked, name), getattr(dense, name), msg=name)
    expected = torch.autograd.grad(dense.loss, (student_BTH, student_VH))
    for actual, grad in zip(torch.autograd.grad(chunked.loss, (student_BTH, student_VH)), expected):
        torch.testing.assert_close(actual, grad)


def test_chunked_loss_all_masked_is_zero_with_zero_gradient():
    student_BTH, student_VH, teacher_BTH, teacher_VH, mask_BT, vocab = _hidden_inputs()
    out = tsd_kd_loss_chunked(student_BTH, student_VH, teacher_BTH, teacher_VH, torch.zeros_like(mask_BT),
                              vocab_size=vocab)
    assert out.loss.item() == 0.0
    assert _grad(out.loss, student_BTH).abs().max().item() == 0.0


def test_chunked_loss_checks_its_arguments():
    student_BTH, student_VH, teacher_BTH, teacher_VH, mask_BT, vocab = _hidden_inputs()
    with pytest.raises(ValueError, match="hidden states"):
        tsd_kd_loss_chunked(student_BTH, student_VH, teacher_BTH[:, 1:], teacher_VH, mask_BT, vocab_size=vocab)
    with pytest.raises(ValueError, match="vocab_size"):
        tsd_kd_loss_chunked(student_BTH, student_VH, teacher_BTH, teacher_VH, mask_BT, vocab_size=14)
    with pytest.raises(ValueError, match="ratio"):
        tsd_kd_loss_chunked(student_BTH, student_VH, teacher_BTH, teacher_VH, mask_BT, vocab_size=vocab,
                            opener_ratio=1.5)


@pytest.mark.parametrize("beta", [0.5, 0.9])
def test_reference_code_compat_reproduces_the_released_code(beta):
    student_BTV = (2 * torch.randn(3, 9, 12, dtype=F64)).requires_grad_()
    teacher_BTV = torch.randn(3, 9, 12, dtype=F64)
    mask_BT = _aligned_mask([9, 6, 4], 9)  # the code's layout: completions start at column 0
    out = tsd_kd_loss(student_BTV, teacher_BTV, mask_BT, beta=beta, reference_code_compat=True)
    expected = ref.released_code_loss_ref(student_BTV, teacher_BTV, mask_BT, beta=beta)
    for name in ("loss", "direct", "indirect", "entropy"):
        torch.testing.assert_close(getattr(out, name), expected[name], msg=name)
    torch.testing.assert_close(_grad(out.loss, student_BTV), _grad(expected["loss"], student_BTV))
    prompt_BTV, no_BT = torch.randn(3, 2, 12, dtype=F64), torch.zeros(3, 2, dtype=torch.bool)
    with_prompt = [torch.cat([prompt_BTV, student_BTV], 1), torch.cat([prompt_BTV, teacher_BTV], 1)]
    shifted = tsd_kd_loss(*with_prompt, torch.cat([no_BT, mask_BT], 1), beta=beta, reference_code_compat=True)
    torch.testing.assert_close(shifted.loss, out.loss)  # TRL 1.16's layout (prompt columns masked) changes nothing


def test_reference_code_compat_d1_trains_towards_the_reversed_ranking():
    student_BTV, teacher_BTV = torch.randn(1, 8, 9, dtype=F64), torch.randn(1, 8, 9, dtype=F64)
    mask_BT, kwargs = torch.ones(1, 8, dtype=torch.bool), {"opener_ratio": 0.6, "entropy_ratio": 0.6, "top_k": 3}
    paper = tsd_kd_loss(student_BTV, teacher_BTV, mask_BT, **kwargs)
    code = tsd_kd_loss(student_BTV, teacher_BTV, mask_BT, reference_code_compat=True, **kwargs)
    opener_BT = torch.arange(8)[None] < code.opener_len  # the code's opener is a prefix of the paper's here
    rows_NV, teacher_NV = student_BTV[opener_BT], teacher_BTV[opener_BT]
    torch.testing.assert_close(code.indirect, ref.plackett_luce_loss_ref(rows_NV, teacher_NV, 3, reverse=True).mean())
    assert paper.opener_len == code.opener_len + 1  # ... one token shorter (D2)


def test_reference_code_compat_d2_opener_is_batch_flat_and_exclusive():
    student_BTV = torch.randn(2, 12, 16, dtype=F64)
    mask_BT = torch.ones(2, 12, dtype=torch.bool)
    student_BTV[1] = student_BTV[0]  # two identical rows: the flat cut reaches 20 % of row 0's entropy
    h_BT = entropy(student_BTV)
    code = tsd_kd_loss(student_BTV, student_BTV, mask_BT, opener_ratio=0.1, entropy_ratio=0.1,
                       reference_code_compat=True)  # fmt: skip
    paper_len_at_20 = opener_mask(h_BT[:1], mask_BT[:1], 0.2).sum()
    assert code.opener_len == paper_len_at_20 - 1  # a paper opener at 10 % would not see the other row


def test_reference_code_compat_d3_one_ratio_for_both_selections():
    student_BTV, mask_BT = torch.randn(2, 4, 6), torch.ones(2, 4, dtype=torch.bool)
    with pytest.raises(ValueError, match="entropy_ratio"):
        tsd_kd_loss(student_BTV, student_BTV, mask_BT, opener_ratio=0.1, entropy_ratio=0.2, reference_code_compat=True)
    with pytest.raises(ValueError, match="opener_ratio"):
        tsd_kd_loss(student_BTV, student_BTV, mask_BT, opener_ratio=torch.full((2,), 0.1), reference_code_compat=True)


def test_reference_code_compat_d4_keeps_about_ninety_percent_padding_included():
    student_BTV = torch.randn(4, 30, 8, dtype=F64)
    mask_BT = _aligned_mask([30, 30, 30, 10], 30)  # 100 valid tokens, 20 padding positions
    student_BTV[3, 10:] = 0.0  # uniform logits: padding entropy ln 8, above every valid token's
    h_BT = entropy(student_BTV)
    code = tsd_kd_loss(student_BTV, student_BTV, mask_BT, reference_code_compat=True)
    paper = tsd_kd_loss(student_BTV, student_BTV, mask_BT)
    assert code.entropy_frac == (90 + 20) / 100
    kept_BT = h_BT >= h_BT[mask_BT].sort().values[10]  # linear quantile at 0.1 of 100 values lies in (v_9, v_10)
    torch.testing.assert_close(code.entropy, h_BT[kept_BT].mean())
    torch.testing.assert_close(paper.entropy, sum(h_BT[b][mask_BT[b]].topk(n).values.mean()
                                                  for b, n in enumerate([3, 3, 3, 1])) / 4)  # fmt: skip


@pytest.mark.parametrize("beta, divergence", [(0.0, forward_kl), (1.0, reverse_kl)])
def test_reference_code_compat_d6_endpoints_give_zero(beta, divergence):
    student_BTV, teacher_BTV, mask_BT = torch.randn(2, 5, 7), torch.randn(2, 5, 7), _random_mask(2, 5)
    kwargs = {"beta": beta, "use_gate": False, "indirect_coef": 0.0, "entropy_coef": 0.0}
    assert tsd_kd_loss(student_BTV, teacher_BTV, mask_BT, reference_code_compat=True, **kwargs).loss == 0
    paper = tsd_kd_loss(student_BTV, teacher_BTV, mask_BT, **kwargs).loss
    torch.testing.assert_close(paper, masked_mean(divergence(student_BTV, teacher_BTV), mask_BT))


def test_package_imports_neither_trl_nor_transformers():
    code = "import sys, trl_reasoning_distill.tsd_kd; assert not {'trl', 'transformers'} & set(sys.modules)"
    subprocess.run([sys.executable, "-c", code], check=True)
