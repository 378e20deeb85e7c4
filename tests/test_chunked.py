"""`chunked.py` against `divergence.py` on full logits (values and gradients), and the top-k teacher against a naive
reference written here from its definition. Sizes are tiny and odd so that chunks rarely divide the tokens."""

import pytest
import torch

from trl_reasoning_distill.chunked import (
    chunked_cross_entropy,
    chunked_distill_loss,
    chunked_distill_loss_topk,
    chunked_logits,
    chunked_topk,
    default_chunk_size,
)
from trl_reasoning_distill.divergence import DIVERGENCES, entropy, per_token_divergence

N, H, H_T, V = 13, 8, 6, 11
COEFFICIENTS = [  # (beta, alpha): interior values, then both endpoints
    pytest.param(0.3, 0.2, id="interior"),
    pytest.param(0.0, 0.0, id="zero"),
    pytest.param(1.0, 1.0, id="one"),
]
FP32 = {"atol": 1e-5, "rtol": 1e-5}
BF16 = {"atol": 1e-2, "rtol": 1e-2}


def _inputs(dtype=torch.float32, num=N, student_vocab=V, teacher_vocab=V):
    """Random student/teacher hidden states and heads; the student's require grad."""
    student_hidden_NH = torch.randn(num, H, dtype=dtype).requires_grad_()
    student_head_VH = torch.randn(student_vocab, H, dtype=dtype).requires_grad_()
    teacher_hidden_NH = torch.randn(num, H_T, dtype=dtype)
    teacher_head_VH = torch.randn(teacher_vocab, H_T, dtype=dtype)
    return student_hidden_NH, student_head_VH, teacher_hidden_NH, teacher_head_VH


def _reference(inputs, name, beta, alpha, temperature, vocab=V):
    """Per-token divergence and entropy from `divergence.py` on full float64 logits, differentiable w.r.t. the
    student's float64 copies, which are returned as well."""
    student_hidden_NH, student_head_VH = (x.detach().double().requires_grad_() for x in inputs[:2])
    student_NV = student_hidden_NH @ student_head_VH[:vocab].T
    teacher_NV = inputs[2].double() @ inputs[3].double()[:vocab].T
    kwargs = {"beta": beta, "alpha": alpha, "temperature": temperature}
    div_N = per_token_divergence(name, student_NV, teacher_NV, **kwargs)
    return div_N, entropy(student_NV, temperature=temperature), (student_hidden_NH, student_head_VH)


def _grads(loss, tensors):
    return torch.autograd.grad(loss, tensors)


def _assert_close(actual, expected, tol):
    torch.testing.assert_close(actual.double(), expected.double(), **tol)


@pytest.mark.parametrize("temperature", [1.0, 2.0])
@pytest.mark.parametrize("beta, alpha", COEFFICIENTS)
@pytest.mark.parametrize("name", DIVERGENCES)
def test_fused_sum_matches_divergence_py(name, beta, alpha, temperature):
    inputs = _inputs()
    weights_N, entropy_weights_N = torch.rand(N), torch.randn(N)
    weights_N[[2, 7]] = 0.0
    loss = chunked_distill_loss(
        *inputs, weights_N, divergence=name, beta=beta, alpha=alpha, temperature=temperature,
        entropy_weights=entropy_weights_N, chunk_size=4,
    )  # fmt: skip
    div_N, ent_N, ref_inputs = _reference(inputs, name, beta, alpha, temperature)
    expected = (weights_N.double() * div_N).sum() + (entropy_weights_N.double() * ent_N).sum()
    _assert_close(loss, expected, FP32)
    for grad, expected_grad in zip(_grads(loss, inputs[:2]), _grads(expected, ref_inputs), strict=True):
        _assert_close(grad, expected_grad, FP32)


@pytest.mark.parametrize("temperature", [1.0, 2.0])
@pytest.mark.parametrize("beta, alpha", COEFFICIENTS)
@pytest.mark.parametrize("name", DIVERGENCES)
def test_per_token_matches_divergence_py(name, beta, alpha, temperature):
    inputs = _inputs()
    weights_N = torch.rand(N)
    weights_N[5] = 0.0
    losses_N, ent_N = chunked_distill_loss(
        *inputs, weights_N, divergence=name, beta=beta, alpha=alpha, temperature=temperature,
        return_entropy=True, reduction="none", chunk_size=5,
    )  # fmt: skip
    div_ref_N, ent_ref_N, ref_inputs = _reference(inputs, name, beta, alpha, temperature)
    _assert_close(losses_N, weights_N.double() * div_ref_N, FP32)
    _assert_close(ent_N, ent_ref_N, FP32)  # every row, the zero-weight one included, when the entropy is returned
    upstream_N, upstream_ent_N = torch.randn(N), torch.randn(N)
    loss = (upstream_N * losses_N).sum() + (upstream_ent_N * ent_N).sum()
    expected = (upstream_N.double() * weights_N.double() * div_ref_N + upstream_ent_N.double() * ent_ref_N).sum()
    for grad, expected_grad in zip(_grads(loss, inputs[:2]), _grads(expected, ref_inputs), strict=True):
        _assert_close(grad, expected_grad, FP32)


@pytest.mark.parametrize("name", DIVERGENCES)
def test_bf16_inputs(name):
    inputs = _inputs(dtype=torch.bfloat16)
    weights_N = torch.rand(N)
    loss = chunked_distill_loss(*inputs, weights_N, divergence=name, beta=0.3, alpha=0.2, temperature=2.0)
    div_N, _, ref_inputs = _reference(inputs, name, 0.3, 0.2, 2.0)
    expected = (weights_N.double() * div_N).sum()
    assert loss.dtype == torch.float32
    _assert_close(loss, expected, BF16)
    grads = _grads(loss, inputs[:2])
    assert [grad.dtype for grad in grads] == [torch.bfloat16, torch.bfloat16]
    for grad, expected_grad in zip(grads, _grads(expected, ref_inputs), strict=True):
        _assert_close(grad, expected_grad, BF16)


def test_gradcheck_float64():
    student_hidden_NH, student_head_VH, teacher_hidden_NH, teacher_head_VH = _inputs(dtype=torch.float64, num=5)
    weights_N, entropy_weights_N = torch.rand(5, dtype=torch.float64), torch.randn(5, dtype=torch.float64)

    def fused(hidden_NH, head_VH, w_N, e_N):
        return chunked_distill_loss(
            hidden_NH, head_VH, teacher_hidden_NH, teacher_head_VH, w_N, entropy_weights=e_N, chunk_size=2
        )

    def per_token(hidden_NH, head_VH, w_N):
        losses_N, ent_N = chunked_distill_loss(
            hidden_NH, head_VH, teacher_hidden_NH, teacher_head_VH, w_N, divergence="skew_kl", temperature=1.5,
            return_entropy=True, reduction="none", chunk_size=3,
        )  # fmt: skip
        return losses_N, ent_N

    weights_N.requires_grad_()
    entropy_weights_N.requires_grad_()
    assert torch.autograd.gradcheck(fused, (student_hidden_NH, student_head_VH, weights_N, entropy_weights_N))
    assert torch.autograd.gradcheck(per_token, (student_hidden_NH, student_head_VH, weights_N))


@pytest.mark.parametrize("chunk_size", [1, 3, N, 64])
@pytest.mark.parametrize("reduction", ["sum", "none"])
def test_chunk_size_does_not_change_the_result(chunk_size, reduction):
    inputs = _inputs()
    expected = chunked_distill_loss(*inputs, reduction=reduction, chunk_size=N).sum()
    loss = chunked_distill_loss(*inputs, reduction=reduction, chunk_size=chunk_size).sum()
    _assert_close(loss, expected, FP32)
    for grad, expected_grad in zip(_grads(loss, inputs[:2]), _grads(expected, inputs[:2]), strict=True):
        _assert_close(grad, expected_grad, FP32)


@pytest.mark.parametrize("reduction", ["sum", "none"])
def test_mask_and_zero_weights_skip_rows(reduction):
    inputs = _inputs()
    mask_N = torch.rand(N) > 0.4
    weights_N = torch.rand(N) * (torch.rand(N) > 0.3)
    out = chunked_distill_loss(*inputs, weights_N, mask=mask_N, reduction=reduction, chunk_size=3)
    kept_N = mask_N & (weights_N != 0)
    div_N, _, ref_inputs = _reference(inputs, "generalized_jsd", 0.5, 0.1, 1.0)
    expected = weights_N.double() * div_N * kept_N
    _assert_close(out, expected if reduction == "none" else expected.sum(), FP32)
    grad_hidden_NH, grad_head_VH = _grads(out.sum(), inputs[:2])
    assert (grad_hidden_NH[~kept_N] == 0).all()
    expected_grads = _grads(expected.sum(), ref_inputs)
    _assert_close(grad_hidden_NH, expected_grads[0], FP32)
    _assert_close(grad_head_VH, expected_grads[1], FP32)


@pytest.mark.parametrize("topk", [False, True])
@pytest.mark.parametrize("reduction", ["sum", "none"])
def test_all_masked_gives_zeros_and_zero_gradients(reduction, topk):
    student_hidden_NH, student_head_VH, teacher_hidden_NH, teacher_head_VH = _inputs()
    if topk:
        teacher = (torch.zeros(N, 3, dtype=torch.long), torch.full((N, 3), -1.0))
        fn = chunked_distill_loss_topk
    else:
        teacher, fn = (teacher_hidden_NH, teacher_head_VH), chunked_distill_loss
    out, ent_N = fn(
        student_hidden_NH, student_head_VH, *teacher, torch.zeros(N), mask=torch.zeros(N, dtype=torch.bool),
        reduction=reduction, return_entropy=True,
    )  # fmt: skip
    assert out.shape == (() if reduction == "sum" else (N,)) and (out == 0).all() and (ent_N == 0).all()
    grad_hidden_NH, grad_head_VH = _grads(out.sum() + ent_N.sum(), (student_hidden_NH, student_head_VH))
    assert (grad_hidden_NH == 0).all() and (grad_head_VH == 0).all()


@pytest.mark.parametrize("reduction", ["sum", "none"])
def test_weights_get_gradients_even_where_zero(reduction):
    inputs = _inputs()
    weights_N = (torch.rand(N) * (torch.arange(N) % 3 != 0)).requires_grad_()
    entropy_weights_N = torch.randn(N).requires_grad_() if reduction == "sum" else None
    out = chunked_distill_loss(
        *inputs, weights_N, entropy_weights=entropy_weights_N, divergence="tvd", reduction=reduction
    )
    div_N, ent_N, _ = _reference(inputs, "tvd", 0.5, 0.1, 1.0)
    upstream_N = torch.randn(N) if reduction == "none" else torch.tensor(2.0)
    grads = torch.autograd.grad((upstream_N * out).sum(), [w for w in (weights_N, entropy_weights_N) if w is not None])
    _assert_close(grads[0], upstream_N * div_N, FP32)
    if reduction == "sum":
        _assert_close(grads[1], upstream_N * ent_N, FP32)


def test_sum_mode_returns_detached_entropy():
    inputs = _inputs()
    loss, ent_N = chunked_distill_loss(*inputs, return_entropy=True)
    _assert_close(ent_N, _reference(inputs, "generalized_jsd", 0.5, 0.1, 1.0)[1], FP32)
    assert loss.requires_grad and not ent_N.requires_grad


def test_padded_vocab_rows_are_dropped():
    inputs = _inputs(student_vocab=V + 2, teacher_vocab=V + 5)  # e.g. Qwen2.5's padded embeddings
    loss = chunked_distill_loss(*inputs, vocab_size=V, chunk_size=4)
    div_N, _, ref_inputs = _reference(inputs, "generalized_jsd", 0.5, 0.1, 1.0, vocab=V)
    _assert_close(loss, div_N.sum(), FP32)
    grad_hidden_NH, grad_head_VH = _grads(loss, inputs[:2])
    expected_hidden_NH, expected_head_VH = _grads(div_N.sum(), ref_inputs)
    _assert_close(grad_hidden_NH, expected_hidden_NH, FP32)
    _assert_close(grad_head_VH, expected_head_VH, FP32)
    assert grad_head_VH.shape == (V + 2, H) and (grad_head_VH[V:] == 0).all()
    with pytest.raises(ValueError, match=f"student lm_head has {V + 2} rows, teacher has {V + 5}"):
        chunked_distill_loss(*inputs)


def test_teacher_gets_no_gradient():
    student_hidden_NH, student_head_VH, teacher_hidden_NH, teacher_head_VH = _inputs()
    teacher_hidden_NH.requires_grad_()
    teacher_head_VH.requires_grad_()
    chunked_distill_loss(student_hidden_NH, student_head_VH, teacher_hidden_NH, teacher_head_VH).backward()
    assert teacher_hidden_NH.grad is None and teacher_head_VH.grad is None
    assert student_hidden_NH.grad is not None and student_head_VH.grad is not None


def test_frozen_student_head():
    student_hidden_NH, student_head_VH, teacher_hidden_NH, teacher_head_VH = _inputs()
    frozen_head_VH = student_head_VH.detach()
    for reduction in ("sum", "none"):
        out = chunked_distill_loss(student_hidden_NH, frozen_head_VH, teacher_hidden_NH, teacher_head_VH,
                                   reduction=reduction)  # fmt: skip
        expected = chunked_distill_loss(student_hidden_NH, student_head_VH, teacher_hidden_NH, teacher_head_VH,
                                        reduction=reduction)  # fmt: skip
        _assert_close(_grads(out.sum(), student_hidden_NH)[0], _grads(expected.sum(), student_hidden_NH)[0], FP32)


def test_invalid_arguments_raise():
    inputs = _inputs()
    with pytest.raises(ValueError, match="Unknown divergence"):
        chunked_distill_loss(*inputs, divergence="js")
    with pytest.raises(ValueError, match="beta"):
        chunked_distill_loss(*inputs, beta=1.5)
    with pytest.raises(ValueError, match="temperature"):
        chunked_distill_loss(*inputs, temperature=0.0)
    with pytest.raises(ValueError, match="reduction"):
        chunked_distill_loss(*inputs, reduction="mean")
    with pytest.raises(ValueError, match="entropy_weights"):
        chunked_distill_loss(*inputs, entropy_weights=torch.ones(N), reduction="none")
    with pytest.raises(ValueError, match="token_weights"):
        chunked_distill_loss(*inputs, torch.ones(N + 1))
    with pytest.raises(ValueError, match="student_hidden"):
        chunked_distill_loss(inputs[0][None], *inputs[1:])


# ---------------------------------------------------------------------------------------------------------------------
# Top-k teacher.
# ---------------------------------------------------------------------------------------------------------------------


def _kl(a_NV, b_NV):
    """KL(a || b) per row from probabilities, with 0 log 0 = 0."""
    return (torch.special.xlogy(a_NV, a_NV) - torch.special.xlogy(a_NV, b_NV)).sum(-1)


def _divergence_from_probs(name, q_NV, p_NV, beta, alpha):
    """The divergences written from their definitions on probability vectors (q student, p teacher)."""
    if name == "forward_kl" or (name == "generalized_jsd" and beta == 0) or (name == "skew_kl" and alpha == 0):
        return _kl(p_NV, q_NV)
    if name == "reverse_kl" or (name == "generalized_jsd" and beta == 1) or (name == "skew_reverse_kl" and alpha == 0):
        return _kl(q_NV, p_NV)
    if name == "generalized_jsd":
        m_NV = beta * p_NV + (1 - beta) * q_NV
        return beta * _kl(p_NV, m_NV) + (1 - beta) * _kl(q_NV, m_NV)
    if name == "skew_kl":
        return _kl(p_NV, alpha * p_NV + (1 - alpha) * q_NV)
    if name == "skew_reverse_kl":
        return _kl(q_NV, (1 - alpha) * p_NV + alpha * q_NV.detach())
    return 0.5 * (p_NV - q_NV).abs().sum(-1)


def _topk_reference(student_hidden_NH, student_head_VH, ids_NK, logprobs_NK, name, beta, alpha, temperature, tail):
    """Renormalise: the teacher is softmax(logprobs / T) on its K ids, 0 elsewhere, against the full student.
    Bucket: both distributions over K + 1 outcomes (the K ids, then the rest) with the teacher's leftover mass."""
    q_NV = torch.softmax(student_hidden_NH @ student_head_VH.T / temperature, dim=-1)
    if tail == "renormalize":
        p_NV = torch.zeros_like(q_NV).scatter(1, ids_NK, torch.softmax(logprobs_NK / temperature, dim=-1))
        return _divergence_from_probs(name, q_NV, p_NV, beta, alpha)
    q_top_NK = q_NV.gather(1, ids_NK)
    q_NB = torch.cat([q_top_NK, 1 - q_top_NK.sum(-1, keepdim=True)], dim=1)
    p_top_NK = logprobs_NK.exp()
    p_NB = torch.cat([p_top_NK, 1 - p_top_NK.sum(-1, keepdim=True)], dim=1)
    return _divergence_from_probs(name, q_NB, p_NB, beta, alpha)


def _topk_teacher(inputs, topk):
    """Top-k ids (distinct, in random order) and log-probabilities of the teacher of `inputs`."""
    teacher_logp_NV = torch.log_softmax(inputs[2] @ inputs[3].T, dim=-1)
    ids_NK = torch.rand(N, V).argsort(dim=-1)[:, :topk] if topk == V else teacher_logp_NV.topk(topk, dim=-1).indices
    return ids_NK, teacher_logp_NV.gather(1, ids_NK)


def _reverse(name, beta, alpha):
    return name == "reverse_kl" or (name, beta) == ("generalized_jsd", 1.0) or (name, alpha) == ("skew_reverse_kl", 0)


@pytest.mark.parametrize("beta, alpha", COEFFICIENTS)
@pytest.mark.parametrize("name", DIVERGENCES)
def test_topk_with_full_vocabulary_equals_dense(name, beta, alpha):
    inputs = _inputs()
    ids_NK, logprobs_NK = _topk_teacher(inputs, V)
    tail, temperature = ("bucket", 1.0) if _reverse(name, beta, alpha) else ("renormalize", 2.0)
    kwargs = {"divergence": name, "beta": beta, "alpha": alpha, "temperature": temperature, "chunk_size": 4}
    weights_N, entropy_weights_N = torch.rand(N), torch.randn(N)
    loss = chunked_distill_loss_topk(
        *inputs[:2], ids_NK, logprobs_NK, weights_N, entropy_weights=entropy_weights_N, teacher_tail=tail, **kwargs
    )
    expected = chunked_distill_loss(*inputs, weights_N, entropy_weights=entropy_weights_N, **kwargs)
    _assert_close(loss, expected, FP32)
    for grad, expected_grad in zip(_grads(loss, inputs[:2]), _grads(expected, inputs[:2]), strict=True):
        _assert_close(grad, expected_grad, FP32)


@pytest.mark.parametrize("reduction", ["sum", "none"])
@pytest.mark.parametrize("tail", ["renormalize", "bucket"])
@pytest.mark.parametrize("beta, alpha", COEFFICIENTS[:2])
@pytest.mark.parametrize("name", DIVERGENCES)
def test_topk_matches_naive_reference(name, beta, alpha, tail, reduction):
    if tail == "renormalize" and _reverse(name, beta, alpha):
        pytest.skip("infinite: covered by test_topk_invalid_arguments_raise")
    inputs = _inputs(dtype=torch.float64)
    ids_NK, logprobs_NK = _topk_teacher(inputs, 3)
    temperature = 1.0 if tail == "bucket" else 1.5
    weights_N = torch.rand(N, dtype=torch.float64)
    out, ent_N = chunked_distill_loss_topk(
        *inputs[:2], ids_NK, logprobs_NK, weights_N, divergence=name, beta=beta, alpha=alpha, temperature=temperature,
        teacher_tail=tail, reduction=reduction, return_entropy=True, chunk_size=4,
    )  # fmt: skip
    div_N = _topk_reference(*inputs[:2], ids_NK, logprobs_NK, name, beta, alpha, temperature, tail)
    _assert_close(out, weights_N * div_N if reduction == "none" else (weights_N * div_N).sum(), FP32)
    _assert_close(ent_N, entropy(inputs[0] @ inputs[1].T, temperature=temperature), FP32)
    for grad, expected_grad in zip(
        _grads(out.sum(), inputs[:2]), _grads((weights_N * div_N).sum(), inputs[:2]), strict=True
    ):
        _assert_close(grad, expected_grad, FP32)


def test_topk_per_token_entropy_gradient():
    inputs = _inputs()
    ids_NK, logprobs_NK = _topk_teacher(inputs, 4)
    _, ent_N = chunked_distill_loss_topk(*inputs[:2], ids_NK, logprobs_NK, return_entropy=True, reduction="none")
    upstream_N = torch.randn(N)
    expected_N = entropy(inputs[0] @ inputs[1].T)
    _assert_close(ent_N, expected_N, FP32)
    grads = _grads((upstream_N * ent_N).sum(), inputs[:2])
    expected_grads = _grads((upstream_N * expected_N).sum(), inputs[:2])
    for grad, expected_grad in zip(grads, expected_grads, strict=True):
        _assert_close(grad, expected_grad, FP32)


def test_topk_invalid_arguments_raise():
    inputs = _inputs()
    ids_NK, logprobs_NK = _topk_teacher(inputs, 3)
    with pytest.raises(ValueError, match="teacher_tail='bucket'"):
        chunked_distill_loss_topk(*inputs[:2], ids_NK, logprobs_NK, divergence="reverse_kl")
    with pytest.raises(ValueError, match="temperature == 1"):
        chunked_distill_loss_topk(*inputs[:2], ids_NK, logprobs_NK, temperature=2.0, teacher_tail="bucket")
    with pytest.raises(ValueError, match="must lie in"):
        chunked_distill_loss_topk(*inputs[:2], ids_NK + V, logprobs_NK)
    with pytest.raises(ValueError, match="same shape"):
        chunked_distill_loss_topk(*inputs[:2], ids_NK, logprobs_NK[:, :2])
    with pytest.raises(ValueError, match="teacher_tail"):
        chunked_distill_loss_topk(*inputs[:2], ids_NK, logprobs_NK, teacher_tail="drop")


@pytest.mark.parametrize("chunk_size", [None, 1, 3])
def test_chunked_topk_matches_torch_topk(chunk_size):
    hidden_NH, head_VH = torch.randn(7, 5, dtype=torch.float64), torch.randn(11, 5, dtype=torch.float64)
    ids_NK = chunked_topk(hidden_NH, head_VH, 4, chunk_size=chunk_size, vocab_size=9)
    torch.testing.assert_close(ids_NK, (hidden_NH @ head_VH[:9].T).topk(4, dim=-1).indices)


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
def test_chunked_logits_are_the_full_logits_in_row_chunks(dtype):
    hidden_NH, head_VH = torch.randn(7, 5, dtype=dtype, requires_grad=True), torch.randn(11, 5, dtype=dtype)
    chunks = [(logits.clone(), logits.data_ptr()) for logits in chunked_logits(hidden_NH, head_VH, chunk_size=3,
                                                                                vocab_size=9)]
    assert [c.shape for c, _ in chunks] == [(3, 9), (3, 9), (1, 9)]
    assert len({ptr for _, ptr in chunks}) == 1  # one reused buffer
    assert all(c.dtype == dtype and not c.requires_grad for c, _ in chunks)
    torch.testing.assert_close(torch.cat([c for c, _ in chunks]), (hidden_NH @ head_VH[:9].T).detach())


def test_chunked_topk_checks_its_arguments():
    with pytest.raises(ValueError, match="hidden"):
        chunked_topk(torch.randn(3, 4), torch.randn(5, 3), 2)
    with pytest.raises(ValueError, match="`k`"):
        chunked_topk(torch.randn(3, 4), torch.randn(5, 4), 6)


@pytest.mark.parametrize("divergence, beta", [("generalized_jsd", 0.9), ("generalized_jsd", 0.0), ("reverse_kl", 0.5)])
@pytest.mark.parametrize("tau", [1.0, 0.3])
def test_gate_scales_each_divergence_by_the_entropy_gap(divergence, beta, tau):
    inputs = _inputs(dtype=torch.float64)
    student_NH, student_VH, teacher_NH, teacher_VH = inputs[:4]
    weights_N = torch.rand(N, dtype=torch.float64)
    entropy_weights_N = torch.randn(N, dtype=torch.float64)
    loss, entropies_N2 = chunked_distill_loss(
        student_NH, student_VH, teacher_NH, teacher_VH, weights_N, divergence=divergence, beta=beta, temperature=1.3,
        entropy_weights=entropy_weights_N, return_entropy=True, gate_tau=tau, chunk_size=3,
    )
    student_NV, teacher_NV = student_NH @ student_VH.T, teacher_NH @ teacher_VH.T
    h_student, h_teacher = entropy(student_NV, 1.3), entropy(teacher_NV, 1.3)
    gate_N = torch.sigmoid((h_student - h_teacher).detach() / tau)
    values_N = per_token_divergence(divergence, student_NV, teacher_NV, beta=beta, temperature=1.3)
    expected = (weights_N * gate_N * values_N).sum() + (entropy_weights_N * h_student).sum()
    torch.testing.assert_close(loss, expected)
    torch.testing.assert_close(entropies_N2, torch.stack([h_student, h_teacher], dim=-1).detach())
    for actual, grad in zip(_grads(loss, [student_NH, student_VH]), _grads(expected, [student_NH, student_VH])):
        torch.testing.assert_close(actual, grad)


def test_gate_needs_a_positive_tau_and_the_sum():
    student_NH, student_VH, teacher_NH, teacher_VH = _inputs()[:4]
    with pytest.raises(ValueError, match="gate_tau"):
        chunked_distill_loss(student_NH, student_VH, teacher_NH, teacher_VH, gate_tau=0.0)
    with pytest.raises(ValueError, match="gate_tau"):
        chunked_distill_loss(student_NH, student_VH, teacher_NH, teacher_VH, gate_tau=1.0, reduction="none")


def test_default_chunk_size_keeps_one_buffer_at_256_mib():
    assert default_chunk_size(152064) == 441 and default_chunk_size(32768) == 2048 and default_chunk_size(2**30) == 1


@pytest.mark.parametrize("rows, expected", [(1, 1), (3, 1), (40, 10), (41, 11)])
def test_default_buffers_are_sized_to_the_work(monkeypatch, rows, expected):
    """Without `chunk_size`, the four `[C, V]` buffers hold at most one `[R, V]` tensor (C <= ceil(R / 4)), in equal
    chunks; a larger V still caps C at the 256 MiB default. The loss is unchanged."""
    import trl_reasoning_distill._chunk_driver as driver

    shapes = []

    class Recording(driver._Workspace):
        def __init__(self, *args):
            super().__init__(*args)
            shapes.append(self.shape)

    student_NH, student_VH, teacher_NH, teacher_VH = _inputs(num=rows)[:4]
    expected_loss = chunked_distill_loss(student_NH, student_VH, teacher_NH, teacher_VH, chunk_size=rows)
    monkeypatch.setattr(driver, "_Workspace", Recording)
    loss = chunked_distill_loss(student_NH, student_VH, teacher_NH, teacher_VH)
    assert shapes == [(expected, V)]
    torch.testing.assert_close(loss, expected_loss)
    monkeypatch.setattr(driver, "_BUFFER_ELEMENTS", 7 * V)  # the 256 MiB cap, at a small scale
    shapes.clear()
    chunked_distill_loss(student_NH, student_VH, teacher_NH, teacher_VH)
    assert shapes == [(min(expected, 7), V)]


@pytest.mark.parametrize("chunk_size", [None, 1, 4, 64])
def test_chunked_cross_entropy_equals_full_logit_cross_entropy(chunk_size):
    """Value and gradients (hidden, head, weights) in float64 against `F.cross_entropy` of the full logits, on the
    first `vocab_size` head rows; rows of the ignored label -100 are never read."""
    import torch.nn.functional as F

    hidden_NH = torch.randn(N, H, dtype=torch.float64).requires_grad_()
    head_VH = torch.randn(V + 3, H, dtype=torch.float64).requires_grad_()
    targets_N = torch.randint(0, V, (N,))
    weights_N = torch.rand(N, dtype=torch.float64).requires_grad_()
    mask_N = torch.arange(N) % 4 != 1
    targets_N[~mask_N] = -100
    loss = chunked_cross_entropy(hidden_NH, head_VH, targets_N, weights_N, temperature=1.3,
                                 chunk_size=chunk_size, vocab_size=V)
    logits_NV = hidden_NH @ head_VH[:V].T / 1.3
    nll_N = F.cross_entropy(logits_NV, targets_N, reduction="none", ignore_index=-100)
    expected = (nll_N * weights_N * mask_N).sum()
    torch.testing.assert_close(loss, expected)
    for actual, grad in zip(torch.autograd.grad(loss, (hidden_NH, head_VH, weights_N)),
                            torch.autograd.grad(expected, (hidden_NH, head_VH, weights_N)), strict=True):
        torch.testing.assert_close(actual, grad)


def test_chunked_cross_entropy_checks_its_targets():
    hidden_NH, head_VH = torch.randn(3, H), torch.randn(V, H)
    with pytest.raises(ValueError, match="targets"):
        chunked_cross_entropy(hidden_NH, head_VH, torch.tensor([0, V, 1]))
    with pytest.raises(ValueError, match="targets"):
        chunked_cross_entropy(hidden_NH, head_VH, torch.tensor([0, 1]))
    with pytest.raises(ValueError, match="targets"):
        chunked_cross_entropy(hidden_NH, head_VH, torch.tensor([0, -1, 1]))
    zero = chunked_cross_entropy(hidden_NH, head_VH, torch.tensor([V + 5, -100, 1]), torch.tensor([0.0, 1.0, 0.0]))
    assert zero.item() == 0.0  # weight-0 rows and ignored rows are never read
