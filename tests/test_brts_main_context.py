"""The released launchers' L_S teacher context (spec §2.11) against the float64 references of `reference_brts.py`:
the top-K reverse KL with the teacher read on another context (log-prob 0 where it does not reach), and the overlap
that picks the context."""

import pytest
import reference_brts as ref_brts
import torch

from trl_reasoning_distill.brts import student_context_loss, student_topk_rkl, topk_overlap

F64 = torch.float64


@pytest.mark.parametrize("temperature", [1.0, 1.7])
@pytest.mark.parametrize("weight_mode", ["student_p", "teacher_p", "none"])
@pytest.mark.parametrize("shape, K", [((1, 2), 1), ((3, 7), 3), ((2, 4, 12), 5)])
def test_teacher_on_another_context_matches_reference(shape, K, weight_mode, temperature):
    torch.manual_seed(0)
    student = (2 * torch.randn(*shape, dtype=F64)).requires_grad_()
    selected_teacher = 2 * torch.randn(*shape, dtype=F64)
    available = torch.rand(shape[:-1]) < 0.6
    available.view(-1)[-1] = False  # a position past the selected rollout: log-prob 0 from padding
    value = student_topk_rkl(student, selected_teacher, top_k=K, weight_mode=weight_mode, temperature=temperature,
                             teacher_available=available)
    expected, expected_grad = ref_brts.student_topk_rkl_ref(student, selected_teacher, K, weight_mode, temperature,
                                                            available=available)
    torch.testing.assert_close(value, expected)
    upstream = torch.randn(value.shape, dtype=F64)
    (grad,) = torch.autograd.grad(value, student, grad_outputs=upstream)
    torch.testing.assert_close(grad, upstream[..., None] * expected_grad)
    plain = student_topk_rkl(student, selected_teacher, top_k=K, weight_mode=weight_mode, temperature=temperature)
    assert not torch.allclose(value, plain)  # the unavailable positions changed


def test_loss_with_another_context_is_its_token_mean():
    torch.manual_seed(1)
    student = (2 * torch.randn(2, 5, 9, dtype=F64)).requires_grad_()
    teacher = 2 * torch.randn(2, 5, 9, dtype=F64)
    mask, available = torch.rand(2, 5) < 0.8, torch.rand(2, 5) < 0.5
    mask[0, 0] = True
    loss = student_context_loss(student, teacher, mask, top_k=4, teacher_available=available)
    values, grads = ref_brts.student_topk_rkl_ref(student, teacher, 4, available=available)
    expected, expected_grad = ref_brts.token_mean_ref(values, grads, mask)
    torch.testing.assert_close(loss, expected)
    torch.testing.assert_close(torch.autograd.grad(loss, student)[0], expected_grad)
    with pytest.raises(ValueError, match="topk_rkl"):
        student_context_loss(student, teacher, mask, estimator="full_rkl", teacher_available=available)


@pytest.mark.parametrize("with_available", [False, True])
def test_topk_overlap_matches_reference(with_available):
    torch.manual_seed(2)
    student_ids = torch.stack([torch.randperm(10)[:4] for _ in range(15)]).reshape(3, 5, 4)
    teacher_ids = torch.stack([torch.randperm(10)[:4] for _ in range(15)]).reshape(3, 5, 4)
    mask = torch.rand(3, 5) < 0.7
    available = torch.rand(3, 5) < 0.5 if with_available else None
    hits, slots = topk_overlap(student_ids, teacher_ids, mask, available)
    assert (hits.item(), slots.item()) == ref_brts.topk_overlap_ref(student_ids, teacher_ids, mask, available)
    same, all_slots = topk_overlap(student_ids, student_ids, mask)
    assert same == all_slots == 4 * mask.sum()  # a teacher with the student's top-K overlaps fully
