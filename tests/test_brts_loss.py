"""BRTS loss pieces against the float64 references of `tests/reference_brts.py` (spec §2.3, §2.9, §2.10, §9)."""

import pytest
import reference as ref
import reference_brts as ref_brts
import torch

from trl_reasoning_distill.brts import (
    brts_loss,
    student_context_loss,
    student_topk_rkl,
    teacher_context_loss,
    teacher_topk,
    teacher_topk_fkl,
    teacher_topk_fkl_chunked,
)
from trl_reasoning_distill.divergence import reverse_kl

F64 = torch.float64


def _grad(value: torch.Tensor, wrt: torch.Tensor, upstream: torch.Tensor | None = None) -> torch.Tensor:
    (grad,) = torch.autograd.grad(value, wrt, grad_outputs=upstream, retain_graph=True)
    return grad


def _logits(*shape: int) -> torch.Tensor:
    return (2 * torch.randn(*shape, dtype=F64)).requires_grad_()


def _mask(*shape: int) -> torch.Tensor:
    mask = torch.rand(*shape) < 0.7
    mask.view(-1)[0] = True
    return mask


SHAPES_K = [((1, 2), 1), ((3, 7), 3), ((2, 3, 20), 16), ((4, 5), 5), ((2, 1, 9), 4)]


# --- student-context top-K reverse KL (spec §2.3) --------------------------------------------------------------------


@pytest.mark.parametrize("temperature", [1.0, 2.0])
@pytest.mark.parametrize("weight_mode", ["student_p", "teacher_p", "none"])
@pytest.mark.parametrize("shape, K", SHAPES_K)
def test_student_topk_rkl_matches_reference(shape, K, weight_mode, temperature):
    student, teacher = _logits(*shape), 2 * torch.randn(*shape, dtype=F64)
    value = student_topk_rkl(student, teacher, top_k=K, weight_mode=weight_mode, temperature=temperature)
    expected, expected_grad = ref_brts.student_topk_rkl_ref(student, teacher, K, weight_mode, temperature)
    torch.testing.assert_close(value, expected)
    upstream = torch.rand(shape[:-1], dtype=F64)
    torch.testing.assert_close(_grad(value, student, upstream), upstream[..., None] * expected_grad)


def test_student_topk_rkl_weights_and_advantage_are_fixed_before_the_update():
    student, teacher = _logits(6, 10), torch.randn(6, 10, dtype=F64)
    value = student_topk_rkl(student, teacher, top_k=4)
    ids = student.detach().topk(4, dim=-1).indices
    logq, logp = student.log_softmax(-1).gather(-1, ids), teacher.log_softmax(-1).gather(-1, ids)
    old = logq.detach()
    advantage = -(old.softmax(-1) * (old - logp))  # spec §2.3 step 4, from the no-grad forward
    ppo = (-advantage * torch.exp(logq - old)).sum(-1)  # step 5: -A · ratio with old = current.detach()
    surrogate = ((old.softmax(-1) * (old - logp)) * logq).sum(-1)  # the TRL form of step 6
    torch.testing.assert_close(value, ppo)
    grad = _grad(value.sum(), student)
    torch.testing.assert_close(grad, _grad(ppo.sum(), student))
    torch.testing.assert_close(grad, _grad(surrogate.sum(), student))
    through_weights = (logq.softmax(-1) * (logq - logp)).sum(-1)  # same value, weights NOT detached
    torch.testing.assert_close(value, through_weights)
    assert not torch.allclose(grad, _grad(through_weights.sum(), student))


def test_student_topk_rkl_over_the_whole_vocabulary_is_the_reverse_kl():
    student, teacher = _logits(3, 4, 8), torch.randn(3, 4, 8, dtype=F64)
    value = student_topk_rkl(student, teacher, top_k=8)
    exact = ref.reverse_kl_ref(student, teacher)
    torch.testing.assert_close(value, exact)
    torch.testing.assert_close(_grad(value.sum(), student), _grad(exact.sum(), student))


def test_student_topk_rkl_uses_the_stored_candidate_set():
    student, teacher = _logits(5, 12), torch.randn(5, 12, dtype=F64)
    stored = student.detach().topk(3, dim=-1).indices  # the pre-update forward
    assert torch.equal(
        student_topk_rkl(student, teacher, topk_ids=stored), student_topk_rkl(student, teacher, top_k=3)
    )
    other = student.detach().topk(6, dim=-1).indices[:, 3:]  # a different set changes the estimate
    assert not torch.allclose(
        student_topk_rkl(student, teacher, topk_ids=other), student_topk_rkl(student, teacher, top_k=3)
    )
    grad = _grad(student_topk_rkl(student, teacher, topk_ids=other).sum(), student)
    assert grad.abs().sum() > 0


def test_teacher_receives_no_gradient_and_half_precision_computes_in_float32():
    student = torch.randn(2, 5, 11).bfloat16().requires_grad_()
    teacher = torch.randn(2, 5, 11).bfloat16().requires_grad_()
    mask = _mask(2, 5)
    for loss in (
        student_context_loss(student, teacher, mask, top_k=4),
        teacher_context_loss(student, teacher, mask, top_k=4),
    ):
        assert loss.dtype == torch.float32
        grad_student, grad_teacher = torch.autograd.grad(loss, (student, teacher), allow_unused=True)
        assert grad_teacher is None and grad_student.abs().sum() > 0


# --- teacher-context top-K forward KL (spec §2.9) --------------------------------------------------------------------


@pytest.mark.parametrize("temperature", [1.0, 2.0])
@pytest.mark.parametrize("shape, K", SHAPES_K)
def test_teacher_topk_fkl_matches_reference(shape, K, temperature):
    student, teacher = _logits(*shape), 2 * torch.randn(*shape, dtype=F64)
    ids, logprobs = teacher_topk(teacher, K, temperature)
    assert torch.equal(ids, teacher.topk(K, dim=-1).indices)  # spec §9 item 4: the stored ids are torch.topk's
    torch.testing.assert_close(logprobs, (teacher / temperature).log_softmax(-1).gather(-1, ids))
    value = teacher_topk_fkl(student, ids, logprobs, temperature=temperature)
    expected, expected_grad = ref_brts.teacher_topk_fkl_ref(student, teacher, K, temperature)
    torch.testing.assert_close(value, expected)
    upstream = torch.rand(shape[:-1], dtype=F64)
    torch.testing.assert_close(_grad(value, student, upstream), upstream[..., None] * expected_grad)


def test_same_model_gives_zero_losses_and_the_truncated_gradient():
    logits, V = _logits(4, 6, 10), 10
    mask = _mask(4, 6)
    for loss in (
        student_context_loss(logits, logits.detach(), mask, top_k=V),
        teacher_context_loss(logits, logits.detach(), mask, top_k=V),
    ):  # spec §9 item 2, K = |V|: value and gradient 0
        torch.testing.assert_close(loss, torch.zeros((), dtype=F64))
        torch.testing.assert_close(_grad(loss, logits), torch.zeros_like(logits))
    per_token = teacher_topk_fkl(logits, *teacher_topk(logits, 3))  # K < |V|: value 0, gradient -∇ log q(TopK)
    torch.testing.assert_close(per_token, torch.zeros(4, 6, dtype=F64))
    ids = logits.detach().topk(3, dim=-1).indices
    log_mass = logits.log_softmax(-1).gather(-1, ids).logsumexp(-1)
    expected = _grad(-log_mass.sum(), logits)
    torch.testing.assert_close(_grad(per_token.sum(), logits), expected)
    assert expected.abs().sum() > 0.1


@pytest.mark.parametrize("temperature", [1.0, 2.0])
def test_chunked_teacher_context_equals_the_logits_level_term(temperature):
    N, H, V, K = 13, 6, 17, 4
    hidden = torch.randn(N, H, dtype=F64, requires_grad=True)
    head = torch.randn(V, H, dtype=F64, requires_grad=True)
    ids, logprobs = teacher_topk(2 * torch.randn(N, V, dtype=F64), K, temperature)
    mask = _mask(N)
    chunked = teacher_topk_fkl_chunked(hidden, head, ids, logprobs, mask=mask, temperature=temperature, chunk_size=5)
    dense = torch.where(mask, teacher_topk_fkl(hidden @ head.T, ids, logprobs, temperature=temperature), 0.0)
    torch.testing.assert_close(chunked, dense)
    upstream = torch.rand(N, dtype=F64)
    for wrt in (hidden, head):
        torch.testing.assert_close(_grad(chunked, wrt, upstream), _grad(dense, wrt, upstream))
    unmasked = teacher_topk_fkl_chunked(hidden, head, ids, logprobs, temperature=temperature)
    torch.testing.assert_close(unmasked, teacher_topk_fkl(hidden @ head.T, ids, logprobs, temperature=temperature))


# --- the combined objective (spec §2.10, §9 items 1, 14, 15, 18) -----------------------------------------------------


def _batch(B=3, T=5, V=20, T_sel=7):
    return (
        _logits(B, T, V),
        torch.randn(B, T, V, dtype=F64),
        _mask(B, T),
        _logits(B, T_sel, V),
        torch.randn(B, T_sel, V, dtype=F64),
        _mask(B, T_sel),
    )


def test_brts_loss_matches_reference_values_and_gradients():
    student, teacher, mask, sel_student, sel_teacher, sel_mask = _batch()
    out = brts_loss(student, teacher, mask, sel_student, sel_teacher, sel_mask, teacher_context_coef=0.3, top_k=4)
    s_value, s_grad = ref_brts.token_mean_ref(*ref_brts.student_topk_rkl_ref(student, teacher, 4), mask)
    t_value, t_grad = ref_brts.token_mean_ref(*ref_brts.teacher_topk_fkl_ref(sel_student, sel_teacher, 4), sel_mask)
    torch.testing.assert_close(out.student_context, s_value)
    torch.testing.assert_close(out.teacher_context, t_value)  # its own mask's mean: the branches are not pooled
    torch.testing.assert_close(out.loss, s_value + 0.3 * t_value)
    grad_student, grad_selected = torch.autograd.grad(out.loss, (student, sel_student))
    torch.testing.assert_close(grad_student, s_grad)
    torch.testing.assert_close(grad_selected, 0.3 * t_grad)
    assert out.metrics == pytest.approx({"student_context": s_value.item(), "teacher_context": t_value.item()})


def test_lambda_zero_or_no_selected_rollout_is_exactly_plain_opd():
    student, teacher, mask, sel_student, sel_teacher, sel_mask = _batch()
    opd = student_context_loss(student, teacher, mask)
    opd_grad = _grad(opd, student)
    for out in (
        brts_loss(student, teacher, mask),
        brts_loss(student, teacher, mask, sel_student, sel_teacher, sel_mask, teacher_context_coef=0.0),
    ):
        assert torch.equal(out.loss, opd)
        assert torch.equal(_grad(out.loss, student), opd_grad)
    out = brts_loss(student, teacher, mask, sel_student, sel_teacher, sel_mask, teacher_context_coef=0.0)
    assert not out.teacher_context.requires_grad and out.teacher_context > 0  # still computed, for logging
    expected, _ = ref_brts.token_mean_ref(*ref_brts.student_topk_rkl_ref(student, teacher, 16), mask)
    torch.testing.assert_close(opd, expected)


def test_loss_is_linear_in_lambda():
    batch = _batch()
    base = brts_loss(*batch, teacher_context_coef=0.0)
    unit = brts_loss(*batch, teacher_context_coef=1.0)
    for coef in (0.05, 0.5, 2.0):
        out = brts_loss(*batch, teacher_context_coef=coef)
        torch.testing.assert_close(out.loss - base.loss, coef * out.teacher_context)
        torch.testing.assert_close(_grad(out.loss, batch[3]), coef * _grad(unit.loss, batch[3]))
        torch.testing.assert_close(_grad(out.loss, batch[0]), _grad(base.loss, batch[0]))


def test_masked_positions_do_not_change_either_loss():
    student, teacher, mask, sel_student, sel_teacher, sel_mask = _batch()
    out = brts_loss(student, teacher, mask, sel_student, sel_teacher, sel_mask)
    noisy = [
        torch.where(m[..., None], x.detach(), 50 * torch.randn_like(x.detach()))
        for x, m in ((student, mask), (teacher, mask), (sel_student, sel_mask), (sel_teacher, sel_mask))
    ]
    moved = brts_loss(noisy[0], noisy[1], mask, noisy[2], noisy[3], sel_mask)
    torch.testing.assert_close(moved.loss, out.loss.detach())


def test_global_token_counts_scale_each_branch_separately():
    student, teacher, mask, sel_student, sel_teacher, sel_mask = _batch()
    local = brts_loss(student, teacher, mask, sel_student, sel_teacher, sel_mask, teacher_context_coef=1.0)
    scaled = brts_loss(
        student,
        teacher,
        mask,
        sel_student,
        sel_teacher,
        sel_mask,
        teacher_context_coef=1.0,
        num_items_in_batch=2 * mask.sum(),
        selected_num_items=4 * sel_mask.sum().item(),
        num_processes=2,
    )
    torch.testing.assert_close(scaled.student_context, local.student_context)
    torch.testing.assert_close(scaled.teacher_context, local.teacher_context / 2)


def test_full_rkl_estimator_is_the_exact_reverse_kl():
    student, teacher, mask, *_ = _batch()
    loss = student_context_loss(student, teacher, mask, estimator="full_rkl")
    expected = ref.masked_mean_ref(ref.reverse_kl_ref(student, teacher), mask)
    torch.testing.assert_close(loss, expected)
    torch.testing.assert_close(_grad(loss, student), _grad(expected, student))
    torch.testing.assert_close(loss, (reverse_kl(student, teacher) * mask).sum() / mask.sum())


def test_teacher_context_student_topk_mode_is_the_section_2_3_estimator_on_the_teacher_context():
    _, _, _, sel_student, sel_teacher, sel_mask = _batch()
    loss = teacher_context_loss(sel_student, sel_teacher, sel_mask, mode="student_topk_rkl", top_k=5)
    torch.testing.assert_close(loss, student_context_loss(sel_student, sel_teacher, sel_mask, top_k=5))


def test_one_sgd_step_moves_each_branch_the_right_way():
    student, teacher, mask, sel_student, sel_teacher, sel_mask = _batch(B=4, T=6, V=13)
    ids, logprobs = teacher_topk(sel_teacher, 4)
    weights = logprobs.softmax(-1)

    def teacher_top_k_fit(logits):  # sum_v w^T log q(v | c'_t) over the valid tokens
        return ((weights * logits.log_softmax(-1).gather(-1, ids)).sum(-1) * sel_mask).sum()

    step = _grad(teacher_context_loss(sel_student, sel_teacher, sel_mask, top_k=4), sel_student)
    assert teacher_top_k_fit(sel_student.detach() - 0.1 * step) > teacher_top_k_fit(sel_student.detach())
    stored = student.detach().topk(4, dim=-1).indices
    before = student_context_loss(student, teacher, mask, topk_ids=stored)
    after = student_context_loss(student.detach() - 0.1 * _grad(before, student), teacher, mask, topk_ids=stored)
    assert after < before


def test_bad_inputs_raise_value_errors_naming_the_problem():
    student, teacher, mask, sel_student, sel_teacher, sel_mask = _batch()
    ids, logprobs = teacher_topk(teacher, 3)
    cases = [
        (lambda: student_topk_rkl(student, teacher[..., :5]), "vocabulary"),
        (lambda: student_context_loss(student, teacher, mask[:, :2]), "mask"),
        (lambda: student_topk_rkl(student, teacher, top_k=21), "top_k"),
        (lambda: student_topk_rkl(student, teacher, top_k=0), "top_k"),
        (lambda: student_topk_rkl(student, teacher, weight_mode="student"), "weight_mode"),
        (lambda: student_topk_rkl(student, teacher, temperature=0.0), "temperature"),
        (lambda: student_topk_rkl(student, teacher, topk_ids=torch.full((3, 5, 2), 20)), "topk_ids"),
        (lambda: student_topk_rkl(student, teacher, topk_ids=torch.zeros(3, 4, 2, dtype=torch.long)), "topk_ids"),
        (lambda: student_context_loss(student, teacher, mask, estimator="rkl"), "estimator"),
        (lambda: teacher_context_loss(sel_student, sel_teacher, sel_mask, mode="student_p"), "mode"),
        (lambda: teacher_topk_fkl(student, ids, logprobs[..., :2]), "shape"),
        (lambda: teacher_topk_fkl(student, ids.float(), logprobs), "teacher_topk_ids"),
        (lambda: brts_loss(student, teacher, mask, sel_student), "selected_teacher_logits"),
        (lambda: brts_loss(student, teacher, mask, teacher_context_coef=-0.1), "teacher_context_coef"),
    ]
    for call, message in cases:
        with pytest.raises(ValueError, match=message):
            call()
