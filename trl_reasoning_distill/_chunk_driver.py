"""The autograd driver of `chunked.py`: the chunk loop, the `[C, V]` workspace, the rows worth computing, the chunk
size, and the two autograd Functions (`reduction="sum"`, gradient computed in the forward pass; `reduction="none"`,
recomputed in the backward). A loss term enters as a `chunk_fn(rows, logits_CV, workspace, coef_C, entropy_coef_C)`
of `_chunk_math.py` returning its per-token value, the student entropy and the gradient w.r.t. the logits.
"""

import math
from dataclasses import dataclass

import torch
from torch.autograd.function import once_differentiable

from ._chunk_math import _backproject, _matmul_head, _project

_BUFFER_ELEMENTS = 2**26  # elements of one [C, V] buffer: 256 MiB in float32
_DENSE_BUFFERS = 4  # [C, V] buffers of one chunk against a dense teacher (`_dense_chunk`)


@dataclass(frozen=True)
class _Spec:
    """The non-tensor settings of one call."""

    divergence: str
    beta: float
    alpha: float
    temperature: float
    vocab_size: int
    chunk_size: int | None  # None: sized to the work by `_rows_per_chunk`
    dtype: torch.dtype
    with_entropy: bool
    gate_tau: float | None = None


class _Workspace:
    """`[C, V]` buffers of the compute dtype, allocated on first use and reused by every chunk of one pass."""

    def __init__(self, rows: int, cols: int, dtype: torch.dtype, device: torch.device):
        self.shape, self.dtype, self.device = (rows, cols), dtype, device
        self.buffers: list[torch.Tensor] = []

    def take(self, index: int, rows: int) -> torch.Tensor:
        while len(self.buffers) <= index:
            self.buffers.append(torch.empty(self.shape, dtype=self.dtype, device=self.device))
        return self.buffers[index][:rows]


def _chunk_loop(student_hidden_RH, student_head_VH, chunk_fn, coef_R, entropy_coef_R, spec, need_hidden, need_head):
    """
    Run `chunk_fn` over chunks of rows. `coef_R` / `entropy_coef_R` (already divided by the temperature) weight the
    divergence and the entropy in the gradient, which is computed only for the inputs flagged by `need_*`.

    Returns `(value_R, entropy_R or None, grad_hidden_RH or None, grad_head_VH or None)` in the compute dtype.
    """
    num_rows, dtype = student_hidden_RH.shape[0], spec.dtype
    vocab_head_VH = _matmul_head(student_head_VH[: spec.vocab_size], student_hidden_RH, dtype)
    value_R = student_hidden_RH.new_zeros(num_rows, dtype=dtype)
    entropy_shape = (num_rows, 2) if spec.gate_tau is not None else (num_rows,)  # gated: student and teacher
    entropy_R = value_R.new_zeros(entropy_shape) if spec.with_entropy else None
    grad_hidden_RH = torch.zeros_like(student_hidden_RH, dtype=dtype) if need_hidden else None
    grad_head_VH = torch.zeros_like(student_head_VH, dtype=dtype) if need_head else None
    chunk = _rows_per_chunk(spec, num_rows, _DENSE_BUFFERS)
    workspace = _Workspace(min(chunk, num_rows), spec.vocab_size, dtype, student_hidden_RH.device)
    for start in range(0, num_rows, chunk):
        rows = slice(start, min(start + chunk, num_rows))
        hidden_CH = student_hidden_RH[rows]
        logits_CV = workspace.take(0, hidden_CH.shape[0])
        _project(logits_CV, hidden_CH, vocab_head_VH, spec.temperature)
        entropy_coef_C = None if entropy_coef_R is None else entropy_coef_R[rows]
        coef_C = None if coef_R is None else coef_R[rows]
        value_R[rows], entropy_C, grad_CV = chunk_fn(rows, logits_CV, workspace, coef_C, entropy_coef_C)
        if entropy_R is not None:
            entropy_R[rows] = entropy_C
        if grad_CV is not None:
            grad_rows_CH = None if grad_hidden_RH is None else grad_hidden_RH[rows]
            grad_vocab_VH = None if grad_head_VH is None else grad_head_VH[: spec.vocab_size]
            _backproject(grad_CV, hidden_CH, vocab_head_VH, grad_rows_CH, grad_vocab_VH)
    return value_R, entropy_R, grad_hidden_RH, grad_head_VH



def _scaled(grad: torch.Tensor | None, dtype: torch.dtype, scale: torch.Tensor) -> torch.Tensor | None:
    """`grad · scale` in `dtype`; out of place, so that a retained graph can run its backward again."""
    return None if grad is None else (grad * scale).to(dtype)


def _student_column(entropy_R: torch.Tensor) -> torch.Tensor:
    """The student's entropies `[R]` of an entropy output, `[R]` or `[R, 2]` (student, teacher) when gated."""
    return entropy_R if entropy_R.dim() == 1 else entropy_R[:, 0]


class _WeightedSum(torch.autograd.Function):
    """`sum_r w_r d_r + sum_r e_r H_r`; the gradient is computed in the forward pass, the backward only scales it."""

    @staticmethod
    def forward(ctx, student_hidden_RH, student_head_VH, weights_R, entropy_weights_R, chunk_fn, spec):
        weights_R = weights_R.to(spec.dtype)
        entropy_weights_R = None if entropy_weights_R is None else entropy_weights_R.to(spec.dtype)
        need_grad = ctx.needs_input_grad[0] or ctx.needs_input_grad[1]
        coef_R = weights_R / spec.temperature if need_grad else None
        entropy_coef_R = entropy_weights_R / spec.temperature if need_grad and entropy_weights_R is not None else None
        value_R, entropy_R, grad_hidden_RH, grad_head_VH = _chunk_loop(
            student_hidden_RH, student_head_VH, chunk_fn, coef_R, entropy_coef_R, spec, *ctx.needs_input_grad[:2]
        )
        loss = (weights_R * value_R).sum()
        if entropy_weights_R is not None:
            loss = loss + (entropy_weights_R * _student_column(entropy_R)).sum()
        entropy_R = value_R.new_zeros(0) if entropy_R is None else entropy_R
        ctx.save_for_backward(grad_hidden_RH, grad_head_VH, value_R, entropy_R)
        ctx.dtypes = student_hidden_RH.dtype, student_head_VH.dtype
        ctx.mark_non_differentiable(entropy_R)
        return loss, entropy_R

    @staticmethod
    @once_differentiable
    def backward(ctx, grad_loss, _grad_entropy):
        grad_hidden_RH, grad_head_VH, value_R, entropy_R = ctx.saved_tensors
        hidden_dtype, head_dtype = ctx.dtypes
        grad_weights_R = grad_loss * value_R if ctx.needs_input_grad[2] else None
        grad_entropy_weights_R = grad_loss * _student_column(entropy_R) if ctx.needs_input_grad[3] else None
        return (
            _scaled(grad_hidden_RH, hidden_dtype, grad_loss),
            _scaled(grad_head_VH, head_dtype, grad_loss),
            grad_weights_R,
            grad_entropy_weights_R,
            None,
            None,
        )


class _PerToken(torch.autograd.Function):
    """Per-token divergence (and entropy); the backward recomputes each chunk with the incoming per-token gradients."""

    @staticmethod
    def forward(ctx, student_hidden_RH, student_head_VH, chunk_fn, spec):
        value_R, entropy_R, _, _ = _chunk_loop(student_hidden_RH, student_head_VH, chunk_fn, None, None, spec, 0, 0)
        ctx.save_for_backward(student_hidden_RH, student_head_VH)
        ctx.chunk_fn, ctx.spec = chunk_fn, spec
        ctx.set_materialize_grads(False)
        return value_R, value_R.new_zeros(0) if entropy_R is None else entropy_R

    @staticmethod
    @once_differentiable
    def backward(ctx, grad_value_R, grad_entropy_R):
        student_hidden_RH, student_head_VH = ctx.saved_tensors
        spec = ctx.spec
        if grad_value_R is None:
            grad_value_R = student_hidden_RH.new_zeros(student_hidden_RH.shape[0], dtype=spec.dtype)
        entropy_coef_R = None if grad_entropy_R is None else grad_entropy_R.to(spec.dtype) / spec.temperature
        _, _, grad_hidden_RH, grad_head_VH = _chunk_loop(
            student_hidden_RH, student_head_VH, ctx.chunk_fn, grad_value_R.to(spec.dtype) / spec.temperature,
            entropy_coef_R, spec, *ctx.needs_input_grad[:2],
        )  # fmt: skip
        grad_hidden_RH = None if grad_hidden_RH is None else grad_hidden_RH.to(student_hidden_RH.dtype)
        grad_head_VH = None if grad_head_VH is None else grad_head_VH.to(student_head_VH.dtype)
        return grad_hidden_RH, grad_head_VH, None, None


def _computed_rows(num_rows, device, mask, token_weights, entropy_weights, return_entropy) -> torch.Tensor:
    """
    Indices of the rows worth computing: those selected by `mask`, less the rows whose weights are all zero, which add
    exactly nothing to the loss or its gradient. Those are kept when the entropy is returned, or when a weight requires
    a gradient (`d loss / d w_i = d_i` even at `w_i = 0`).
    """
    keep_N = torch.ones(num_rows, dtype=torch.bool, device=device) if mask is None else mask.to(device, torch.bool)
    weights = [weights_N for weights_N in (token_weights, entropy_weights) if weights_N is not None]
    if return_entropy or token_weights is None or any(weights_N.requires_grad for weights_N in weights):
        return keep_N.nonzero().squeeze(1)
    nonzero_N = torch.stack([weights_N != 0 for weights_N in weights]).any(dim=0)
    return (keep_N & nonzero_N).nonzero().squeeze(1)


def _scatter(values_R: torch.Tensor, index_R: torch.Tensor, num_rows: int) -> torch.Tensor:
    """Per-token values back on all `num_rows` rows, 0 on the rows that were not computed (differentiable)."""
    return values_R.new_zeros((num_rows, *values_R.shape[1:])).index_copy(0, index_R, values_R)


def _reduce(student_hidden, student_lm_head, index_R, chunk_fn, spec, token_weights, entropy_weights, reduction):
    """Run the chunk loop on the computed rows through the autograd Function of `reduction`."""
    num_rows = student_hidden.shape[0]
    hidden_RH = student_hidden.index_select(0, index_R)
    weights_R = None if token_weights is None else token_weights.index_select(0, index_R)
    if reduction == "sum":
        weights_R = torch.ones_like(index_R, dtype=spec.dtype) if weights_R is None else weights_R
        entropy_weights_R = None if entropy_weights is None else entropy_weights.index_select(0, index_R)
        loss, entropy_R = _WeightedSum.apply(hidden_RH, student_lm_head, weights_R, entropy_weights_R, chunk_fn, spec)
        return loss, (_scatter(entropy_R, index_R, num_rows) if spec.with_entropy else None)
    value_R, entropy_R = _PerToken.apply(hidden_RH, student_lm_head, chunk_fn, spec)
    losses_R = value_R if weights_R is None else weights_R.to(spec.dtype) * value_R
    entropy_N = _scatter(entropy_R, index_R, num_rows) if spec.with_entropy else None
    return _scatter(losses_R, index_R, num_rows), entropy_N


def default_chunk_size(vocab_size: int) -> int:
    """Tokens per chunk when none is given: one float32 `[C, V]` buffer of 256 MiB (C = 441 for V = 152K)."""
    return max(1, _BUFFER_ELEMENTS // vocab_size)


def _rows_per_chunk(spec: _Spec, num_rows: int, buffers: int) -> int:
    """The given `chunk_size`, or one sized to the work: chunks of equal size, each at most `default_chunk_size` and
    at most `num_rows / buffers` (rounded up), so the `buffers` `[C, V]` buffers hold at most one `[R, V]` tensor."""
    if spec.chunk_size is not None:
        return spec.chunk_size
    if num_rows <= 1:
        return 1
    chunks = max(math.ceil(num_rows / default_chunk_size(spec.vocab_size)), min(buffers, num_rows))
    return math.ceil(num_rows / chunks)


def _make_spec(
    student_hidden, divergence, beta, alpha, temperature, vocab, chunk_size, with_entropy, gate_tau=None
) -> _Spec:
    """Settings of one call; the compute dtype is float64 for float64 inputs, float32 otherwise."""
    dtype = torch.float64 if student_hidden.dtype == torch.float64 else torch.float32
    return _Spec(divergence, beta, alpha, temperature, vocab, chunk_size, dtype, with_entropy or gate_tau is not None,
                 gate_tau)
