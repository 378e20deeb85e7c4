"""Gen-SSD chunk loop: Algorithm A of the spec on one batch of prompts, batched over problems.

Each round, the teacher proposes `K_c` candidates of `chunk_size` tokens for every live prefix of every problem in
**one** call ([`ChunkProposer`]); the student scores them all by perplexity ([`StudentScorer`]); the `beam_width` best
per problem survive and the others are never extended; the ended trajectory of lowest overall PPL is the result
([`sample_chunked`]). The selection maths is `selection.py`; [`GenerationSelectionCallback`] is the hook that applies
it, shared by the offline sampler (`sampler.py`, which also writes and resumes the records) and `GenSSDTrainer`.
[`ChunkSampling`] holds the chunking and decoding settings; every name here is also importable from `sampler.py`.
"""

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import NamedTuple

import torch

from ..generation.base import validate_sampling
from .models import ChunkProposer, StudentScorer
from .selection import (
    BEAM_SCORES,
    BEAM_WIDTH,
    CANDIDATE_SCHEDULE,
    CANDIDATES_PER,
    CHUNK_SIZE,
    MAX_NEW_TOKENS,
    RULES,
    BeamState,
    CandidatePool,
    FinalPick,
    Selection,
    advance_beams,
    candidate_log_perplexity,
    candidate_pool,
    candidates_per_beam,
    chunk_budget,
    chunk_finish,
    final_pick,
    group_candidates,
    initial_beams,
    max_chunk_rounds,
    num_candidates,
    right_pad,
    select_candidates,
)

TEACHER_DECODING = {"temperature": 0.6, "top_p": 0.95, "top_k": 30}  # QwQ-32B's recommended settings, paper §4.1


@dataclass(frozen=True)
class ChunkSampling:
    """How the teacher writes: chunk size, budget, candidate schedule, beam width and decoding (spec §3).

    Defaults are the paper's: 4K chunks, 16K tokens in all, K = 16, 8, 4, 4, ..., a beam of 2, T 0.6 / top-p 0.95 /
    top-k 30. `candidates_per="beam"` draws K_c from every surviving prefix (spec §8 A2).
    """

    chunk_size: int = CHUNK_SIZE
    max_new_tokens: int = MAX_NEW_TOKENS
    num_candidates: tuple[int, ...] = CANDIDATE_SCHEDULE
    beam_width: int = BEAM_WIDTH
    candidates_per: str = "beam"
    temperature: float = TEACHER_DECODING["temperature"]
    top_p: float = TEACHER_DECODING["top_p"]
    top_k: int = TEACHER_DECODING["top_k"]

    def __post_init__(self):
        object.__setattr__(self, "num_candidates", tuple(self.num_candidates))
        num_candidates(1, self.num_candidates)  # raises ValueError on an empty schedule or a count < 1
        max_chunk_rounds(self.max_new_tokens, self.chunk_size)  # raises on sizes < 1
        if isinstance(self.beam_width, bool) or not isinstance(self.beam_width, int) or self.beam_width < 1:
            raise ValueError(f"beam_width must be an integer >= 1, got {self.beam_width!r}.")
        if self.candidates_per not in CANDIDATES_PER:
            raise ValueError(f"candidates_per must be one of {CANDIDATES_PER}, got {self.candidates_per!r}.")
        validate_sampling(1, self.max_new_tokens, self.temperature, self.top_p, self.top_k)

    @classmethod
    def best_of(cls, k: int, max_new_tokens: int = MAX_NEW_TOKENS, **decoding) -> "ChunkSampling":
        """One chunk of the whole budget: `k` full samples, the lowest student PPL kept (App. D, spec §9 item 7)."""
        return cls(chunk_size=max_new_tokens, max_new_tokens=max_new_tokens, num_candidates=(k,), beam_width=1,
                   **decoding)

    @classmethod
    def plain(cls, max_new_tokens: int = MAX_NEW_TOKENS, **decoding) -> "ChunkSampling":
        """One full teacher sample per problem: rejection sampling, Standard KD's sampler (spec §2.4, §6)."""
        return cls.best_of(1, max_new_tokens, **decoding)


class RoundInfo(NamedTuple):
    """What one chunk round did, per problem `(P,)`: `candidates` scored, `kept`, `pruned`, `teacher_tokens`
    generated, and `kept_ppl` (mean chunk PPL of the kept candidates, NaN if none)."""

    round: int
    candidates: torch.Tensor
    kept: torch.Tensor
    pruned: torch.Tensor
    teacher_tokens: torch.Tensor
    kept_ppl: torch.Tensor


class GenerationSelectionCallback:
    """The selection step of the chunk loop: score the pool, keep the best, pick the final trajectory.

    [`GenSSDSampler`] and `GenSSDTrainer` both call it, so the same selection drives offline data generation and
    on-line generation inside the trainer. Override `score` for another candidate score (lower is better for
    `rule="low"`), or `on_round_end` to log.

    Args:
        rule (`str`, *optional*, defaults to `"low"`):
            `"low"` keeps the lowest student PPL (Eq. 4), `"high"` the highest, `"random"` a uniform draw (Table 4);
            the rule also makes the final pick (spec §8 A16).
        beam_score (`str`, *optional*, defaults to `"chunk"`):
            Rank by the chunk's PPL (Eq. 4) or by the PPL of the prefix and the chunk (`"cumulative"`, spec §8 A3).
        prefer_eos (`bool`, *optional*, defaults to `True`):
            Final pick among EOS-ended trajectories when a problem has one (spec §8 A5).
    """

    def __init__(self, rule: str = "low", beam_score: str = "chunk", prefer_eos: bool = True):
        if rule not in RULES:
            raise ValueError(f"rule must be one of {RULES}, got {rule!r}.")
        if beam_score not in BEAM_SCORES:
            raise ValueError(f"beam_score must be one of {BEAM_SCORES}, got {beam_score!r}.")
        self.rule, self.beam_score, self.prefer_eos = rule, beam_score, prefer_eos

    def score(self, chunk_nll_PN: torch.Tensor, chunk_tokens_PN: torch.Tensor, pool: CandidatePool,
              beams: BeamState) -> torch.Tensor:
        """Score `(P, N)` of every pool slot: log-PPL of the chunk (or of prefix + chunk)."""
        return candidate_log_perplexity(chunk_nll_PN, chunk_tokens_PN, beam_score=self.beam_score, pool=pool,
                                        beams=beams)

    def keep(self, scores_PN: torch.Tensor, valid_PN: torch.Tensor, num_keep: int,
             generator: torch.Generator | None) -> Selection:
        """The survivors of the round; every other candidate is pruned (App. A: the best `num_keep`)."""
        return select_candidates(scores_PN, valid_PN, num_keep, self.rule, generator)

    def pick(self, nll_PF: torch.Tensor, tokens_PF: torch.Tensor, valid_PF: torch.Tensor, eos_PF: torch.Tensor,
             generator: torch.Generator | None) -> FinalPick:
        """The one trajectory kept per problem among those that ended (App. A: lowest overall PPL)."""
        return final_pick(nll_PF, tokens_PF, valid_PF, eos_PF, rule=self.rule, prefer_eos=self.prefer_eos,
                          generator=generator)

    def on_round_end(self, info: RoundInfo) -> None:
        """Called after every round with its counts; does nothing by default."""


# --- the chunk loop (Algorithm A, batched over P problems) -----------------------------------------------------------


@dataclass
class Trajectory:
    """The kept completion of one problem and how it was made (spec §10 output columns)."""

    token_ids: list[int]
    nll: float
    perplexity: float
    finish_reason: str  # "eos" or "length"
    chunk_lengths: list[int]
    chunk_ppls: list[float]
    candidates_per_round: list[int]  # pool size of the problem in each round
    teacher_tokens: int  # every token the teacher generated for the problem, pruned candidates included
    pruned: int  # candidates pruned over all rounds


@dataclass(frozen=True)
class _Beam:
    ids: list[int] = field(default_factory=list)
    chunk_lengths: list[int] = field(default_factory=list)
    chunk_ppls: list[float] = field(default_factory=list)


def sample_chunked(
    prompt_ids: list[list[int]],
    proposer: ChunkProposer,
    scorer: StudentScorer,
    sampling: ChunkSampling,
    selection: GenerationSelectionCallback,
    eos_token_ids: Sequence[int],
    pad_token_id: int,
    generator: torch.Generator | None = None,
) -> list[Trajectory]:
    """
    Algorithm A of the spec for every problem at once: one teacher call and one scoring pass per round.

    Args:
        prompt_ids (`list[list[int]]`): the templated prompts, shared by teacher and student (spec §8 A7).
        proposer, scorer: the teacher and the student.
        sampling (`ChunkSampling`): chunk size, budget, schedule, beam width.
        selection (`GenerationSelectionCallback`): scoring, ranking, final pick, hooks.
        eos_token_ids (`Sequence[int]`): ids that end a completion.
        pad_token_id (`int`): padding id of the candidate tensors.
        generator (`torch.Generator`, *optional*): needed by `rule="random"`.

    Returns:
        `list[Trajectory]`: one per prompt, the final pick.
    """
    P, B, s = len(prompt_ids), sampling.beam_width, sampling
    beams, paths = initial_beams(P, B), [[_Beam() for _ in range(B)] for _ in range(P)]
    ended: list[list[tuple[float, int, bool, _Beam]]] = [[] for _ in range(P)]
    spent_P, pruned_P = torch.zeros(P, dtype=torch.long), torch.zeros(P, dtype=torch.long)
    pool_sizes: list[list[int]] = [[] for _ in range(P)]
    flat_parent = None  # (P, B): flat index, in the previous round's candidates, of each beam's last chunk
    for c in range(1, max_chunk_rounds(s.max_new_tokens, s.chunk_size) + 1):
        counts_PB = candidates_per_beam(beams.live, num_candidates(c, s.num_candidates), s.candidates_per)
        pool = candidate_pool(counts_PB)
        r = _propose_and_score(prompt_ids, paths, beams, counts_PB, pool, flat_parent, proposer, scorer, s,
                               eos_token_ids, pad_token_id)
        sel = selection.keep(selection.score(r.nll_PN, r.tokens_PN, pool, beams), pool.valid, B, generator)
        step = advance_beams(beams, pool, sel, r.nll_PN, r.tokens_PN, r.finished_PN)
        paths = _extend_paths(paths, ended, sel, step, r)
        flat_parent = r.flat_PN.gather(-1, sel.index.clamp_min(0))
        candidates_P, kept_P = pool.valid.sum(-1), sel.kept.sum(-1)
        spent_P += r.tokens_PN.sum(-1)
        pruned_P += candidates_P - kept_P
        for p in candidates_P.nonzero().flatten().tolist():  # the rounds the problem took part in
            pool_sizes[p].append(int(candidates_P[p]))
        kept_ppl_P = torch.where(sel.kept, r.chunk_ppl_PN.gather(-1, sel.index.clamp_min(0)), 0.0).sum(-1) / kept_P
        selection.on_round_end(RoundInfo(c, candidates_P, kept_P, candidates_P - kept_P, r.tokens_PN.sum(-1),
                                         kept_ppl_P))
        beams = step.beams
        if not beams.live.any():
            break
    proposer.reset()
    return _final(ended, selection, generator, pool_sizes, spent_P, pruned_P)


class _Round(NamedTuple):
    """One round's candidates: the flat chunks and, laid out `(P, N)` in the pool, their summed NLL, token counts,
    EOS and end flags, chunk PPL and flat index (-1 on empty slots)."""

    chunks: list[list[int]]
    nll_PN: torch.Tensor
    tokens_PN: torch.Tensor
    eos_PN: torch.Tensor
    finished_PN: torch.Tensor
    chunk_ppl_PN: torch.Tensor
    flat_PN: torch.Tensor


def _propose_and_score(prompt_ids, paths, beams, counts_PB, pool, flat_parent, proposer, scorer, s: ChunkSampling,
                       eos_token_ids, pad_token_id) -> _Round:
    """Algorithm A lines 7-13 for every live beam of every problem: one teacher call, one scoring pass."""
    live = counts_PB.nonzero().tolist()  # (p, b) row-major: the pool's (prompt, beam, sample) order
    budget_PB = chunk_budget(beams.tokens, s.chunk_size, s.max_new_tokens)
    budgets = {int(budget_PB[p, b]) for p, b in live}
    if len(budgets) != 1:  # live beams hold whole chunks only, so they all have the same budget left
        raise RuntimeError(f"live beams of one round must share one budget, got {sorted(budgets)}.")
    counts = [int(counts_PB[p, b]) for p, b in live]
    prefixes = [prompt_ids[p] + paths[p][b].ids for p, b in live]
    parents = None if flat_parent is None else [int(flat_parent[p, b]) for p, b in live]
    chunks = proposer.propose(prefixes, counts, budgets.pop(), parents)
    nll_M, tokens_M = scorer.score([prefix for prefix, n in zip(prefixes, counts) for _ in range(n)], chunks)
    ids_ML, mask_ML = right_pad(chunks, pad_token_id)
    before_M = torch.tensor([int(beams.tokens[p, b]) for (p, b), n in zip(live, counts) for _ in range(n)])
    eos_M, finished_M = chunk_finish(ids_ML, mask_ML, before_M, eos_token_ids=eos_token_ids, chunk_size=s.chunk_size,
                                     max_new_tokens=s.max_new_tokens)
    nll_PN, tokens_PN = group_candidates(nll_M, pool.valid), group_candidates(tokens_M, pool.valid)
    return _Round(chunks, nll_PN, tokens_PN, group_candidates(eos_M, pool.valid, False),
                  group_candidates(finished_M, pool.valid, False), torch.exp(nll_PN / tokens_PN.clamp_min(1)),
                  group_candidates(torch.arange(len(chunks)), pool.valid, fill=-1))


def _extend_paths(paths, ended, sel: Selection, step, r: _Round) -> list[list[_Beam]]:
    """Algorithm A lines 16-21 on the token lists: kept candidates extend their parent beam, and those that ended
    their trajectory join `ended` (in place) as `(nll, tokens, eos, beam)`."""
    new_paths = [[_Beam() for _ in row] for row in paths]
    for p, j in sel.kept.nonzero().tolist():
        slot, parent = int(sel.index[p, j]), paths[p][int(step.parent[p, j])]
        new_paths[p][j] = _Beam(parent.ids + r.chunks[int(r.flat_PN[p, slot])],
                                parent.chunk_lengths + [int(r.tokens_PN[p, slot])],
                                parent.chunk_ppls + [float(r.chunk_ppl_PN[p, slot])])
        if step.done[p, j]:
            ended[p].append((float(step.beams.nll[p, j]), int(step.beams.tokens[p, j]), bool(r.eos_PN[p, slot]),
                             new_paths[p][j]))
    return new_paths


def _final(ended, selection, generator, pool_sizes, spent, pruned) -> list[Trajectory]:
    """The final pick over the ended trajectories of every problem (Algorithm A, lines 23-24)."""
    width = max(len(e) for e in ended)
    pad = (0.0, 1, False, None)
    rows = [e + [pad] * (width - len(e)) for e in ended]
    nll_PF = torch.tensor([[r[0] for r in row] for row in rows], dtype=torch.float64)
    tokens_PF = torch.tensor([[r[1] for r in row] for row in rows], dtype=torch.long)
    eos_PF = torch.tensor([[r[2] for r in row] for row in rows], dtype=torch.bool)
    valid_PF = torch.tensor([[r[3] is not None for r in row] for row in rows], dtype=torch.bool)
    pick = selection.pick(nll_PF, tokens_PF, valid_PF, eos_PF, generator)
    if not pick.found.all():  # every round keeps a candidate and the last one ends them all
        raise RuntimeError("a problem ended without a trajectory.")
    out = []
    for p, f in enumerate(pick.index.tolist()):
        nll, ntok, eos, beam = rows[p][f]
        out.append(Trajectory(beam.ids, nll, float(pick.perplexity[p]), "eos" if eos else "length",
                              beam.chunk_lengths, beam.chunk_ppls, pool_sizes[p], int(spent[p]), int(pruned[p])))
    return out
