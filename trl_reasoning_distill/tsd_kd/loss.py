"""TSD-KD: token-selective dual knowledge distillation, as pure loss pieces.

Paper: Explain in Your Own Words: Improving Reasoning via Token-Selective Dual Knowledge Distillation,
https://huggingface.co/papers/2603.13260

    L = L_direct + γ · L_ent + α · L_indirect        (Eq. 13; γ = `entropy_coef`, α = `indirect_coef`)

L_direct is the generalized JSD weighted per token by the detached gate σ((H_S − H_T) / τ) (Eq. 11), L_indirect the
Plackett-Luce NLL of the teacher's ranking of the student's top-K candidates on the opener (Eqs. 4-5, 10), L_ent the
mean student entropy of the top-ρ highest-entropy tokens (Eq. 12). Differences from the authors' code, reproduced
by `reference_code_compat=True`: the code's PL denominator runs over the preceding items, so it trains towards the
reversed teacher ranking (D1); its opener is one cut-off over the flattened micro-batch, exclusive of the crossing
token (D2); one ratio drives both selections (D3); its entropy set keeps the tokens above the ρ-quantile, about
90 %, padding included (D4); β ∈ {0, 1} gives a zero JSD (D6). Labels D1-D6 follow the TSD-KD spec, section 2.9.
"""

import math
from collections.abc import Callable
from dataclasses import dataclass, field, fields

import torch

from ..chunked import chunked_distill_loss, chunked_topk
from ..divergence import entropy, generalized_jsd, global_token_mean, masked_mean
from .selection import (
    ENTROPY_SCOPES,
    _check_choice,
    _selections,
    adaptive_opener_ratio,
    entropy_set_units,
    opener_mask,
    sample_entropy_gap,
    top_entropy_mask,
)

PL_DENOMINATORS = ("remaining", "preceding")
OpenerRatioFn = Callable[[torch.Tensor, torch.Tensor], "float | torch.Tensor"]

__all__ = [  # the selections live in `selection.py` and are part of this module's API too
    "ENTROPY_SCOPES",
    "TSDKDOutput",
    "adaptive_opener_ratio",
    "entropy_gap_gate",
    "entropy_set_units",
    "opener_mask",
    "plackett_luce_loss",
    "sample_entropy_gap",
    "top_entropy_mask",
    "tsd_kd_loss",
    "tsd_kd_loss_chunked",
]


def plackett_luce_loss(
    student_logits: torch.Tensor, teacher_logits: torch.Tensor, top_k: int, *, denominator: str = "remaining"
) -> torch.Tensor:
    """
    Plackett-Luce NLL of the teacher's ranking of the student's top-k candidates, Eq. (4) of the TSD-KD paper.

    At each position the student's `top_k` highest logits are the candidates; the teacher orders them by its own
    logits (stable sort: teacher ties keep the student's order) and the student's raw logits are the PL scores:
    `-sum_k [u_k - log sum_{j>=k} exp u_j]` with `u` the candidate logits in teacher order, best first. The
    gradient reaches only the `top_k` candidate logits (it sums to 0 over them and is negative on the teacher's
    favourite); the top-k choice and the teacher's order carry no gradient, and the teacher never receives one.
    `top_k = 2` is the Bradley-Terry loss `softplus(z_other - z_preferred)`; `top_k = 1` gives 0.

    Args:
        student_logits (`torch.Tensor`):
            Student logits of shape `(N, V)` (any leading dimensions); finite on the top-k.
        teacher_logits (`torch.Tensor`):
            Teacher logits of the same shape.
        top_k (`int`):
            Number of candidates K >= 1; `min(top_k, V)` are used.
        denominator (`str`, *optional*, defaults to `"remaining"`):
            `"remaining"`: Eq. (4), normaliser over the items not yet ranked. `"preceding"`: the released code
            (`logcumsumexp` from the best item), i.e. the PL NLL of the reversed teacher ranking (spec D1).

    Returns:
        `torch.Tensor`: Per-position loss of shape `(N,)` (float32, or float64 for float64 inputs).
    """
    _check_choice("denominator", denominator, PL_DENOMINATORS)
    if top_k < 1:
        raise ValueError(f"`top_k` must be >= 1, got {top_k}.")
    if student_logits.shape != teacher_logits.shape:
        raise ValueError(
            f"Student logits {tuple(student_logits.shape)} and teacher logits "
            f"{tuple(teacher_logits.shape)} must have the same shape."
        )
    candidate_logits_NK, candidate_ids_NK = student_logits.topk(min(top_k, student_logits.shape[-1]), dim=-1)
    return _plackett_luce(candidate_logits_NK, teacher_logits.detach().gather(-1, candidate_ids_NK), denominator)


def _plackett_luce(candidate_logits_NK: torch.Tensor, teacher_scores_NK: torch.Tensor, denominator: str):
    """PL NLL of the teacher's order of K candidates, from the student's candidate logits (student order) and the
    teacher's scores of the same candidates."""
    teacher_order_NK = teacher_scores_NK.argsort(dim=-1, descending=True, stable=True)
    dtype = torch.promote_types(candidate_logits_NK.dtype, torch.float32)
    ranked_NK = candidate_logits_NK.gather(-1, teacher_order_NK).to(dtype)  # student logits, teacher's best first
    if denominator == "remaining":  # Eq. (4): sum over j >= k
        log_norm_NK = ranked_NK.flip(-1).logcumsumexp(dim=-1).flip(-1)
    else:  # released code: sum over j <= k
        log_norm_NK = ranked_NK.logcumsumexp(dim=-1)
    return -(ranked_NK - log_norm_NK).sum(dim=-1)


def entropy_gap_gate(student_entropy: torch.Tensor, teacher_entropy: torch.Tensor, tau: float = 1.0) -> torch.Tensor:
    """
    Uncertainty-gap gate `σ((H_S - H_T) / τ)` of Eq. (11), detached (stop-gradient, paper App. A.2).

    Args:
        student_entropy (`torch.Tensor`):
            Student token entropies in nats, shape `(N,)` (any shape).
        teacher_entropy (`torch.Tensor`):
            Teacher token entropies, same shape.
        tau (`float`, *optional*, defaults to `1.0`):
            Sharpness τ > 0; `1.0` is the released code's plain `σ(H_S - H_T)`, `inf` gives 0.5 everywhere.

    Returns:
        `torch.Tensor`: Gate in (0, 1) of the same shape, without gradient; exactly 0.5 where the entropies are equal.
    """
    if not tau > 0.0:
        raise ValueError(f"`tau` must be > 0, got {tau}.")
    return torch.sigmoid((student_entropy.detach() - teacher_entropy.detach()) / tau)


def _normaliser(local_count: torch.Tensor, global_count, num_processes: int, dtype: torch.dtype) -> torch.Tensor:
    """The factor turning a sum over this micro-batch into its part of a mean: `1 / local_count` (a micro-batch mean)
    without `global_count`, else `num_processes / global_count`, this process's share of the global batch's mean
    (see `divergence.global_token_mean`). A count of 0 gives a factor of 1 on an empty sum, so 0, not NaN."""
    if global_count is None:
        return 1.0 / local_count.to(dtype).clamp_min(1)
    return num_processes / torch.as_tensor(global_count, device=local_count.device).to(dtype).clamp_min(1)


def _entropy_coefficients(selected_BT: torch.Tensor, scope: str, dtype: torch.dtype) -> torch.Tensor:
    """Per-token `c` with `sum_I c · H` the sum of Eq. (12) over this micro-batch's units (`entropy_set_units`): the
    mean over I of each row (`"sequence"`), or 1 per selected token (`"batch"`). Zero off I; divide by the units."""
    selected_BT = selected_BT.to(dtype)
    if scope == "batch":
        return selected_BT
    return selected_BT / selected_BT.sum(dim=-1, keepdim=True).clamp_min(1)


def _selective_entropy(entropy_BT: torch.Tensor, selected_BT: torch.Tensor, scope: str, factor) -> torch.Tensor:
    """Eq. (12) from the per-token coefficients of `_entropy_coefficients`, times the units' normaliser `factor`."""
    coefficients_BT = _entropy_coefficients(selected_BT, scope, entropy_BT.dtype) * factor
    return (torch.where(selected_BT, entropy_BT, 0.0) * coefficients_BT).sum()


@dataclass
class _Normalisers:
    """Each term's factor (`_normaliser`) as used in the loss, and the one giving this micro-batch's own mean."""

    used: dict[str, torch.Tensor]
    local: dict[str, torch.Tensor]

    @classmethod
    def of(cls, counts: dict, global_counts: dict, num_processes: int, dtype: torch.dtype) -> "_Normalisers":
        used = {name: _normaliser(counts[name], global_counts[name], num_processes, dtype) for name in counts}
        local = {name: _normaliser(counts[name], None, num_processes, dtype) for name in counts}
        return cls(used, local)

    def mean(self, name: str, term: torch.Tensor) -> torch.Tensor:
        """`term` (normalised by `used`) as this micro-batch's mean, detached, for logging."""
        return term.detach() * (self.local[name] / self.used[name])


@dataclass
class TSDKDOutput:
    """
    Result of [`tsd_kd_loss`]. `loss`, `direct`, `indirect` and `entropy` are 0-dim tensors on the autograd graph,
    with `loss = direct + entropy_coef · entropy + indirect_coef · indirect` (each term normalised as the call asked:
    this micro-batch's mean, or its share of the global batch's); the rest are detached statistics: `gate_mean` (mean
    gate over valid tokens, 1 without gate), `opener_len` (mean opener tokens per non-empty row), `opener_frac`
    (opener / valid tokens) and `entropy_frac` (|I| / valid tokens). `micro_batch_means` holds the three terms as
    this micro-batch's own means, which `metrics` reports.
    """

    loss: torch.Tensor
    direct: torch.Tensor
    indirect: torch.Tensor
    entropy: torch.Tensor
    gate_mean: torch.Tensor
    opener_len: torch.Tensor
    opener_frac: torch.Tensor
    entropy_frac: torch.Tensor
    micro_batch_means: dict[str, torch.Tensor] = field(default_factory=dict)

    @property
    def metrics(self) -> dict[str, float]:
        """Every statistic as a Python float, for logging under `tsd_kd/<name>`; the three terms as this micro-batch's
        means, so that logged values do not depend on gradient accumulation or the number of processes."""
        values = {f.name: getattr(self, f.name) for f in fields(self) if f.name not in ("loss", "micro_batch_means")}
        return {name: value.detach().item() for name, value in {**values, **self.micro_batch_means}.items()}


def _check_loss_args(student_logits, teacher_logits, mask, opener_ratio, entropy_ratio, reference_code_compat):
    """Shape checks and the compat-mode constraints of [`tsd_kd_loss`]."""
    if student_logits.shape != teacher_logits.shape or mask.shape != student_logits.shape[:-1]:
        raise ValueError(
            f"Expected student and teacher logits of one shape (B, T, V) (one vocabulary) and a (B, T) mask; got "
            f"{tuple(student_logits.shape)}, {tuple(teacher_logits.shape)} and {tuple(mask.shape)}."
        )
    if reference_code_compat and (isinstance(opener_ratio, torch.Tensor) or opener_ratio != entropy_ratio):
        raise ValueError(
            f"`reference_code_compat=True` ties both selections to one float ratio (spec D3): set "
            f"`entropy_ratio` equal to `opener_ratio`; got {opener_ratio} and {entropy_ratio}."
        )


def _direct_per_token(student_logits, teacher_logits, beta, temperature, reference_code_compat):
    """Per-token generalized JSD; the released code's β ∈ {0, 1} gives 0 (its mixture collapses, D6)."""
    jsd_BT = generalized_jsd(student_logits, teacher_logits.detach(), beta=beta, temperature=temperature)
    return jsd_BT * 0.0 if reference_code_compat and beta in (0.0, 1.0) else jsd_BT


def tsd_kd_loss(
    student_logits: torch.Tensor,
    teacher_logits: torch.Tensor,
    mask: torch.Tensor,
    *,
    beta: float = 0.9,
    top_k: int = 10,
    opener_ratio: float | torch.Tensor | OpenerRatioFn = 0.1,
    entropy_ratio: float = 0.1,
    indirect_coef: float = 0.1,
    entropy_coef: float = 1.0,
    tau: float = 1.0,
    use_gate: bool = True,
    entropy_scope: str = "sequence",
    temperature: float = 1.0,
    reference_code_compat: bool = False,
    num_items_in_batch: int | torch.Tensor | None = None,
    num_opener_tokens: int | torch.Tensor | None = None,
    num_entropy_units: int | torch.Tensor | None = None,
    num_processes: int = 1,
    selections: tuple[torch.Tensor, torch.Tensor] | None = None,
) -> TSDKDOutput:
    """
    TSD-KD objective, Eq. (13): `L = L_direct + entropy_coef · L_ent + indirect_coef · L_indirect`.

    L_direct is the gated JSD mean over valid tokens (Eq. 11), L_indirect the mean PL loss over opener tokens
    (Eq. 5 as a mean, spec §8 item 6), L_ent the selective entropy (Eq. 12: per response, the mean over its set I,
    then the mean over responses; scope `"batch"`: the mean over I). Defaults are the paper's (spec §3). With
    `use_gate=False, indirect_coef=0, entropy_coef=0` the loss is exactly GKD's masked-mean generalized JSD.

    Each mean runs over this micro-batch, or, given its global count, over the whole global batch (every accumulation
    micro-batch on every process): the term is then `sum · num_processes / count`, this micro-batch's share, so the
    summed (and process-averaged) loss and gradient are those of one large batch, whatever the per-device batch size.
    The normalisers: `num_items_in_batch` valid tokens (direct), `num_opener_tokens` opener tokens (indirect) and
    `num_entropy_units` units of I (entropy: responses with a non-empty I, or with scope `"batch"` selected tokens;
    [`entropy_set_units`]).

    Args:
        student_logits (`torch.Tensor`):
            Student logits of shape `(B, T, V)`, causally shifted onto the completion tokens.
        teacher_logits (`torch.Tensor`):
            Teacher logits of the same shape (same vocabulary); receives no gradient.
        mask (`torch.Tensor`):
            Bool or 0/1 tensor of shape `(B, T)`: valid completion tokens (`labels != -100`).
        beta (`float`, *optional*, defaults to `0.9`):
            JSD interpolation β (spec §3: paper and code, "as suggested by GKD"; App. A.5 ablates it); 0 is
            forward KL, 1 reverse KL (TRL's convention).
        top_k (`int`, *optional*, defaults to `10`):
            Student candidates K re-ranked by the teacher (spec §3; paper App. A.3, hard-coded in the code).
        opener_ratio (`float`, `torch.Tensor` or callable, *optional*, defaults to `0.1`):
            Opener entropy ratio p (spec §3; paper Fig. 3), per-row ratios `(B,)` from [`adaptive_opener_ratio`]
            (App. A.7), or a function of the detached student and teacher token entropies `(B, T)` returning either.
        entropy_ratio (`float`, *optional*, defaults to `0.1`):
            Fraction ρ of highest-entropy tokens whose entropy is minimised (spec §3; paper App. A.4).
        indirect_coef (`float`, *optional*, defaults to `0.1`):
            Weight α of L_indirect (spec §3; paper App. A.9, the code's `indirect_kd_alpha`).
        entropy_coef (`float`, *optional*, defaults to `1.0`):
            Weight γ of L_ent (spec §3 and §2.7: Eq. 13 weighs it equal to the direct term).
        tau (`float`, *optional*, defaults to `1.0`):
            Gate sharpness τ (spec §3, §8 item 5: the paper gives no value; 1 is the released code's gate).
        use_gate (`bool`, *optional*, defaults to `True`):
            `False` weights every token 1 (Table 3, row 1).
        entropy_scope (`str`, *optional*, defaults to `"sequence"`):
            Scope of the entropy selection, see [`top_entropy_mask`].
        temperature (`float`, *optional*, defaults to `1.0`):
            KD temperature T dividing both logits in every term (spec §3); no `T²` rescaling.
        reference_code_compat (`bool`, *optional*, defaults to `False`):
            Compute what the authors' code computes (D1-D4, D6 of the module docstring); needs a float
            `opener_ratio` equal to `entropy_ratio`, and ignores `entropy_scope`. The code's tensors start at the
            completion, so columns before the batch's first valid column count as prompt, the rest as the code's
            columns (padding included); its all-masked batch (NaN there) gives 0 here.
        num_items_in_batch (`int` or `torch.Tensor` or `None`, *optional*, defaults to `None`):
            Loss-token count of the global batch (direct term); `None` normalises by this micro-batch.
        num_opener_tokens (`int` or `torch.Tensor` or `None`, *optional*, defaults to `None`):
            Opener-token count of the global batch (indirect term); `None` normalises by this micro-batch.
        num_entropy_units (`int` or `torch.Tensor` or `None`, *optional*, defaults to `None`):
            Units of the entropy sets of the global batch (entropy term); `None` normalises by this micro-batch.
        num_processes (`int`, *optional*, defaults to `1`):
            Data-parallel processes, used with the global counts.
        selections (`tuple[torch.Tensor, torch.Tensor]` or `None`, *optional*, defaults to `None`):
            The opener and the entropy set I as bool `(B, T)` masks, chosen beforehand (the trainer chooses them
            while counting the global batch); `None` chooses them here from the student's entropies.

    Returns:
        [`TSDKDOutput`]: The loss (float32, or float64 for float64 logits) and its terms.
    """
    valid_BT = mask.bool()
    student_entropy_BT = entropy(student_logits, temperature)  # with gradient: L_ent differentiates it
    teacher_entropy_BT = entropy(teacher_logits.detach(), temperature)
    if callable(opener_ratio) and selections is None:
        opener_ratio = opener_ratio(student_entropy_BT.detach(), teacher_entropy_BT)
    _check_loss_args(student_logits, teacher_logits, mask, opener_ratio, entropy_ratio, reference_code_compat)
    gate_BT = entropy_gap_gate(student_entropy_BT, teacher_entropy_BT, tau) if use_gate else None
    jsd_BT = _direct_per_token(student_logits, teacher_logits, beta, temperature, reference_code_compat)
    weighted_BT = jsd_BT if gate_BT is None else gate_BT * jsd_BT  # Eq. (11)
    opener_BT, selected_BT = selections if selections is not None else _selections(
        student_entropy_BT, valid_BT, opener_ratio, entropy_ratio, entropy_scope, reference_code_compat
    )
    scope = "batch" if reference_code_compat else entropy_scope  # the code: one mean over I, padding included
    norms = _Normalisers.of(
        {"direct": valid_BT.sum(), "indirect": opener_BT.sum(), "entropy": entropy_set_units(selected_BT, scope)},
        {"direct": num_items_in_batch, "indirect": num_opener_tokens, "entropy": num_entropy_units},
        num_processes, jsd_BT.dtype,
    )
    pl_N = plackett_luce_loss(
        student_logits[opener_BT] / temperature,
        teacher_logits.detach()[opener_BT],
        top_k,
        denominator="preceding" if reference_code_compat else "remaining",
    )  # Eqs. (4)-(5)
    indirect = pl_N.sum() * norms.used["indirect"]
    entropy_term = _selective_entropy(student_entropy_BT, selected_BT, scope, norms.used["entropy"])  # Eq. (12)
    direct = global_token_mean(weighted_BT, valid_BT, num_items_in_batch, num_processes)
    loss = direct + entropy_coef * entropy_term + indirect_coef * indirect  # Eq. (13)
    return _output(loss, direct, indirect, entropy_term, gate_BT, opener_BT, selected_BT, valid_BT, norms)


def _output(loss, direct, indirect, entropy_term, gate_BT, opener_BT, selected_BT, valid_BT, norms) -> TSDKDOutput:
    """Pack the terms and the detached logging statistics."""
    count = valid_BT.sum().clamp_min(1)
    nonempty_rows = valid_BT.any(dim=-1).sum().clamp_min(1)
    gate_mean = masked_mean(gate_BT, valid_BT) if gate_BT is not None else torch.ones_like(direct.detach())
    return TSDKDOutput(
        loss=loss,
        direct=direct,
        indirect=indirect,
        entropy=entropy_term,
        gate_mean=gate_mean,
        opener_len=opener_BT.sum() / nonempty_rows,
        opener_frac=opener_BT.sum() / count,
        entropy_frac=selected_BT.sum() / count,
        micro_batch_means={name: norms.mean(name, term)
                           for name, term in (("direct", direct), ("indirect", indirect), ("entropy", entropy_term))},
    )


def tsd_kd_loss_chunked(
    student_hidden: torch.Tensor,
    student_lm_head: torch.Tensor,
    teacher_hidden: torch.Tensor,
    teacher_lm_head: torch.Tensor,
    mask: torch.Tensor,
    *,
    beta: float = 0.9,
    top_k: int = 10,
    opener_ratio: float | torch.Tensor | OpenerRatioFn = 0.1,
    entropy_ratio: float = 0.1,
    indirect_coef: float = 0.1,
    entropy_coef: float = 1.0,
    tau: float = 1.0,
    use_gate: bool = True,
    entropy_scope: str = "sequence",
    temperature: float = 1.0,
    num_items_in_batch: int | torch.Tensor | None = None,
    num_opener_tokens: int | torch.Tensor | None = None,
    num_entropy_units: int | torch.Tensor | None = None,
    num_processes: int = 1,
    selections: tuple[torch.Tensor, torch.Tensor] | None = None,
    chunk_size: int | None = None,
    vocab_size: int | None = None,
) -> TSDKDOutput:
    """
    [`tsd_kd_loss`] from hidden states and LM heads, without the `[B, T, V]` logits of either model.

    (1) One fused [`chunked_distill_loss`] pass gives the gated JSD and its gradient, the gate formed in each chunk
    (`gate_tau`), and both models' token entropies. (2) The opener and the entropy set follow from those entropies.
    (3) The entropy term runs a second chunked pass over the rows of I only (about `entropy_ratio` of the tokens),
    and (4) the Plackett-Luce term needs, on the opener rows only, the student's top-K ids (a chunked no-grad
    pass) and both models' logits of those K candidates. The cost over GKD is therefore about the share of tokens
    in I and in the opener, not a second full pass. Same value and gradient as [`tsd_kd_loss`] on
    `hidden @ lm_head.T`. The released code's variant is not offered: use [`tsd_kd_loss`] for
    `reference_code_compat`.

    Args:
        student_hidden (`torch.Tensor`):
            Student final hidden states of shape `(B, T, H)`, causally shifted onto the completion tokens.
        student_lm_head (`torch.Tensor`):
            Student output embedding of shape `(V_s, H)`.
        teacher_hidden (`torch.Tensor`):
            Teacher final hidden states of shape `(B, T, H')`; receives no gradient.
        teacher_lm_head (`torch.Tensor`):
            Teacher output embedding of shape `(V_t, H')`.
        mask (`torch.Tensor`):
            Bool or 0/1 tensor of shape `(B, T)`: valid completion tokens.
        chunk_size (`int` or `None`, *optional*, defaults to `None`):
            Tokens per chunk, see [`chunked_distill_loss`].
        vocab_size (`int` or `None`, *optional*, defaults to `None`):
            The tokenizer's length: both heads are sliced to their first `vocab_size` rows.
        **others**: as in [`tsd_kd_loss`].

    Returns:
        [`TSDKDOutput`]: The loss (float32, or float64 for float64 inputs) and its terms.
    """
    if student_hidden.dim() != 3 or teacher_hidden.shape[:2] != student_hidden.shape[:2] or (
        mask.shape != student_hidden.shape[:2]
    ):
        raise ValueError(
            f"Expected student and teacher hidden states (B, T, H), (B, T, H') and a (B, T) mask; got "
            f"{tuple(student_hidden.shape)}, {tuple(teacher_hidden.shape)} and {tuple(mask.shape)}."
        )
    valid_BT = mask.bool()
    valid_N = valid_BT.flatten()
    student_NH, teacher_NH = student_hidden.flatten(0, 1), teacher_hidden.detach().flatten(0, 1)
    heads = (student_NH, student_lm_head, teacher_NH, teacher_lm_head.detach())
    chunks = {"temperature": temperature, "chunk_size": chunk_size, "vocab_size": vocab_size}
    dtype = torch.float64 if student_hidden.dtype == torch.float64 else torch.float32
    per_token = _normaliser(valid_BT.sum(), num_items_in_batch, num_processes, dtype)
    # without the gate, τ = ∞ makes every gate exactly 0.5 (undone by the weights' factor 2, also exact), so that the
    # same fused pass still returns the teacher's entropies
    gate_tau, gate_factor = (tau, 1.0) if use_gate else (math.inf, 2.0)
    direct, entropies_N2 = chunked_distill_loss(
        *heads, valid_N * (gate_factor * per_token), divergence="generalized_jsd", beta=beta, mask=valid_N,
        return_entropy=True, gate_tau=gate_tau, **chunks,
    )  # Eq. (11)
    student_entropy_BT, teacher_entropy_BT = entropies_N2.unbind(dim=-1)
    student_entropy_BT, teacher_entropy_BT = student_entropy_BT.view(mask.shape), teacher_entropy_BT.view(mask.shape)
    if callable(opener_ratio) and selections is None:
        opener_ratio = opener_ratio(student_entropy_BT, teacher_entropy_BT)
    opener_BT, selected_BT = selections if selections is not None else _selections(
        student_entropy_BT, valid_BT, opener_ratio, entropy_ratio, entropy_scope, reference_code_compat=False
    )
    norms = _Normalisers.of(
        {"direct": valid_BT.sum(), "indirect": opener_BT.sum(),
         "entropy": entropy_set_units(selected_BT, entropy_scope)},
        {"direct": num_items_in_batch, "indirect": num_opener_tokens, "entropy": num_entropy_units},
        num_processes, dtype,
    )
    coefficients_N = norms.used["entropy"] * _entropy_coefficients(selected_BT, entropy_scope, dtype).flatten()
    entropy_term = chunked_distill_loss(
        *heads, torch.zeros_like(coefficients_N), mask=selected_BT.flatten(), entropy_weights=coefficients_N, **chunks
    )  # Eq. (12): only the rows of I are computed
    pl_N = _plackett_luce_on_rows(*heads, opener_BT.flatten(), top_k, temperature, chunk_size, vocab_size)
    indirect = pl_N.sum() * norms.used["indirect"]
    loss = direct + entropy_coef * entropy_term + indirect_coef * indirect  # Eq. (13)
    gate_BT = entropy_gap_gate(student_entropy_BT, teacher_entropy_BT, tau) if use_gate else None
    return _output(loss, direct, indirect, entropy_term, gate_BT, opener_BT, selected_BT, valid_BT, norms)


def _plackett_luce_on_rows(student_NH, student_VH, teacher_NH, teacher_VH, rows_N, top_k, temperature, chunk, vocab):
    """Eqs. (4)-(5) on `rows_N`: the student's top-K ids without gradient, chunked; then both models' logits of
    those K candidates only (`[R, K]`, from the gathered head rows), the student's with gradient."""
    vocab = vocab if vocab is not None else student_VH.shape[0]
    hidden_RH, teacher_RH = student_NH[rows_N], teacher_NH[rows_N]
    ids_RK = chunked_topk(hidden_RH.detach(), student_VH.detach(), min(top_k, vocab), chunk_size=chunk,
                          vocab_size=vocab)
    dtype = torch.float64 if hidden_RH.dtype == torch.float64 else torch.float32
    candidates_RK = torch.einsum("rh,rkh->rk", hidden_RH.to(dtype), student_VH[ids_RK].to(dtype)) / temperature
    teacher_RK = torch.einsum("rh,rkh->rk", teacher_RH.to(dtype), teacher_VH[ids_RK].to(dtype))
    return _plackett_luce(candidates_RK, teacher_RK, "remaining")


