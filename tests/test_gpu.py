"""CUDA checks, skipped without a CUDA device (conftest): the chunked loss computed on the GPU in float32 and bfloat16
against the full-logit float64 reference of `divergence.py` (values and gradients), and a 2-step `KDTrainer` run on the
toy models whose losses match the CPU run's.

The trainer and the toy models are imported inside the tests, so that collecting this file (benchmarks/gpu_check.py
runs `pytest -m gpu` on it) stays quick where the tests are skipped."""

import pytest
import torch
from conftest import CPU_TRAINING

from trl_reasoning_distill.chunked import chunked_distill_loss
from trl_reasoning_distill.divergence import DIVERGENCES, per_token_divergence

pytestmark = pytest.mark.gpu

N, H, H_T, V = 301, 64, 48, 1000  # several chunks of 64 rows, the last one short
DTYPES = [pytest.param(torch.float32, 1e-4, id="fp32"), pytest.param(torch.bfloat16, 2e-2, id="bf16")]


def _inputs(num, hidden, teacher_hidden, vocab, dtype, seed=0):
    """Student/teacher hidden states and heads on CUDA in `dtype` (logits of unit scale), and token weights with
    zeros; made on the CPU from one seed."""
    generator = torch.Generator().manual_seed(seed)

    def randn(*shape, scale=1.0):
        return (torch.randn(*shape, generator=generator) * scale).to("cuda", dtype)

    student_hidden_NH = randn(num, hidden).requires_grad_()
    student_head_VH = randn(vocab, hidden, scale=2.0 / hidden**0.5).requires_grad_()
    teacher_hidden_NH = randn(num, teacher_hidden)
    teacher_head_VH = randn(vocab, teacher_hidden, scale=2.0 / teacher_hidden**0.5)
    weights_N = torch.rand(num, generator=generator)
    weights_N[::7] = 0.0
    return (student_hidden_NH, student_head_VH, teacher_hidden_NH, teacher_head_VH), weights_N.cuda()


def _reference(inputs, weights_N, name, **coefficients):
    """The weighted sum from full float64 logits on the CPU, from the very values the GPU saw, and its gradients
    for the student's hidden states and head."""
    student_hidden_NH, student_head_VH = (x.detach().cpu().double().requires_grad_() for x in inputs[:2])
    teacher_NV = inputs[2].cpu().double() @ inputs[3].cpu().double().T
    div_N = per_token_divergence(name, student_hidden_NH @ student_head_VH.T, teacher_NV, **coefficients)
    loss = (weights_N.cpu().double() * div_N).sum()
    return loss.detach(), torch.autograd.grad(loss, (student_hidden_NH, student_head_VH))


def _relative_error(actual: torch.Tensor, expected: torch.Tensor) -> float:
    actual = actual.detach().cpu().double()
    return ((actual - expected).norm() / expected.norm().clamp_min(1e-30)).item()


@pytest.mark.parametrize("dtype, tol", DTYPES)
@pytest.mark.parametrize("name", DIVERGENCES)
def test_chunked_loss_on_cuda_matches_float64_reference(name, dtype, tol):
    inputs, weights_N = _inputs(N, H, H_T, V, dtype)
    coefficients = {"beta": 0.3, "alpha": 0.2, "temperature": 1.5}
    loss = chunked_distill_loss(*inputs, weights_N, divergence=name, chunk_size=64, **coefficients)
    grads = torch.autograd.grad(loss, inputs[:2])
    expected, expected_grads = _reference(inputs, weights_N, name, **coefficients)
    assert loss.device.type == "cuda" and loss.dtype == torch.float32
    assert [grad.dtype for grad in grads] == [dtype, dtype]
    assert _relative_error(loss, expected) < tol
    for grad, expected_grad in zip(grads, expected_grads, strict=True):
        assert _relative_error(grad, expected_grad) < tol


def test_chunked_loss_on_cuda_at_qwen_vocabulary_bf16():
    """Qwen2.5's 151,936 rows with the default chunk size (256 MiB buffers), as in training."""
    inputs, weights_N = _inputs(64, 256, 192, 151936, torch.bfloat16, seed=1)
    loss = chunked_distill_loss(*inputs, weights_N)
    grads = torch.autograd.grad(loss, inputs[:2])
    expected, expected_grads = _reference(inputs, weights_N, "generalized_jsd", beta=0.5)
    assert _relative_error(loss, expected) < 2e-2
    for grad, expected_grad in zip(grads, expected_grads, strict=True):
        assert _relative_error(grad, expected_grad) < 2e-2


def _two_step_losses(tmp_path, tokenizer, device: str, bf16: bool) -> list[float]:
    """The loss of each of 2 off-policy steps of `KDTrainer` on the toy models (same seeds, same data order)."""
    from test_kd_trainer import toy_rows

    from trl_reasoning_distill.kd_config import KDConfig
    from trl_reasoning_distill.kd_trainer import KDTrainer
    from trl_reasoning_distill.toy.models import build_student, build_teacher

    class RecordingKDTrainer(KDTrainer):
        def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
            loss = super().compute_loss(model, inputs, return_outputs, num_items_in_batch)
            self.recorded.append((loss[0] if return_outputs else loss).item())
            return loss

    settings = {**CPU_TRAINING, "use_cpu": device == "cpu", "bf16": bf16}
    args = KDConfig(output_dir=str(tmp_path / device), max_steps=2, per_device_train_batch_size=4, max_length=128,
                    lmbda=0.0, learning_rate=1e-3, **settings)  # fmt: skip
    student, teacher = build_student(tokenizer, seed=1), build_teacher(tokenizer, seed=2)
    trainer = RecordingKDTrainer(model=student, teacher_model=teacher, args=args, train_dataset=toy_rows(),
                                 processing_class=tokenizer)
    trainer.recorded = []
    trainer.train()
    assert trainer.model.device.type == device and trainer.teacher_model.device.type == device
    return trainer.recorded


@pytest.mark.parametrize("bf16, rel", [(False, 1e-4), (True, 3e-2)], ids=["fp32", "bf16"])
def test_kd_trainer_two_steps_on_cuda_match_cpu(tmp_path, tokenizer, bf16, rel):
    cpu = _two_step_losses(tmp_path, tokenizer, "cpu", bf16=False)
    cuda = _two_step_losses(tmp_path, tokenizer, "cuda", bf16=bf16)
    assert len(cpu) == len(cuda) == 2
    assert cuda == pytest.approx(cpu, rel=rel)
