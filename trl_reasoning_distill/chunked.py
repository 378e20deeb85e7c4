"""Memory-lean distillation loss from hidden states and LM heads, chunked over tokens, in pure PyTorch (no Triton).

The logits of both models are formed `C = chunk_size` tokens at a time (`hidden[chunk] @ lm_head[:vocab_size].T`,
accumulated in float32), turned into per-token divergences and their gradient, and dropped: neither model's `[N, V]`
logits ever exist. Memory on top of the inputs, for `R` computed tokens, vocabulary `V` and student hidden size `H`:

    4 · C · V (2 · C · V for a top-k teacher) float32 buffers  +  grad of the student lm_head (V · H)  +  O(R · H)

(the fused backward briefly holds a second V · H, when the buffers are already freed). The default `C` is sized to the
work: at most 256 MiB per buffer (C = 441 for V = 152K, C = 2048 for V = 32K), and at most a quarter of the `R`
computed tokens, in equal chunks, so the four buffers never hold more than one `[R, V]` float32 tensor (GKD's loss
holds about sixteen). Masked rows and rows whose weights are all zero are dropped before any matmul, so they cost
nothing. The teacher never receives a gradient.
Half-precision inputs: on CUDA the matmuls run in bf16/fp16 into float32 buffers (`out_dtype`, as TRL's kernels do);
elsewhere the heads are upcast to float32 once per call (one float32 `V x H` copy each).

Two reductions share one chunk loop:
    - `reduction="sum"` (fused; what trainers use): `sum_i w_i d_i + sum_i e_i H_i`. The gradient w.r.t. the student
      hidden states and lm_head is computed during the forward pass, as Liger-Kernel does, and the backward only
      scales it: four `[C, H] x [H, V]`-sized matmuls per chunk.
    - `reduction="none"`: per-token `w_i d_i` (and the entropy `H_i`), differentiable. The forward keeps nothing of
      size `V`; the backward recomputes each chunk with the incoming per-token gradients: six matmuls per chunk.

Layout: this module holds the public functions and their argument checks; `_chunk_driver.py` the autograd driver
(chunk loop, workspace, chunk size, the two autograd Functions); `_chunk_math.py` each loss term's per-chunk maths.
The gradient w.r.t. the student logits is written in closed form, `a - q · sum(a)` with `a = d f / d log q` given per
divergence in `_TERMS`; the tests check it against autograd of `divergence.py`, which defines every divergence.
"""

from collections.abc import Iterator
from functools import partial

import torch

from ._chunk_driver import _computed_rows, _make_spec, _reduce, _rows_per_chunk, _Workspace, default_chunk_size
from ._chunk_math import _dense_chunk, _matmul_head, _nll_chunk, _project, _topk_chunk
from .divergence import DIVERGENCES

__all__ = [
    "chunked_cross_entropy",
    "chunked_distill_loss",
    "chunked_distill_loss_topk",
    "chunked_logits",
    "chunked_topk",
    "default_chunk_size",
]

_REDUCTIONS = ("sum", "none")
_TEACHER_TAILS = ("renormalize", "bucket")


# ---------------------------------------------------------------------------------------------------------------------
# Public API.
# ---------------------------------------------------------------------------------------------------------------------



def _check_arguments(student_hidden, student_lm_head, per_token, entropy_weights, divergence, beta, alpha) -> None:
    """Raise a `ValueError` for bad shapes (every tensor of `per_token` has one row per token) or divergence."""
    if student_hidden.dim() != 2 or student_lm_head.dim() != 2 or student_hidden.shape[1] != student_lm_head.shape[1]:
        raise ValueError(
            f"Expected student_hidden [N, H] and student_lm_head [V, H], got {tuple(student_hidden.shape)} and "
            f"{tuple(student_lm_head.shape)}."
        )
    for name, tensor in {**per_token, "entropy_weights": entropy_weights}.items():
        if tensor is not None and tensor.shape[0] != student_hidden.shape[0]:
            raise ValueError(f"`{name}` has {tensor.shape[0]} rows, student_hidden has {student_hidden.shape[0]}.")
    if divergence not in DIVERGENCES:
        raise ValueError(f"Unknown divergence {divergence!r}; expected one of {', '.join(DIVERGENCES)}.")
    for name, value in (("beta", beta), ("alpha", alpha)):
        if not 0.0 <= value <= 1.0:
            raise ValueError(f"`{name}` must be in [0, 1], got {value}.")


def _check_settings(temperature, reduction, chunk_size, entropy_weights) -> None:
    """Raise a `ValueError` for a bad temperature, reduction or chunk size."""
    if not temperature > 0.0:
        raise ValueError(f"`temperature` must be > 0, got {temperature}.")
    if reduction not in _REDUCTIONS:
        raise ValueError(f"`reduction` must be one of {_REDUCTIONS}, got {reduction!r}.")
    if chunk_size is not None and chunk_size < 1:
        raise ValueError(f"`chunk_size` must be >= 1, got {chunk_size}.")
    if reduction == "none" and entropy_weights is not None:
        raise ValueError("`entropy_weights` needs reduction='sum'; with 'none', weight the returned entropy instead.")


def _shared_vocab_size(student_vocab: int, teacher_vocab: int, vocab_size: int | None) -> int:
    """The vocabulary both heads are sliced to: `vocab_size`, or the common size of the heads when it is `None`."""
    if vocab_size is None:
        if student_vocab != teacher_vocab:
            raise ValueError(
                f"Student and teacher vocabularies differ: student lm_head has {student_vocab} rows, teacher has "
                f"{teacher_vocab}. Pass `vocab_size` (the tokenizer's length) to drop padded rows."
            )
        return student_vocab
    if not 1 <= vocab_size <= min(student_vocab, teacher_vocab):
        raise ValueError(
            f"`vocab_size`={vocab_size} must be in [1, min(student {student_vocab}, teacher {teacher_vocab})]."
        )
    return vocab_size



def _outputs(loss: torch.Tensor, entropy_N: torch.Tensor | None, return_entropy: bool):
    return (loss, entropy_N) if return_entropy else loss


def chunked_distill_loss(
    student_hidden: torch.Tensor,
    student_lm_head: torch.Tensor,
    teacher_hidden: torch.Tensor,
    teacher_lm_head: torch.Tensor,
    token_weights: torch.Tensor | None = None,
    *,
    divergence: str = "generalized_jsd",
    beta: float = 0.5,
    alpha: float = 0.1,
    temperature: float = 1.0,
    mask: torch.Tensor | None = None,
    entropy_weights: torch.Tensor | None = None,
    return_entropy: bool = False,
    reduction: str = "sum",
    chunk_size: int | None = None,
    vocab_size: int | None = None,
    gate_tau: float | None = None,
) -> torch.Tensor | tuple[torch.Tensor, torch.Tensor]:
    """
    Per-token distillation divergence computed from hidden states and LM heads, `chunk_size` tokens at a time.

    For each token `i`, `d_i = divergence(q_i, p_i)` with `q_i = softmax(student_hidden[i] @ student_lm_head.T / T)`
    and `p_i` the same for the teacher (see `divergence.py`; no `T²` rescaling). Gradients reach `student_hidden` and
    `student_lm_head` (and the weights, where they require it); the teacher never gets one.

    Args:
        student_hidden (`torch.Tensor`):
            Student final hidden states of shape `[N, H]` (flatten batch and time first).
        student_lm_head (`torch.Tensor`):
            Student output embedding of shape `[V_s, H]`.
        teacher_hidden (`torch.Tensor`):
            Teacher final hidden states of shape `[N, H']`.
        teacher_lm_head (`torch.Tensor`):
            Teacher output embedding of shape `[V_t, H']`.
        token_weights (`torch.Tensor` or `None`, *optional*, defaults to `None`):
            Per-token weights `w` of shape `[N]` (gates, validity weights, 0/1 masks); `None` means all ones. Rows
            with `w_i = 0` (and `e_i = 0`) are skipped, unless `return_entropy=True` or a weight requires grad.
        divergence (`str`, *optional*, defaults to `"generalized_jsd"`):
            One of `divergence.DIVERGENCES`.
        beta (`float`, *optional*, defaults to `0.5`):
            β of the generalized JSD (TRL convention: 0 forward KL, 1 reverse KL).
        alpha (`float`, *optional*, defaults to `0.1`):
            α of the skew KL and skew reverse KL.
        temperature (`float`, *optional*, defaults to `1.0`):
            Divides both models' logits.
        mask (`torch.Tensor` or `None`, *optional*, defaults to `None`):
            Bool tensor of shape `[N]`; `False` rows are never computed (0 output, 0 gradient).
        entropy_weights (`torch.Tensor` or `None`, *optional*, defaults to `None`):
            Per-token coefficients `e` of shape `[N]` of the student entropy in the summed loss (`reduction="sum"`
            only), e.g. `-coef * selection_mask` for entropy minimisation; its gradient is exact and fused.
        return_entropy (`bool`, *optional*, defaults to `False`):
            Also return the student entropy `H_i` per token, shape `[N]` (0 on rows not computed). With
            `reduction="none"` it is differentiable; with `"sum"` it is detached (use `entropy_weights` for a
            gradient).
        reduction (`str`, *optional*, defaults to `"sum"`):
            `"sum"`: the scalar `sum_i w_i d_i + sum_i e_i H_i`, its gradient computed in the forward pass (fastest).
            `"none"`: the per-token `w_i d_i`, shape `[N]`; the backward recomputes the logits.
        chunk_size (`int` or `None`, *optional*, defaults to `None`):
            Tokens per chunk; `None` sizes the four float32 `[chunk, V]` buffers to the work: equal chunks of at most
            `2**26 // vocab_size` tokens (256 MiB per buffer) and at most a quarter of the computed tokens.
        vocab_size (`int` or `None`, *optional*, defaults to `None`):
            The tokenizer's length: both heads are sliced to their first `vocab_size` rows (padded embedding rows are
            dropped). `None` requires `V_s == V_t`.
        gate_tau (`float` or `None`, *optional*, defaults to `None`):
            Scale each token's divergence by the detached entropy-gap gate `σ((H_s - H_t) / gate_tau)` formed in its
            chunk from both distributions (TSD-KD Eq. 11), i.e. `d_i` becomes `σ_i d_i`; `reduction="sum"` only. The
            returned entropy is then `[N, 2]`: the student's and the teacher's.

    Returns:
        `torch.Tensor` (float32; float64 for float64 inputs), or a tuple `(loss, entropy)` with `return_entropy=True`.
    """
    per_token = {"teacher_hidden": teacher_hidden, "token_weights": token_weights, "mask": mask}
    _check_arguments(student_hidden, student_lm_head, per_token, entropy_weights, divergence, beta, alpha)
    _check_settings(temperature, reduction, chunk_size, entropy_weights)
    if gate_tau is not None and not (gate_tau > 0 and reduction == "sum"):
        raise ValueError(f"`gate_tau` must be > 0 and needs reduction='sum'; got {gate_tau} and {reduction!r}.")
    if teacher_hidden.dim() != 2 or teacher_lm_head.dim() != 2 or teacher_hidden.shape[1] != teacher_lm_head.shape[1]:
        raise ValueError(
            f"Expected teacher_hidden [N, H'] and teacher_lm_head [V, H'], got {tuple(teacher_hidden.shape)} and "
            f"{tuple(teacher_lm_head.shape)}."
        )
    vocab = _shared_vocab_size(student_lm_head.shape[0], teacher_lm_head.shape[0], vocab_size)
    with_entropy = return_entropy or entropy_weights is not None
    spec = _make_spec(student_hidden, divergence, beta, alpha, temperature, vocab, chunk_size, with_entropy, gate_tau)
    index_R = _computed_rows(
        student_hidden.shape[0], student_hidden.device, mask, token_weights, entropy_weights, return_entropy
    )
    teacher_hidden_RH = teacher_hidden.detach().index_select(0, index_R)
    teacher_head_VH = _matmul_head(teacher_lm_head.detach()[:vocab], teacher_hidden_RH, spec.dtype)
    chunk_fn = partial(_dense_chunk, teacher_hidden_RH, teacher_head_VH, spec)
    loss, entropy_N = _reduce(
        student_hidden, student_lm_head, index_R, chunk_fn, spec, token_weights, entropy_weights, reduction
    )
    return _outputs(loss, entropy_N, return_entropy)


def chunked_distill_loss_topk(
    student_hidden: torch.Tensor,
    student_lm_head: torch.Tensor,
    teacher_topk_ids: torch.Tensor,
    teacher_topk_logprobs: torch.Tensor,
    token_weights: torch.Tensor | None = None,
    *,
    divergence: str = "generalized_jsd",
    beta: float = 0.5,
    alpha: float = 0.1,
    temperature: float = 1.0,
    mask: torch.Tensor | None = None,
    entropy_weights: torch.Tensor | None = None,
    return_entropy: bool = False,
    reduction: str = "sum",
    chunk_size: int | None = None,
    vocab_size: int | None = None,
    teacher_tail: str = "renormalize",
) -> torch.Tensor | tuple[torch.Tensor, torch.Tensor]:
    """
    [`chunked_distill_loss`] against a teacher cached offline as its top-k log-probabilities per token.

    The divergence is taken between the student and teacher distributions over K + 1 outcomes: each of the teacher's
    K tokens, and "any other token". The student's mass on the other tokens is `1 - sum_k q(id_k)`. The teacher's is
    set by `teacher_tail`:
        - `"renormalize"` (default): 0, the teacher is `softmax(topk_logprobs / T)` over its K tokens. For an
          f-divergence this equals the divergence over the full vocabulary against that renormalised teacher. The
          reverse KL (and β = 1, skew reverse KL with α = 0) is then infinite, so it raises.
        - `"bucket"`: the leftover mass `1 - sum_k exp(topk_logprobs)`, so the teacher keeps its true top-k
          probabilities (a lower bound of the full-vocabulary divergence). Both leftover masses are floored at the
          float resolution (`torch.finfo(dtype).eps`), below which they are rounding noise. Needs
          `temperature == 1`, since the tempered leftover mass is unknown.
    With K = V and distinct ids, both equal the full-vocabulary loss.

    Args:
        student_hidden (`torch.Tensor`):
            Student final hidden states of shape `[N, H]`.
        student_lm_head (`torch.Tensor`):
            Student output embedding of shape `[V_s, H]`.
        teacher_topk_ids (`torch.Tensor`):
            Long tensor of shape `[N, K]`: the teacher's top-k token ids per token, distinct within a row.
        teacher_topk_logprobs (`torch.Tensor`):
            Tensor of shape `[N, K]`: the teacher's log-probabilities (at temperature 1) of those ids.
        vocab_size (`int` or `None`, *optional*, defaults to `None`):
            The student head is sliced to its first `vocab_size` rows; `None` keeps all `V_s`.
        teacher_tail (`str`, *optional*, defaults to `"renormalize"`):
            `"renormalize"` or `"bucket"`, see above.

        `token_weights`, `divergence`, `beta`, `alpha`, `temperature`, `mask`, `entropy_weights`, `return_entropy`,
        `reduction` and `chunk_size` are as in [`chunked_distill_loss`].

    Returns:
        `torch.Tensor`, or a tuple `(loss, entropy)` with `return_entropy=True`, as in [`chunked_distill_loss`].
    """
    per_token = {"teacher_topk_ids": teacher_topk_ids, "token_weights": token_weights, "mask": mask}
    _check_arguments(student_hidden, student_lm_head, per_token, entropy_weights, divergence, beta, alpha)
    _check_settings(temperature, reduction, chunk_size, entropy_weights)
    vocab = _check_topk(student_lm_head, teacher_topk_ids, teacher_topk_logprobs, vocab_size, teacher_tail)
    _check_topk_divergence(divergence, beta, alpha, temperature, teacher_tail)
    with_entropy = return_entropy or entropy_weights is not None
    spec = _make_spec(student_hidden, divergence, beta, alpha, temperature, vocab, chunk_size, with_entropy)
    index_R = _computed_rows(
        student_hidden.shape[0], student_hidden.device, mask, token_weights, entropy_weights, return_entropy
    )
    ids_RK = teacher_topk_ids.index_select(0, index_R).long()
    logprobs_RK = teacher_topk_logprobs.detach().index_select(0, index_R).to(spec.dtype)
    chunk_fn = partial(_topk_chunk, ids_RK, logprobs_RK, teacher_tail, spec)
    loss, entropy_N = _reduce(
        student_hidden, student_lm_head, index_R, chunk_fn, spec, token_weights, entropy_weights, reduction
    )
    return _outputs(loss, entropy_N, return_entropy)


def chunked_cross_entropy(
    hidden: torch.Tensor,
    lm_head: torch.Tensor,
    targets: torch.Tensor,
    token_weights: torch.Tensor | None = None,
    *,
    ignore_index: int = -100,
    temperature: float = 1.0,
    chunk_size: int | None = None,
    vocab_size: int | None = None,
) -> torch.Tensor:
    """
    Weighted cross-entropy `sum_i w_i · -log softmax(hidden[i] @ lm_head[:vocab_size].T / T)[targets[i]]` (the NLL
    of SFT), `chunk_size` tokens at a time, without the `[N, V]` logits: the chunk loop and fused gradient of
    [`chunked_distill_loss`], with two `[C, V]` buffers (the default `C` as there).

    Args:
        hidden (`torch.Tensor`):
            Final hidden states of shape `[N, H]`.
        lm_head (`torch.Tensor`):
            Output embedding of shape `[V, H]`.
        targets (`torch.Tensor`):
            Long tensor of shape `[N]`: the target token of each row, in `[0, vocab_size)` or `ignore_index`.
        token_weights (`torch.Tensor` or `None`, *optional*, defaults to `None`):
            Per-token weights `w` of shape `[N]` (e.g. a 0/1 loss mask); `None` means all ones. Rows with `w_i = 0`
            are skipped, unless a weight requires grad.
        ignore_index (`int`, *optional*, defaults to `-100`):
            Target of the rows that are never computed (0 loss, 0 gradient), as in `torch.nn.functional.cross_entropy`.
        temperature (`float`, *optional*, defaults to `1.0`):
            Divides the logits.
        chunk_size (`int` or `None`, *optional*, defaults to `None`):
            Tokens per chunk, as in [`chunked_distill_loss`].
        vocab_size (`int` or `None`, *optional*, defaults to `None`):
            Use only the first `vocab_size` rows of `lm_head` (padded embedding rows dropped); `None`: all.

    Returns:
        `torch.Tensor`: 0-dim sum (float32; float64 for float64 inputs), with gradients for `hidden`, `lm_head` and
        the weights where they require them.
    """
    per_token = {"targets": targets, "token_weights": token_weights}
    _check_arguments(hidden, lm_head, per_token, None, "generalized_jsd", 0.5, 0.1)
    _check_settings(temperature, "sum", chunk_size, None)
    vocab = _shared_vocab_size(lm_head.shape[0], lm_head.shape[0], vocab_size)
    spec = _make_spec(hidden, "generalized_jsd", 0.5, 0.1, temperature, vocab, chunk_size, False)
    index_R = _computed_rows(hidden.shape[0], hidden.device, targets != ignore_index, token_weights, None, False)
    targets_R = targets.index_select(0, index_R).long()
    if targets_R.numel() and not bool(((targets_R >= 0) & (targets_R < vocab)).all()):
        raise ValueError(f"`targets` must be token ids in [0, {vocab}) or ignore_index={ignore_index}.")
    chunk_fn = partial(_nll_chunk, targets_R, spec)
    loss, _ = _reduce(hidden, lm_head, index_R, chunk_fn, spec, token_weights, None, "sum")
    return loss


def _check_topk(student_lm_head, ids_NK, logprobs_NK, vocab_size, tail) -> int:
    """Validate the top-k teacher and return the vocabulary size the student head is sliced to."""
    vocab = student_lm_head.shape[0] if vocab_size is None else vocab_size
    if not 1 <= vocab <= student_lm_head.shape[0]:
        raise ValueError(f"`vocab_size`={vocab} must be in [1, {student_lm_head.shape[0]}] (the student lm_head).")
    if ids_NK.dim() != 2 or ids_NK.shape != logprobs_NK.shape or ids_NK.is_floating_point():
        raise ValueError(
            f"Expected integer teacher_topk_ids and teacher_topk_logprobs of the same shape [N, K], got "
            f"{tuple(ids_NK.shape)} ({ids_NK.dtype}) and {tuple(logprobs_NK.shape)}."
        )
    if ids_NK.numel() and not 0 <= int(ids_NK.min()) <= int(ids_NK.max()) < vocab:
        raise ValueError(f"`teacher_topk_ids` must lie in [0, {vocab}), the vocabulary of the loss.")
    if tail not in _TEACHER_TAILS:
        raise ValueError(f"`teacher_tail` must be one of {_TEACHER_TAILS}, got {tail!r}.")
    return vocab


def _check_topk_divergence(divergence, beta, alpha, temperature, tail) -> None:
    """Raise where the top-k teacher cannot give the divergence: an infinite reverse KL or an unknown tempered tail."""
    if tail == "bucket" and temperature != 1.0:
        raise ValueError("teacher_tail='bucket' needs temperature == 1: the tempered leftover mass is unknown.")
    reverse = (
        divergence == "reverse_kl"
        or (divergence == "generalized_jsd" and beta == 1.0)
        or (divergence == "skew_reverse_kl" and alpha == 0.0)
    )
    if tail == "renormalize" and reverse:
        raise ValueError(
            f"{divergence} against a renormalised top-k teacher is infinite (the student has mass outside the top-k); "
            "use teacher_tail='bucket'."
        )


@torch.no_grad()
def chunked_topk(
    hidden: torch.Tensor,
    lm_head: torch.Tensor,
    k: int,
    *,
    chunk_size: int | None = None,
    vocab_size: int | None = None,
) -> torch.Tensor:
    """
    Ids of the `k` largest logits `hidden[i] @ lm_head[:vocab_size].T` per row, in descending order (as `torch.topk`
    of the full logits), `chunk_size` rows at a time and without gradient. One float32 `[C, V]` buffer.

    Args:
        hidden (`torch.Tensor`):
            Final hidden states of shape `[N, H]`.
        lm_head (`torch.Tensor`):
            Output embedding of shape `[V, H]`.
        k (`int`):
            Ids per row, `1 <= k <= vocab_size`.
        chunk_size (`int` or `None`, *optional*, defaults to `None`):
            Rows per chunk; `None` is the default of [`chunked_distill_loss`].
        vocab_size (`int` or `None`, *optional*, defaults to `None`):
            Use only the first `vocab_size` rows of `lm_head` (padded embedding rows dropped); `None`: all.

    Returns:
        `torch.Tensor`: Long tensor of shape `[N, k]`.
    """
    vocab = _check_head(hidden, lm_head, vocab_size, chunk_size)
    if not 1 <= k <= vocab:
        raise ValueError(f"`k` must be in [1, {vocab}], got {k}.")
    ids_NK = torch.empty(hidden.shape[0], k, dtype=torch.long, device=hidden.device)
    start = 0
    for logits_CV in chunked_logits(hidden, lm_head, chunk_size=chunk_size, vocab_size=vocab):
        ids_NK[start : start + logits_CV.shape[0]] = logits_CV.topk(k, dim=-1).indices
        start += logits_CV.shape[0]
    return ids_NK


def _check_head(hidden: torch.Tensor, lm_head: torch.Tensor, vocab_size: int | None, chunk_size: int | None) -> int:
    """The vocabulary `hidden [N, H] @ lm_head [V, H].T` is sliced to, after checking the shapes and chunk size."""
    if hidden.dim() != 2 or lm_head.dim() != 2 or hidden.shape[1] != lm_head.shape[1]:
        raise ValueError(f"Expected hidden [N, H] and lm_head [V, H], got {tuple(hidden.shape)} and "
                         f"{tuple(lm_head.shape)}.")
    _check_settings(1.0, "sum", chunk_size, None)
    return _shared_vocab_size(lm_head.shape[0], lm_head.shape[0], vocab_size)


@torch.no_grad()
def chunked_logits(
    hidden: torch.Tensor,
    lm_head: torch.Tensor,
    *,
    chunk_size: int | None = None,
    vocab_size: int | None = None,
) -> Iterator[torch.Tensor]:
    """
    The logits `hidden @ lm_head[:vocab_size].T`, `chunk_size` rows at a time and without gradient, in the compute
    dtype of [`chunked_distill_loss`] (float64 for float64 hidden states, float32 otherwise). Every chunk is written
    into the same `[C, V]` buffer: use it before asking for the next one.

    Args:
        hidden (`torch.Tensor`):
            Final hidden states of shape `[N, H]`.
        lm_head (`torch.Tensor`):
            Output embedding of shape `[V, H]`.
        chunk_size (`int` or `None`, *optional*, defaults to `None`):
            Rows per chunk; `None` is the default of [`chunked_distill_loss`].
        vocab_size (`int` or `None`, *optional*, defaults to `None`):
            Use only the first `vocab_size` rows of `lm_head` (padded embedding rows dropped); `None`: all.

    Yields:
        `torch.Tensor`: `[C, vocab_size]` logits of rows `i * C` to `(i + 1) * C` (fewer in the last chunk).
    """
    vocab = _check_head(hidden, lm_head, vocab_size, chunk_size)
    spec = _make_spec(hidden, "generalized_jsd", 0.5, 0.1, 1.0, vocab, chunk_size, False)
    head_VH = _matmul_head(lm_head.detach()[:vocab], hidden, spec.dtype)
    chunk = _rows_per_chunk(spec, hidden.shape[0], 1)
    workspace = _Workspace(min(chunk, max(1, hidden.shape[0])), vocab, spec.dtype, hidden.device)
    for start in range(0, hidden.shape[0], chunk):
        rows = slice(start, start + chunk)
        logits_CV = workspace.take(0, hidden[rows].shape[0])
        _project(logits_CV, hidden.detach()[rows], head_VH, 1.0)
        yield logits_CV
