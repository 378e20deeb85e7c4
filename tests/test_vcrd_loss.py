"""VCRD loss pieces against the float64 references of `tests/reference_vcrd.py` (VCRD spec, section 8 invariants)."""

import math

import pytest
import reference_vcrd as vref
import torch

from trl_reasoning_distill._trl import GKDTrainer
from trl_reasoning_distill.chunked import chunked_distill_loss
from trl_reasoning_distill.divergence import skew_kl
from trl_reasoning_distill.vcrd import (
    teacher_prob_ratio,
    teacher_prob_weights,
    validity_weights,
    vcrd_loss,
    vcrd_token_coefficients,
    weight_stats,
)

F64 = torch.float64


def _mask(B: int, T: int) -> torch.Tensor:
    """Random completion mask with a masked first column; the last row is all-masked when B > 2."""
    mask_BT = torch.rand(B, T) < 0.75
    mask_BT[:, 0] = False
    if B > 2:
        mask_BT[-1] = False
    return mask_BT


def _half(B: int, T: int, V: int, dtype=F64, scale: float = 2.0):
    """(student logits with grad, teacher logits, mask, weights in [0, 3)) of one rollout family."""
    student_BTV = (scale * torch.randn(B, T, V, dtype=dtype)).requires_grad_()
    teacher_BTV = scale * torch.randn(B, T, V, dtype=dtype)
    return student_BTV, teacher_BTV, _mask(B, T), 3 * torch.rand(B, T, dtype=dtype)


def _grads(value: torch.Tensor, *wrt: torch.Tensor) -> tuple[torch.Tensor, ...]:
    return torch.autograd.grad(value, wrt, allow_unused=True, materialize_grads=True)


# --- validity_weights: Eq. (1) and the ablation rules of spec §2.11 ------------------------------------------------


def _scores(n: int = 40) -> tuple[torch.Tensor, torch.Tensor]:
    """Validities in [0, 1] with exact zeros, ones and ties mixed in."""
    r_s, r_t = torch.rand(n, dtype=F64), torch.rand(n, dtype=F64)
    r_s[:4], r_t[:4] = 0.0, 0.0
    r_t[4:8] = 0.0
    r_s[8:12] = r_t[8:12]
    r_s[12:14] = 1.0
    return r_s, r_t


@pytest.mark.parametrize("rule", ["ratio", "difference", "student_only", "constant"])
@pytest.mark.parametrize("clip", [None, (0.0, None), (None, 2.0), (0.5, 2.0)])
@pytest.mark.parametrize("disable_amplification", [False, True])
def test_validity_weights_match_reference(rule, clip, disable_amplification):
    r_s, r_t = _scores()
    weights = validity_weights(r_s, r_t, 1e-8, clip, weighting_rule=rule, disable_amplification=disable_amplification)
    expected = vref.validity_weights_ref(r_s, r_t, 1e-8, rule, clip, disable_amplification)
    torch.testing.assert_close(weights, expected, rtol=1e-12, atol=0)


def test_validity_weight_regimes():
    r_s = torch.tensor([0.9, 0.2, 0.6, 0.0, 1.0, 0.6])
    r_t = torch.tensor([0.3, 0.8, 0.6, 0.0, 0.0, 0.6])
    w = validity_weights(r_s, r_t, eps=1e-8)
    assert w[0] > 1 and w[1] < 1  # amplification, attenuation
    assert abs(w[2].item() - 1.0) < 1e-6 and w[2] == w[5]  # parity
    assert w[3] == 0.0  # both invalid: no update (spec A24)
    assert w[4] == pytest.approx(1e8)  # unbounded without a clip (spec A6)
    assert validity_weights(r_s, r_t, eps=1e-2)[4] == pytest.approx(100.0)


def test_validity_weight_rules_by_name():
    r_s, r_t = torch.tensor([0.2, 0.9]), torch.tensor([0.7, 0.3])
    torch.testing.assert_close(validity_weights(r_s, r_t, weighting_rule="difference"), torch.tensor([-0.5, 0.6]))
    torch.testing.assert_close(validity_weights(r_s, r_t, weighting_rule="student_only"), r_s)
    torch.testing.assert_close(validity_weights(r_s, r_t, weighting_rule="constant"), torch.ones(2))
    unclamped = validity_weights(r_s, r_t)
    assert torch.equal(validity_weights(r_s, r_t, disable_amplification=True), unclamped.clamp(max=1.0))
    assert validity_weights(r_s, r_t, clip=(None, 2.0)).max() <= 2.0


def test_validity_weights_carry_no_gradient():
    r_s, r_t = torch.rand(5, requires_grad=True), torch.rand(5, requires_grad=True)
    assert not validity_weights(r_s, r_t).requires_grad


@pytest.mark.parametrize(
    "kwargs, match",
    [
        ({"student_scores": torch.rand(3), "teacher_scores": torch.rand(4)}, "same shape"),
        ({"eps": -1e-8}, "eps"),
        ({"eps": 0.0}, "eps"),
        ({"clip": (2.0, 0.5)}, "min <= max"),
        ({"weighting_rule": "log_ratio"}, "weighting_rule"),
        ({"student_scores": torch.tensor([0.5, 1.5, 0.2])}, "student_scores"),
        ({"teacher_scores": torch.tensor([0.5, -0.1, 0.2])}, "teacher_scores"),
        ({"teacher_scores": torch.tensor([0.5, float("nan"), 0.2])}, "teacher_scores"),
    ],
)
def test_validity_weights_reject_bad_input(kwargs, match):
    args = {"student_scores": torch.rand(3), "teacher_scores": torch.rand(3)} | kwargs
    with pytest.raises(ValueError, match=match):
        validity_weights(**args)


# --- PRM-free weight (paper §10.4, spec §2.8) ------------------------------------------------------------------------


@pytest.mark.parametrize("shape, top_k", [((1, 1, 2), 128), ((2, 3, 7), 128), ((2, 4, 300), 128), ((3, 5, 11), 1)])
@pytest.mark.parametrize("scale", [1.0, 8.0])
def test_teacher_prob_weights_match_reference(shape, top_k, scale):
    student, teacher = scale * torch.randn(shape, dtype=F64), scale * torch.randn(shape, dtype=F64)
    ratio = teacher_prob_ratio(student, teacher, top_k=top_k)
    torch.testing.assert_close(ratio, vref.teacher_prob_ratio_ref(student, teacher, top_k))
    weights = teacher_prob_weights(student, teacher, top_k=top_k)
    torch.testing.assert_close(weights, vref.teacher_prob_weights_ref(student, teacher, top_k))


def test_teacher_prob_weights_stay_in_the_clip_and_equal_the_clipped_square_root():
    student, teacher = 10 * torch.randn(4, 50, 64), 10 * torch.randn(4, 50, 64)
    weights = teacher_prob_weights(student, teacher)
    assert weights.min() >= 0.5 and weights.max() <= 2.0
    assert (weights == 0.5).any() and (weights > 0.5).any()  # the bounds are reached, not only approached
    raw = teacher_prob_ratio(student, teacher)
    torch.testing.assert_close(weights, raw.sqrt().clamp(0.5, 2.0))
    torch.testing.assert_close(teacher_prob_weights(student, teacher, gamma=1.0, clip=None), raw)


def test_teacher_prob_ratio_is_at_least_one_where_the_student_greedy_token_is_the_teacher_mode():
    teacher = torch.randn(6, 20, 33)
    student = teacher + 0.1 * torch.randn(6, 20, 33)
    agree = student.argmax(-1) == teacher.argmax(-1)
    assert agree.float().mean() > 0.5
    assert (teacher_prob_ratio(student, teacher)[agree] >= 1.0).all()


def test_teacher_prob_ratio_of_a_uniform_teacher_is_one():
    ratio = teacher_prob_ratio(torch.randn(3, 50), torch.zeros(3, 50), top_k=128)  # V <= k
    torch.testing.assert_close(ratio, torch.ones(3), rtol=1e-6, atol=0)


@pytest.mark.parametrize("hot_logit", [float("inf"), 100.0])
def test_one_hot_teacher_against_another_student_token_gives_the_lower_bound(hot_logit):
    teacher = torch.full((2, 9), -math.inf if hot_logit == math.inf else 0.0)
    teacher[:, 4] = 0.0 if hot_logit == math.inf else hot_logit
    student = torch.zeros(2, 9)
    student[:, 1] = 5.0  # greedy token 1, not the teacher's 4
    torch.testing.assert_close(teacher_prob_weights(student, teacher), torch.full((2,), 0.5))


def test_teacher_prob_ratio_with_k_one_divides_by_the_squared_mode():
    student, teacher = torch.randn(5, 12, dtype=F64), torch.randn(5, 12, dtype=F64)
    p = teacher.softmax(-1)
    expected = p.gather(-1, student.argmax(-1, keepdim=True)).squeeze(-1) / (p.max(-1).values ** 2 + 1e-8)
    torch.testing.assert_close(teacher_prob_ratio(student, teacher, top_k=1), expected)


def test_teacher_prob_weights_carry_no_gradient():
    student, teacher = torch.randn(2, 3, 8, requires_grad=True), torch.randn(2, 3, 8, requires_grad=True)
    assert not teacher_prob_weights(student, teacher).requires_grad


@pytest.mark.parametrize(
    "kwargs, match",
    [
        ({"gamma": -0.5}, "gamma"),
        ({"clip": (2.0, 0.5)}, "clip"),
        ({"clip": (0.0, 2.0)}, "clip"),
        ({"top_k": 0}, "top_k"),
    ],
)
def test_teacher_prob_weights_reject_bad_settings(kwargs, match):
    with pytest.raises(ValueError, match=match):
        teacher_prob_weights(torch.randn(2, 5), torch.randn(2, 5), **kwargs)
    with pytest.raises(ValueError, match="shape"):
        teacher_prob_weights(torch.randn(2, 5), torch.randn(2, 6))


# --- vcrd_loss: Eqs. (2)-(4) -----------------------------------------------------------------------------------------


@pytest.mark.parametrize("reduction", ["seq_mean", "seq_sum"])
@pytest.mark.parametrize(
    "alpha, lambdas", [(0.1, (1.0, 1.0)), (0.1, (2.0, 1.5)), (0.5, (0.0, 2.0)), (0.0, (2.0, 1.0))]
)
@pytest.mark.parametrize("B, T, V", [(1, 1, 2), (3, 5, 7), (4, 9, 31)])
def test_vcrd_loss_matches_reference(B, T, V, alpha, lambdas, reduction):
    skl, srkl = _half(B, T, V), _half(B + 1, T + 2, V)
    kwargs = {"alpha": alpha, "lambda_teacher": lambdas[0], "lambda_student": lambdas[1], "reduction": reduction}
    out = vcrd_loss(*skl, *srkl, **kwargs)
    expected = vref.vcrd_loss_ref(skl, srkl, **kwargs)
    torch.testing.assert_close(out.loss, expected)
    torch.testing.assert_close(out.loss, lambdas[0] * out.lv_skl + lambdas[1] * out.lv_srkl)
    for got, want in zip(_grads(out.loss, skl[0], srkl[0]), _grads(expected, skl[0], srkl[0]), strict=True):
        torch.testing.assert_close(got, want)


def test_vcrd_loss_gradcheck_of_the_skl_term():
    """Finite differences apply to LV-SKL only: SRKL holds its mixture constant (DistiLLM-2), on purpose."""
    skl, srkl = _half(2, 4, 5), _half(2, 3, 5)
    assert torch.autograd.gradcheck(lambda s: vcrd_loss(s, *skl[1:], *srkl, lambda_student=0.0).loss, (skl[0],))


@pytest.mark.parametrize("validity", [0.7, 0.05, 1.0])
def test_equal_validity_gives_the_distillm2_loss(validity):
    skl, srkl = _half(3, 6, 11), _half(3, 8, 11)
    w_T = validity_weights(torch.full((3, 6), validity), torch.full((3, 6), validity))
    w_S = validity_weights(torch.full((3, 8), validity), torch.full((3, 8), validity))
    out = vcrd_loss(*skl[:3], w_T, *srkl[:3], w_S)
    expected = vref.distillm2_loss_ref(skl, srkl)
    torch.testing.assert_close(out.loss, expected, rtol=1e-6, atol=0)
    constant = vcrd_loss(*skl[:3], torch.ones(3, 6), *srkl[:3], torch.ones(3, 8))
    torch.testing.assert_close(constant.loss, expected)


def test_alpha_zero_is_forward_kl_on_teacher_rollouts_and_reverse_kl_on_student_rollouts():
    skl, srkl = _half(3, 5, 13, dtype=torch.float32), _half(2, 7, 13, dtype=torch.float32)
    ones_T, ones_S = torch.ones(3, 5), torch.ones(2, 7)
    only_T = vcrd_loss(*skl[:3], ones_T, *srkl[:3], ones_S, alpha=0.0, lambda_student=0.0).loss
    only_S = vcrd_loss(*skl[:3], ones_T, *srkl[:3], ones_S, alpha=0.0, lambda_teacher=0.0).loss

    def trl_seq_mean(student, teacher, mask, beta):  # TRL GKD per-token loss, then DistiLLM-2's per-sequence mean
        per_token = GKDTrainer.generalized_jsd_loss(student, teacher, beta=beta, reduction="none").sum(-1)
        return ((per_token * mask).sum(-1) / mask.sum(-1).clamp_min(1)).mean()

    torch.testing.assert_close(only_T, trl_seq_mean(skl[0], skl[1], skl[2], beta=0.0))
    torch.testing.assert_close(only_S, trl_seq_mean(srkl[0], srkl[1], srkl[2], beta=1.0))


def test_a_constant_weight_scales_loss_and_gradients_exactly():
    skl, srkl = _half(3, 6, 9), _half(3, 4, 9)
    ones_T, ones_S = torch.ones(3, 6, dtype=F64), torch.ones(3, 4, dtype=F64)
    base = vcrd_loss(*skl[:3], ones_T, *srkl[:3], ones_S).loss
    scaled = vcrd_loss(*skl[:3], 2.5 * ones_T, *srkl[:3], 2.5 * ones_S).loss  # never renormalised by sum(w)
    torch.testing.assert_close(scaled, 2.5 * base)
    for got, want in zip(_grads(scaled, skl[0], srkl[0]), _grads(base, skl[0], srkl[0]), strict=True):
        torch.testing.assert_close(got, 2.5 * want)


def test_lambdas_decouple_the_two_terms_and_enter_linearly():
    skl, srkl = _half(2, 5, 7), _half(2, 6, 7)
    only_T = vcrd_loss(*skl, *srkl, lambda_student=0.0)
    other_srkl = _half(2, 6, 7)
    torch.testing.assert_close(vcrd_loss(*skl, *other_srkl, lambda_student=0.0).loss, only_T.loss)
    assert torch.equal(_grads(only_T.loss, srkl[0])[0], torch.zeros_like(srkl[0]))
    only_S = vcrd_loss(*skl, *srkl, lambda_teacher=0.0)
    torch.testing.assert_close(vcrd_loss(*_half(2, 5, 7), *srkl, lambda_teacher=0.0).loss, only_S.loss)
    both = vcrd_loss(*skl, *srkl, lambda_teacher=2.0, lambda_student=3.0)
    torch.testing.assert_close(both.loss, 2.0 * only_T.loss + 3.0 * only_S.loss)


def test_identical_teacher_and_student_give_zero_loss_and_zero_gradient():
    skl, srkl = _half(2, 5, 9), _half(3, 4, 9)
    same_T = skl[0].detach().clone().requires_grad_()
    same_S = srkl[0].detach().clone().requires_grad_()
    out = vcrd_loss(same_T, skl[0].detach(), *skl[2:], same_S, srkl[0].detach(), *srkl[2:])
    torch.testing.assert_close(out.loss, torch.zeros((), dtype=F64))
    for grad in _grads(out.loss, same_T, same_S):
        torch.testing.assert_close(grad, torch.zeros_like(grad))


def test_weights_are_stop_gradient():
    skl, srkl = _half(2, 5, 7), _half(2, 4, 7)
    w_T, w_S = skl[3].clone().requires_grad_(), srkl[3].clone().requires_grad_()
    out = vcrd_loss(*skl[:3], w_T, *srkl[:3], w_S)
    out.loss.backward()
    assert w_T.grad is None and w_S.grad is None
    detached = vcrd_loss(*skl[:3], skl[3], *srkl[:3], srkl[3]).loss
    for got, want in zip((skl[0].grad, srkl[0].grad), _grads(detached, skl[0], srkl[0]), strict=True):
        torch.testing.assert_close(got, want)
    assert all(not value.requires_grad for value in out.metrics.values())


def test_a_differentiable_judge_output_changes_no_gradient():
    skl, srkl = _half(2, 5, 7), _half(2, 4, 7)
    r_s, r_t = torch.rand(2, 5, dtype=F64, requires_grad=True), torch.rand(2, 5, dtype=F64, requires_grad=True)
    loss = vcrd_loss(*skl[:3], validity_weights(r_s, r_t), *srkl).loss
    expected = vcrd_loss(*skl[:3], validity_weights(r_s.detach(), r_t.detach()), *srkl).loss
    grad_T, grad_S, grad_r_s, grad_r_t = _grads(loss, skl[0], srkl[0], r_s, r_t)
    assert torch.equal(grad_r_s, torch.zeros_like(r_s)) and torch.equal(grad_r_t, torch.zeros_like(r_t))
    for got, want in zip((grad_T, grad_S), _grads(expected, skl[0], srkl[0]), strict=True):
        torch.testing.assert_close(got, want)


def test_masked_positions_do_not_matter():
    skl, srkl = _half(3, 6, 8), _half(3, 5, 8)
    out = vcrd_loss(*skl, *srkl)
    grads = _grads(out.loss, skl[0], srkl[0])

    def perturbed(half):
        student, teacher, mask, weights = half
        noise = torch.where(mask[..., None], 0.0, 50 * torch.randn_like(student))
        student2 = (student.detach() + noise).requires_grad_()
        weights2 = torch.where(mask, weights, torch.tensor(float("nan"), dtype=F64))
        return student2, teacher + noise, mask, weights2

    skl2, srkl2 = perturbed(skl), perturbed(srkl)
    out2 = vcrd_loss(*skl2, *srkl2)
    torch.testing.assert_close(out2.loss, out.loss)
    for got, want in zip(_grads(out2.loss, skl2[0], srkl2[0]), grads, strict=True):
        torch.testing.assert_close(got, want)


def test_an_all_masked_batch_gives_zero_not_nan():
    skl, srkl = _half(2, 4, 5), _half(2, 3, 5)
    out = vcrd_loss(*skl[:2], torch.zeros(2, 4, dtype=torch.bool), skl[3], *srkl[:2], torch.zeros(2, 3), srkl[3])
    assert out.loss.item() == 0.0
    assert all(torch.equal(g, torch.zeros_like(g)) for g in _grads(out.loss, skl[0], srkl[0]))
    assert all(math.isfinite(v.item()) and v.item() == 0.0 for v in out.metrics.values())


def test_example_order_and_duplicates_leave_the_loss_unchanged():
    skl, srkl = _half(3, 6, 7), _half(3, 5, 7)
    skl[2][:] = True  # no empty row: an empty row counts in the batch mean, so duplicating it would change it
    srkl[2][:] = True
    loss = vcrd_loss(*skl, *srkl).loss
    order = torch.tensor([2, 0, 1])
    torch.testing.assert_close(vcrd_loss(*(x[order] for x in skl), *(x[order] for x in srkl)).loss, loss)
    one = vcrd_loss(*(x[:1] for x in skl), *(x[:1] for x in srkl)).loss
    twice = vcrd_loss(*(x[[0, 0]] for x in skl), *(x[[0, 0]] for x in srkl)).loss
    torch.testing.assert_close(twice, one)


def test_skew_terms_are_bounded_by_minus_log_alpha():
    student, teacher = 30 * torch.randn(4, 1, 16, dtype=F64), 30 * torch.randn(4, 1, 16, dtype=F64)
    mask, ones = torch.ones(4, 1, dtype=torch.bool), torch.ones(4, 1, dtype=F64)
    out = vcrd_loss(student, teacher, mask, ones, student, teacher, mask, ones, alpha=0.1)
    assert 0.0 <= out.lv_skl.item() <= -math.log(0.1) and 0.0 <= out.lv_srkl.item() <= -math.log(0.1)
    assert vcrd_loss(student, teacher, mask, ones, student, teacher, mask, ones, alpha=1.0).loss.item() == 0.0


def test_vcrd_loss_metrics():
    skl, srkl = _half(3, 6, 7), _half(3, 5, 7)
    skl[3][0, 1:3] = 0.0
    out = vcrd_loss(*skl, *srkl)
    valid_w = skl[3][skl[2]]
    torch.testing.assert_close(out.metrics["teacher_weight_mean"], valid_w.mean())
    torch.testing.assert_close(out.metrics["teacher_weight_std"], valid_w.std(correction=0))
    torch.testing.assert_close(out.metrics["teacher_weight_max"], valid_w.max())
    torch.testing.assert_close(out.metrics["student_weight_min"], srkl[3][srkl[2]].min())
    torch.testing.assert_close(out.metrics["teacher_weight_ge1_frac"], (valid_w >= 1).double().mean().float())
    torch.testing.assert_close(out.metrics["teacher_weight_zero_frac"], (valid_w == 0).double().mean().float())
    torch.testing.assert_close(out.metrics["skl_mean"], skew_kl(skl[0], skl[1]).detach()[skl[2]].mean())


@pytest.mark.parametrize(
    "change, match",
    [
        (lambda a: a.__setitem__(2, torch.ones(3, 4, dtype=torch.bool)), "skl_mask"),
        (lambda a: a.__setitem__(3, torch.ones(3, 6)), "skl_weights"),
        (lambda a: a.__setitem__(1, torch.randn(3, 5, 8, dtype=F64)), "skl_student_logits"),
        (lambda a: a.__setitem__(5, torch.randn(3, 5, 6, dtype=F64)), "srkl_student_logits"),
    ],
)
def test_vcrd_loss_rejects_bad_shapes(change, match):
    args = [*_half(3, 5, 7), *_half(3, 5, 7)]
    change(args)
    with pytest.raises(ValueError, match=match):
        vcrd_loss(*args)


def test_vcrd_loss_rejects_bad_settings():
    args = [*_half(2, 3, 5), *_half(2, 3, 5)]
    with pytest.raises(ValueError, match="reduction"):
        vcrd_loss(*args, reduction="batch_mean")
    with pytest.raises(ValueError, match="λ"):
        vcrd_loss(*args, lambda_student=-1.0)
    with pytest.raises(ValueError, match="alpha"):
        vcrd_loss(*args, alpha=1.5)


# --- token coefficients: the same loss through the chunked kernel --------------------------------------------------


def _chunked_term(hidden, teacher_hidden, mask, weights, student_head, teacher_head, **kwargs):
    """One VCRD term through `chunked_distill_loss`, with the token coefficients as its token weights."""
    H = hidden.shape[-1]
    token_weights = vcrd_token_coefficients(weights, mask, coef=kwargs.pop("coef"), reduction=kwargs.pop("reduction"))
    flat = (
        hidden.reshape(-1, H),
        student_head,
        teacher_hidden.reshape(-1, H),
        teacher_head,
        token_weights.reshape(-1),
    )
    return chunked_distill_loss(*flat, chunk_size=4, **kwargs)


@pytest.mark.parametrize("reduction", ["seq_mean", "seq_sum"])
def test_token_coefficients_give_the_loss_through_the_chunked_kernel(reduction):
    B, T, H, V = 3, 6, 8, 17
    heads = (torch.randn(V, H, dtype=F64, requires_grad=True), torch.randn(V, H, dtype=F64))
    h_T, h_S = (torch.randn(B, rows, H, dtype=F64, requires_grad=True) for rows in (T, T - 2))
    g_T, g_S = torch.randn(B, T, H, dtype=F64), torch.randn(B, T - 2, H, dtype=F64)
    (m_T, w_T), (m_S, w_S) = ((_mask(B, rows), 3 * torch.rand(B, rows, dtype=F64)) for rows in (T, T - 2))
    logits_T = (h_T @ heads[0].T, g_T @ heads[1].T)
    logits_S = (h_S @ heads[0].T, g_S @ heads[1].T)
    settings = {"alpha": 0.1, "reduction": reduction}
    out = vcrd_loss(*logits_T, m_T, w_T, *logits_S, m_S, w_S, lambda_teacher=2.0, lambda_student=1.5, **settings)
    chunked = _chunked_term(h_T, g_T, m_T, w_T, *heads, divergence="skew_kl", coef=2.0, **settings)
    chunked = chunked + _chunked_term(h_S, g_S, m_S, w_S, *heads, divergence="skew_reverse_kl", coef=1.5, **settings)
    torch.testing.assert_close(chunked, out.loss)
    wrt = (h_T, h_S, heads[0])
    for got, want in zip(_grads(chunked, *wrt), _grads(out.loss, *wrt), strict=True):
        torch.testing.assert_close(got, want)


def test_token_coefficients_are_detached_and_zero_on_masked_tokens():
    weights = torch.rand(3, 4, requires_grad=True)
    mask = torch.tensor([[1, 1, 0, 0], [0, 0, 0, 0], [1, 1, 1, 1]], dtype=torch.bool)
    coef = vcrd_token_coefficients(weights, mask, coef=2.0)
    assert not coef.requires_grad and torch.equal(coef[~mask], torch.zeros(int((~mask).sum())))
    torch.testing.assert_close(coef[0, :2], 2.0 * weights.detach()[0, :2] / 2 / 3)
    torch.testing.assert_close(coef[2], 2.0 * weights.detach()[2] / 4 / 3)
    torch.testing.assert_close(vcrd_token_coefficients(weights, mask, reduction="seq_sum")[2], weights.detach()[2] / 3)


# --- weight_stats ----------------------------------------------------------------------------------------------------


def test_weight_stats_clipped_fraction_and_empty_mask():
    weights = torch.tensor([[0.5, 1.0, 2.0, 1.3], [0.7, 2.0, 9.0, 9.0]])
    mask = torch.tensor([[1, 1, 1, 1], [1, 1, 0, 0]], dtype=torch.bool)
    stats = weight_stats(weights, mask, clip=(0.5, 2.0))
    assert stats["clipped_frac"].item() == pytest.approx(3 / 6)
    assert stats["ge1_frac"].item() == pytest.approx(4 / 6)
    assert stats["max"].item() == 2.0 and stats["min"].item() == 0.5
    assert weight_stats(weights, mask, clip=(None, 2.0))["clipped_frac"].item() == pytest.approx(2 / 6)
    empty = weight_stats(weights, torch.zeros_like(mask), clip=(0.5, 2.0))
    assert all(value.item() == 0.0 for value in empty.values())
