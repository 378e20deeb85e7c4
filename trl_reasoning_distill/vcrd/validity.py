"""Local validity judges of VCRD: the proposals scored under each prefix, and the scorers that give `r(c, a) ∈ [0, 1]`.

Paper: Validity-Calibrated Reasoning Distillation, https://huggingface.co/papers/2605.04078 (§2.1-2.2, Algorithm 1).

At every prefix `c_{t-1}` of a rollout the teacher and the student each propose a next step, and a frozen judge scores
both under that same prefix; `loss.validity_weights` turns the two scores into `w = r(c, a^S) / (r(c, a^T) + ε)`.
[`build_proposal_pairs`] lays out what is scored: the same-prefix proposals of the paper's §2.1 (default, spec A2)
or the position-aligned rollout steps of its literal Algorithm 1. A step is one token id in the paper (spec §2.1); a
tuple of ids or a text step gives the step-level extension (spec A1).

Scorers ([`ValidityScorer`]):
- [`ProcessRewardModelScorer`]: a Hugging Face PRM (value head or 2-label head), scoring every position of a rollout
  in one packed forward (spec §2.4).
- [`StepCheckerScorer`]: the toy world's exact step checker (`toy/prm.py`), for text steps.

The PRM-free variant (paper §10.4) is not a scorer: it scores no proposal pair, it weights each token directly from
the logits the loss already has. Compute it with `loss.teacher_prob_weights` and pass it as the loss weights.
"""

from collections.abc import Hashable, Sequence
from dataclasses import dataclass, field
from itertools import accumulate
from typing import TYPE_CHECKING, Generic, NamedTuple, Protocol, TypeVar

import torch
import torch.nn.functional as F

from ..toy.prm import score_steps, split_steps

if TYPE_CHECKING:
    from transformers import PreTrainedTokenizerBase

PROPOSAL_SOURCES = ("same_prefix", "aligned_rollout")
PROPOSAL_STRATEGIES = ("sample", "greedy")
SCORING_IMPLS = ("packed", "loop")

Step = TypeVar("Step", bound=Hashable)  # a token id (int), a tuple of token ids, or a text step (str)


@dataclass(frozen=True)
class ProposalPairs(Generic[Step]):
    """
    The two proposals at every prefix of one rollout: at position `t` the prefix is `(x, rollout[:t])`, and the
    teacher proposes `teacher[t]` and the student `student[t]` (one of them is usually `rollout[t]` itself).
    """

    rollout: tuple[Step, ...]
    teacher: tuple[Step, ...]
    student: tuple[Step, ...]

    def __post_init__(self):
        if not len(self.rollout) == len(self.teacher) == len(self.student):
            raise ValueError(
                f"A rollout of {len(self.rollout)} steps needs one teacher and one student proposal per step, got "
                f"{len(self.teacher)} and {len(self.student)}."
            )

    def __len__(self) -> int:
        return len(self.rollout)


class ProposalScores(NamedTuple):
    """Validities of one rollout's proposals: `teacher[t] = r(c_t, a^T_t)`, `student[t] = r(c_t, a^S_t)`, `(L,)`."""

    teacher: torch.Tensor
    student: torch.Tensor


class ValidityScorer(Protocol):
    """A frozen local judge `r(c, a) ∈ [0, 1]` (paper §2.2; Algorithm 1, line 1)."""

    def __call__(self, prompts: Sequence[str], pairs: Sequence[ProposalPairs]) -> list[ProposalScores]:
        """Score both proposals at every prefix of each rollout; `prompts[i]` is the raw prompt of `pairs[i]`."""
        ...


def score_proposals(
    scorer: ValidityScorer, prompts: Sequence[str], pairs: Sequence[ProposalPairs]
) -> list[ProposalScores]:
    """
    `scorer(prompts, pairs)`, checked: one [`ProposalScores`] per rollout, in order, each with one teacher and one
    student score per step. A judge that returns another count is a `ValueError` naming the judge, the rollout and
    both counts, instead of an `IndexError` (or a silently unweighted row) where the scores are laid on the tokens.
    """
    scores = list(scorer(prompts, pairs))
    judge = type(scorer).__name__
    if len(scores) != len(pairs):
        raise ValueError(f"the validity judge {judge} returned scores for {len(scores)} rollouts, expected "
                         f"{len(pairs)} (one ProposalScores per rollout, in order).")
    for i, (score, pair) in enumerate(zip(scores, pairs)):
        if not isinstance(score, tuple) or len(score) != 2:
            raise ValueError(f"the validity judge {judge} returned {score!r:.80} for rollout {i}, expected "
                             "ProposalScores(teacher, student).")
        for side, values in zip(("teacher", "student"), score):
            if len(values) != len(pair):
                raise ValueError(f"the validity judge {judge} returned {len(values)} {side} scores for rollout {i}, "
                                 f"expected {len(pair)} (one per step).")
    return scores


def _aligned(own: Sequence, other: Sequence) -> tuple:
    """`other[t]` at each position of `own`; past the end of `other`, `own[t]` (identical proposals: parity)."""
    return tuple(other[t] if t < len(other) else own[t] for t in range(len(own)))


def build_proposal_pairs(
    teacher_steps: Sequence[Step],
    student_steps: Sequence[Step],
    *,
    source: str = "same_prefix",
    student_on_teacher_prefix: Sequence[Step] | None = None,
    teacher_on_student_prefix: Sequence[Step] | None = None,
) -> tuple[ProposalPairs, ProposalPairs]:
    """
    The scoring pairs of both rollouts of one prompt: `(pairs on the teacher prefixes, pairs on the student prefixes)`.

    `"same_prefix"` (default; paper §2.1, §3.2, Fig. 1, Table 8; spec §2.3 and A2): on the teacher prefix `c^T_{t-1}`
    the teacher's proposal is its rollout step `y^T_t` and the student's is `student_on_teacher_prefix[t]`, drawn from
    `q(·|c^T_{t-1})` (see [`propose_tokens`]); on the student prefix `c^S_{t-1}` the student's proposal is `y^S_t` and
    the teacher's is `teacher_on_student_prefix[t]`, drawn from `p(·|c^S_{t-1})`.

    `"aligned_rollout"` (Algorithm 1, lines 5-6, read literally): the other model's proposal is the step at the same
    position of its own independent rollout. Past the end of the shorter rollout there is none, and the own step is
    used for both (parity, `w ≈ 1`). No drawn proposals are accepted in this mode.

    Args:
        teacher_steps (`Sequence`):
            The teacher rollout `y^T`, one step (token id, tuple of ids, or text) per position.
        student_steps (`Sequence`):
            The student rollout `y^S`.
        source (`str`, *optional*, defaults to `"same_prefix"`):
            `"same_prefix"` or `"aligned_rollout"`.
        student_on_teacher_prefix (`Sequence` or `None`, *optional*, defaults to `None`):
            `"same_prefix"` only: the student's proposal at each teacher prefix, `len(teacher_steps)` of them.
        teacher_on_student_prefix (`Sequence` or `None`, *optional*, defaults to `None`):
            `"same_prefix"` only: the teacher's proposal at each student prefix, `len(student_steps)` of them.

    Returns:
        `tuple[ProposalPairs, ProposalPairs]`: Pairs on the teacher rollout, then on the student rollout.
    """
    drawn = (student_on_teacher_prefix, teacher_on_student_prefix)
    if source == "aligned_rollout":
        if drawn != (None, None):
            raise ValueError("`source='aligned_rollout'` takes its proposals from the rollouts; pass no drawn ones.")
        student_on_teacher_prefix = _aligned(teacher_steps, student_steps)
        teacher_on_student_prefix = _aligned(student_steps, teacher_steps)
    elif source == "same_prefix":
        if None in drawn:
            raise ValueError(
                "`source='same_prefix'` needs `student_on_teacher_prefix` and `teacher_on_student_prefix`, the other "
                "model's proposal under each prefix (e.g. `propose_tokens` on its logits)."
            )
    else:
        raise ValueError(f"`source` must be one of {', '.join(map(repr, PROPOSAL_SOURCES))}, got {source!r}.")
    teacher_steps, student_steps = tuple(teacher_steps), tuple(student_steps)
    return (
        ProposalPairs(teacher_steps, teacher_steps, tuple(student_on_teacher_prefix)),
        ProposalPairs(student_steps, tuple(teacher_on_student_prefix), student_steps),
    )


def propose_tokens(
    logits: torch.Tensor,
    strategy: str = "sample",
    temperature: float = 1.0,
    generator: torch.Generator | None = None,
) -> torch.Tensor:
    """
    The other model's token proposal at every prefix, from the logits the loss already computes (spec §2.3): a sample
    of `softmax(logits / τ)` or the argmax. The spec recommends sampling at τ = 1 in PRM mode (A4); the PRM-free
    variant uses the student's greedy token (paper §10.4).

    Args:
        logits (`torch.Tensor`):
            Logits of shape `(..., V)`, e.g. the student's on the teacher rollout.
        strategy (`str`, *optional*, defaults to `"sample"`):
            `"sample"` or `"greedy"`.
        temperature (`float`, *optional*, defaults to `1.0`):
            Sampling temperature τ > 0 (spec §9, `proposal_temperature`); ignored by `"greedy"`.
        generator (`torch.Generator` or `None`, *optional*, defaults to `None`):
            Random generator for reproducible samples.

    Returns:
        `torch.Tensor`: Long tensor of shape `(...)`.
    """
    if strategy not in PROPOSAL_STRATEGIES:
        raise ValueError(f"`strategy` must be one of {', '.join(map(repr, PROPOSAL_STRATEGIES))}, got {strategy!r}.")
    if strategy == "greedy":
        return logits.detach().argmax(dim=-1)
    if not temperature > 0.0:
        raise ValueError(f"`temperature` must be > 0, got {temperature}.")
    probs_NV = F.softmax(logits.detach().float() / temperature, dim=-1).reshape(-1, logits.shape[-1])
    return torch.multinomial(probs_NV, 1, generator=generator).reshape(logits.shape[:-1])


# ---------------------------------------------------------------------------------------------------------------------
# The toy world's exact judge
# ---------------------------------------------------------------------------------------------------------------------


def toy_steps(completion: str) -> tuple[str, ...]:
    """The text steps of a toy completion (`toy.prm.split_steps`): its `<think>` lines, then the boxed answer."""
    return tuple(step.text for step in split_steps(completion))


def _toy_step_score(problem: str, prefix: Sequence[str], candidate: str) -> float:
    """Exact validity of `candidate` after the steps `prefix`; 0 for anything that is not one well-formed step."""
    lines = [*prefix] if candidate.startswith("\\boxed") else [*prefix, candidate]
    answer = candidate if candidate.startswith("\\boxed") else ""
    completion = "<think>" + "\n".join(lines) + "</think>" + answer
    if toy_steps(completion) != (*prefix, candidate):
        return 0.0
    return score_steps(completion, problem)[-1]


class StepCheckerScorer:
    """
    Exact toy judge: `r(c, a) = 1` if the text step `a` is a correct step after the steps of `c`, else 0.

    The check is `toy.prm.score_steps`: an equation line must be internally consistent, `So the answer is n.` must
    repeat the value the prefix reached, and the boxed answer must solve the prompt's problem (`47+38-19=?`). A step
    is one line, as [`toy_steps`] splits a completion, so this is the step-level extension of the paper's token-level
    judge (spec A1). Scores are {0, 1}, so the ratio of Eq. (1) is 0, about 1, or `1/ε` unless clipped.
    """

    def __call__(self, prompts: Sequence[str], pairs: Sequence[ProposalPairs]) -> list[ProposalScores]:
        if len(prompts) != len(pairs):
            raise ValueError(f"Got {len(prompts)} prompts for {len(pairs)} rollouts.")
        return [self._score_rollout(prompt, pair) for prompt, pair in zip(prompts, pairs, strict=True)]

    @staticmethod
    def _score_rollout(problem: str, pairs: ProposalPairs) -> ProposalScores:
        def scores(candidates: Sequence[str]) -> torch.Tensor:
            return torch.tensor([_toy_step_score(problem, pairs.rollout[:t], a) for t, a in enumerate(candidates)])

        return ProposalScores(scores(pairs.teacher), scores(pairs.student))


# ---------------------------------------------------------------------------------------------------------------------
# Process reward models, with packed sibling scoring (spec §2.4)
# ---------------------------------------------------------------------------------------------------------------------


def _step_ids(step: int | Sequence[int]) -> tuple[int, ...]:
    """A step as a tuple of token ids (a bare id is a one-token step)."""
    ids = (int(step),) if isinstance(step, int) else tuple(int(i) for i in step)
    if not ids:
        raise ValueError("A step must hold at least one token id.")
    return ids


@dataclass
class PackedRollout:
    """
    One packed PRM input: `[prompt; rollout]`, then sibling segments. Token `j` attends to the first `visible[j]`
    tokens (the prefix it is scored after) and to tokens `segment_start[j]..j` (its own segment so far).
    """

    input_ids: list[int]
    position_ids: list[int]
    visible: list[int]
    segment_start: list[int]
    teacher_index: list[int] = field(default_factory=list)
    student_index: list[int] = field(default_factory=list)

    @classmethod
    def causal(cls, ids: list[int]) -> "PackedRollout":
        """A plain causal sequence, before any sibling segment."""
        return cls(list(ids), list(range(len(ids))), [0] * len(ids), [0] * len(ids))

    def append(self, ids: Sequence[int], attach: int) -> int:
        """Add a segment that continues the first `attach` tokens; returns the index of its last token."""
        start = len(self.input_ids)
        self.input_ids += ids
        self.position_ids += range(attach, attach + len(ids))
        self.visible += [attach] * len(ids)
        self.segment_start += [start] * len(ids)
        return len(self.input_ids) - 1


def pack_rollout(
    prompt_ids: Sequence[int], pairs: ProposalPairs, separator_token_id: int | None = None
) -> PackedRollout:
    """
    Lay out one rollout so that a single forward scores both proposals at every prefix (spec §2.4).

    The rollout's own step `y_t` is read in place: at its last token, or (with a separator) at a separator sibling
    that continues `[prompt; y_{≤t}]`. Any other proposal `a` becomes a sibling segment `a (+ separator)` that sees
    only `[prompt; y_{<t}]` and sits at `y_t`'s positions, so it gets exactly the hidden states of a separate forward
    over `[prompt; y_{<t}; a]`. Identical proposals at one position share one read-out.
    """
    steps = [_step_ids(step) for step in pairs.rollout]
    bounds = list(accumulate((len(step) for step in steps), initial=len(prompt_ids)))  # step t: bounds[t:t + 2]
    packed = PackedRollout.causal([*prompt_ids, *(i for step in steps for i in step)])
    tail = [] if separator_token_id is None else [separator_token_id]
    readouts: dict[tuple[int, tuple[int, ...]], int] = {}

    def readout(t: int, candidate: Step) -> int:
        ids = _step_ids(candidate)
        if (t, ids) not in readouts:
            if ids == steps[t]:  # the rollout's own step, already in place
                index = bounds[t + 1] - 1 if not tail else packed.append(tail, bounds[t + 1])
            else:
                index = packed.append([*ids, *tail], bounds[t])
            readouts[t, ids] = index
        return readouts[t, ids]

    packed.teacher_index = [readout(t, a) for t, a in enumerate(pairs.teacher)]
    packed.student_index = [readout(t, a) for t, a in enumerate(pairs.student)]
    return packed


def packed_attention_mask(packed: Sequence[PackedRollout], dtype: torch.dtype) -> torch.Tensor:
    """
    Additive 4-D attention mask `(B, 1, N, N)` of right-padded packed rollouts: 0 where token `j` may attend to
    token `i`, the dtype's minimum elsewhere. Padding attends to itself only, so no row is empty.
    """
    N = max(len(p.input_ids) for p in packed)
    visible_BN = torch.zeros(len(packed), N, dtype=torch.long)
    segment_BN = torch.arange(N).repeat(len(packed), 1)
    for b, p in enumerate(packed):
        visible_BN[b, : len(p.visible)] = torch.tensor(p.visible)
        segment_BN[b, : len(p.segment_start)] = torch.tensor(p.segment_start)
    query_N1, key_1N = torch.arange(N)[:, None], torch.arange(N)[None, :]
    allowed_BNN = (key_1N < visible_BN[..., None]) | ((key_1N >= segment_BN[..., None]) & (key_1N <= query_N1))
    return torch.zeros(allowed_BNN.shape, dtype=dtype).masked_fill_(~allowed_BNN, torch.finfo(dtype).min)[:, None]


def positive_probability(logits: torch.Tensor) -> torch.Tensor:
    """PRM score from classification logits `(..., C)`: `sigmoid` of a value head (C = 1, Skywork), or
    `softmax[..., 1]` of a 2-label head (Qwen2.5-Math-PRM). Returns float32 `(...)`."""
    if logits.shape[-1] == 1:
        return torch.sigmoid(logits[..., 0].float())
    if logits.shape[-1] == 2:
        return torch.softmax(logits.float(), dim=-1)[..., 1]
    raise ValueError(f"A PRM head needs 1 (value) or 2 (negative, positive) labels, got {logits.shape[-1]}.")


class ProcessRewardModelScorer:
    """
    Token-level judge from a process reward model: `r(c, a)` is the PRM's probability read at the candidate `a`
    appended to `[PRM prompt(x); c]` (spec §2.4, A5), or at a separator appended after it.

    The model is a Hugging Face token-classification model over the policy's vocabulary, called as
    `model(input_ids=, attention_mask=, position_ids=, use_cache=False).logits` of shape `(B, N, C)`:
    - `C = 1`, a value head read through a sigmoid at the candidate's last token, as Skywork-o1-Open-PRM (paper §4;
      its `v_head.summary` is a `Linear(hidden, 1)`, i.e. the `score` layer of `Qwen2ForTokenClassification` with
      `num_labels=1`);
    - `C = 2`, `softmax[..., 1]` at a separator appended after the candidate (`separator_token_id`, e.g. the id of
      `<extra_0>` for Qwen2.5-Math-PRM, paper §13).

    `scoring_impl="packed"` (default) scores all positions of a rollout in one forward of length about
    `P + 2L` (see [`pack_rollout`]); it needs `sdpa` or `eager` attention. `"loop"` runs one forward per distinct
    proposal over `[prompt; y_{<t}; a]`, the reference of the packed layout. Prompts are formatted with
    `prompt_template` (Skywork: `bos + problem + "\\n"`, spec §2.4) and tokenised without special tokens; steps are
    token ids (or tuples of them) shared with the PRM's vocabulary.

    Args:
        model (`torch.nn.Module`):
            The frozen PRM; it is put in eval mode.
        tokenizer (`PreTrainedTokenizerBase`):
            The PRM's tokenizer, for the prompts.
        prompt_template (`str`, *optional*, defaults to `"{bos}{prompt}\\n"`):
            Format string with `{bos}` (the tokenizer's BOS token, or empty) and `{prompt}` (spec §9).
        separator_token_id (`int` or `None`, *optional*, defaults to `None`):
            Token appended after each candidate and read there; `None` reads at the candidate itself.
        scoring_impl (`str`, *optional*, defaults to `"packed"`):
            `"packed"` or `"loop"`.
        batch_size (`int`, *optional*, defaults to `8`):
            Rollouts per packed forward (ours, not a paper value: bounds the PRM's memory, spec §9 "micro-chunks").
    """

    def __init__(
        self,
        model: torch.nn.Module,
        tokenizer: "PreTrainedTokenizerBase",
        *,
        prompt_template: str = "{bos}{prompt}\n",
        separator_token_id: int | None = None,
        scoring_impl: str = "packed",
        batch_size: int = 8,
    ):
        if scoring_impl not in SCORING_IMPLS:
            raise ValueError(f"`scoring_impl` must be one of {SCORING_IMPLS}, got {scoring_impl!r}.")
        if scoring_impl == "packed" and model.config._attn_implementation not in ("sdpa", "eager"):
            raise ValueError(
                f"Packed PRM scoring needs a 4-D attention mask, i.e. `attn_implementation` 'sdpa' or 'eager'; the "
                f"PRM uses {model.config._attn_implementation!r}. Load it with sdpa, or use `scoring_impl='loop'`."
            )
        if batch_size < 1:
            raise ValueError(f"`batch_size` must be >= 1, got {batch_size}.")
        self.model = model.eval()
        self.tokenizer = tokenizer
        self.prompt_template = prompt_template
        self.separator_token_id = separator_token_id
        self.scoring_impl = scoring_impl
        self.batch_size = batch_size

    def prompt_ids(self, prompt: str) -> list[int]:
        """Token ids of the PRM prompt of `prompt`."""
        text = self.prompt_template.format(bos=self.tokenizer.bos_token or "", prompt=prompt)
        return self.tokenizer(text, add_special_tokens=False)["input_ids"]

    @torch.no_grad()
    def __call__(self, prompts: Sequence[str], pairs: Sequence[ProposalPairs]) -> list[ProposalScores]:
        if len(prompts) != len(pairs):
            raise ValueError(f"Got {len(prompts)} prompts for {len(pairs)} rollouts.")
        prompt_ids = [self.prompt_ids(prompt) for prompt in prompts]
        if self.scoring_impl == "loop":
            return [self._score_loop(ids, pair) for ids, pair in zip(prompt_ids, pairs, strict=True)]
        separator = self.separator_token_id
        packed = [pack_rollout(ids, pair, separator) for ids, pair in zip(prompt_ids, pairs, strict=True)]
        scores = []
        for start in range(0, len(packed), self.batch_size):
            scores += self._score_packed(packed[start : start + self.batch_size])
        return scores

    def _probabilities(self, input_ids_BN, attention_mask=None, position_ids_BN=None) -> torch.Tensor:
        """PRM probability at every position, `(B, N)`."""
        num_embeddings = self.model.get_input_embeddings().num_embeddings
        if int(input_ids_BN.max()) >= num_embeddings:
            raise ValueError(
                f"Token id {int(input_ids_BN.max())} is outside the PRM's {num_embeddings} embeddings: the PRM must "
                f"share the policy's vocabulary (spec A5); use the PRM-free weights otherwise."
            )
        device = self.model.device
        logits = self.model(
            input_ids=input_ids_BN.to(device),
            attention_mask=None if attention_mask is None else attention_mask.to(device),
            position_ids=None if position_ids_BN is None else position_ids_BN.to(device),
            use_cache=False,
        ).logits
        return positive_probability(logits)

    def _score_packed(self, packed: list[PackedRollout]) -> list[ProposalScores]:
        """One forward over a right-padded batch of packed rollouts."""
        N = max(len(p.input_ids) for p in packed)
        pad = self.tokenizer.pad_token_id or 0
        input_ids_BN = torch.tensor([p.input_ids + [pad] * (N - len(p.input_ids)) for p in packed])
        position_ids_BN = torch.tensor([p.position_ids + [0] * (N - len(p.position_ids)) for p in packed])
        mask = packed_attention_mask(packed, self.model.dtype)
        probs_BN = self._probabilities(input_ids_BN, mask, position_ids_BN)
        return [
            ProposalScores(probs_BN[b, p.teacher_index], probs_BN[b, p.student_index]) for b, p in enumerate(packed)
        ]

    def _score_loop(self, prompt_ids: list[int], pairs: ProposalPairs) -> ProposalScores:
        """One plain causal forward per distinct proposal over `[prompt; y_{<t}; a (+ separator)]`."""
        steps = [_step_ids(step) for step in pairs.rollout]
        tail = () if self.separator_token_id is None else (self.separator_token_id,)
        cache: dict[tuple[int, tuple[int, ...]], torch.Tensor] = {}

        def score(t: int, candidate: Step) -> torch.Tensor:
            key = (t, _step_ids(candidate))
            if key not in cache:
                ids = [*prompt_ids, *(i for step in steps[:t] for i in step), *key[1], *tail]
                cache[key] = self._probabilities(torch.tensor([ids]))[0, -1]
            return cache[key]

        teacher = torch.stack([score(t, a) for t, a in enumerate(pairs.teacher)]) if len(pairs) else torch.zeros(0)
        student = torch.stack([score(t, a) for t, a in enumerate(pairs.student)]) if len(pairs) else torch.zeros(0)
        return ProposalScores(teacher, student)
