"""Gen-SSD sampler: the teacher writes in chunks, the student keeps the chunks it finds most natural.

Paper: Student-in-the-Loop Chain-of-Thought Distillation via Generation-Time Selection,
https://huggingface.co/papers/2604.02819 (Algorithm A of the spec, batched over problems)

Each round, the teacher proposes `K_c` candidates of `chunk_size` tokens for every live prefix of every problem of a
batch in **one** call ([`ChunkProposer`]); the student scores them all by perplexity (one batched forward per
`scorer_batch_size` candidates, [`StudentScorer`]); the `beam_width` best per problem survive and the others are never
extended. The selection maths is `selection.py`; [`GenerationSelectionCallback`] is the hook that applies it, shared by
this sampler (offline, the paper's pipeline) and `GenSSDTrainer` (on-line).

The teacher and student sides live in `models.py`: a Hugging Face teacher ([`HFChunkProposer`]) continues the KV cache
of the kept candidates, any [`Generator`] ([`GeneratorProposer`], e.g. vLLM) relies on its engine's prefix cache.

[`GenSSDSampler`] runs the loop over a data set, grades the one kept trajectory per problem with `verify/` (Eq. 5) and
appends records to a JSONL file as each batch ends (resumable: a killed run restarts where it stopped; a fingerprint of
the models and settings beside the file keeps a run under other ones from reusing its records). Best-of-K by
student PPL ([`ChunkSampling.best_of`]) and plain rejection sampling ([`ChunkSampling.plain`]) are the same loop.
"""

import argparse
import json
import time
import zlib
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import NamedTuple

import torch
from tqdm.auto import tqdm
from transformers import PreTrainedModel, PreTrainedTokenizerBase

from ..evaluation import as_messages
from ..fingerprint import (
    check_records_rows,
    check_unique_ids,
    claim_output,
    model_identity,
    row_hash,
    tokenizer_identity,
)
from ..generation.base import Generator, validate_sampling
from ..jsonl import append_records, read_records
from ..validation import check_prompt_answer_rows, dataset_rows
from ..verify import EXTRACTION_MODES, extract_answer, grade
from .models import ChunkProposer, GeneratorProposer, HFChunkProposer, StudentScorer
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

RECORD_FORMAT = "gen_ssd/2"  # 2: records carry the `row_hash` of their row
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


# --- the data set driver ---------------------------------------------------------------------------------------------


@dataclass
class SamplingSummary:
    """Totals over every problem of an output file; `seconds` and `teacher_tokens_this_run` cover this call only."""

    problems: int
    kept: int
    teacher_tokens: int
    pruned: int
    seconds: float
    teacher_tokens_this_run: int

    @property
    def tokens_per_kept(self) -> float:
        """Teacher tokens generated per kept (correct) trajectory: the cost of one training example."""
        return self.teacher_tokens / self.kept if self.kept else float("inf")


def all_records_path(output_path: str | Path) -> Path:
    """The file that records every problem, kept or dropped, beside the output (`x.jsonl` -> `x.all.jsonl`)."""
    path = Path(output_path)
    return path.with_name(path.name.removesuffix(".jsonl") + ".all.jsonl")


def batch_seed(seed: int, batch_index: int) -> int:
    """The seed of one batch: a function of the run's seed and the batch's place only, so a resumed run redraws
    exactly the same samples for the batches it redoes."""
    return zlib.crc32(f"{seed}:{batch_index}".encode())


class GenSSDSampler:
    """
    Gen-SSD over a data set (spec §2.2 step 3): the chunk loop per batch of problems, the answer check on the one
    kept trajectory (Eq. 5), and records appended as each batch ends.

    Two files are written: `output_path` holds the kept trajectories (`prompt` and `completion` as text, loadable with
    `datasets.load_dataset("json", ...)` and ready for `SFTTrainer`), and [`all_records_path`] every problem with its
    outcome. Both are resumable: a run killed at any point and restarted with the same arguments redoes the batch it
    was in (same seed, same samples) and writes exactly the records that are missing, so the files end up identical to
    an uninterrupted run's (with a deterministic backend: Hugging Face `generate`; vLLM does not promise identical
    samples across runs). A run under other models, settings or rows refuses to resume them (`StaleOutputError`,
    `overwrite=True` / `--overwrite` starts afresh).

    Args:
        teacher (`PreTrainedModel`, `Generator` or `ChunkProposer`):
            The teacher: a model (sampled with [`HFChunkProposer`]), any `Generator` (e.g. vLLM), or a proposer.
        student (`PreTrainedModel`):
            The frozen scorer, S0 (spec §8 A21).
        tokenizer (`PreTrainedTokenizerBase`):
            Shared tokenizer of both models; renders prompts with its chat template.
        sampling (`ChunkSampling`, *optional*):
            Chunking and decoding; the paper's by default.
        selection (`GenerationSelectionCallback`, *optional*):
            Selection rule and hooks; lowest PPL by default.
        batch_size (`int`, *optional*, defaults to `8`):
            Problems sampled in lockstep (each round is one teacher call over all their live prefixes).
        scorer_batch_size (`int`, *optional*, defaults to `16`):
            Candidates per student forward pass.
        seed (`int`, *optional*, defaults to `0`):
            Seeds every batch ([`batch_seed`]).
        answer_extraction (`str`, *optional*, defaults to `"auto"`):
            Mode of `verify.extract_answer`.
        keep_only_correct (`bool`, *optional*, defaults to `True`):
            Write only verified trajectories to `output_path` (Eq. 5).
        eos_token_ids (`Sequence[int]`, *optional*):
            Ids that end a completion; the tokenizer's EOS by default. Add every id the teacher stops on (its
            `generation_config.eos_token_id`: vLLM stops on them all), e.g. Qwen's `<|im_end|>` and `<|endoftext|>`.
        progress (`bool`, *optional*, defaults to `True`):
            Show a progress bar (teacher tokens/s, kept, dropped, pruned).
    """

    def __init__(
        self,
        teacher: "PreTrainedModel | Generator | ChunkProposer",
        student: PreTrainedModel,
        tokenizer: PreTrainedTokenizerBase,
        sampling: ChunkSampling | None = None,
        selection: GenerationSelectionCallback | None = None,
        batch_size: int = 8,
        scorer_batch_size: int = 16,
        seed: int = 0,
        answer_extraction: str = "auto",
        keep_only_correct: bool = True,
        eos_token_ids: Sequence[int] | None = None,
        progress: bool = True,
    ):
        if batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {batch_size}.")
        if answer_extraction not in EXTRACTION_MODES:
            raise ValueError(f"answer_extraction must be one of {EXTRACTION_MODES}, got {answer_extraction!r}.")
        self.sampling = sampling or ChunkSampling()
        self.selection = selection or GenerationSelectionCallback()
        decoding = {"temperature": self.sampling.temperature, "top_p": self.sampling.top_p,
                    "top_k": self.sampling.top_k}
        self.eos_token_ids = list(eos_token_ids or [tokenizer.eos_token_id])
        if isinstance(teacher, PreTrainedModel):
            teacher = HFChunkProposer(teacher, tokenizer, eos_token_ids=self.eos_token_ids, **decoding)
        elif isinstance(teacher, Generator):
            teacher = GeneratorProposer(teacher, **decoding)
        self.proposer, self.scorer = teacher, StudentScorer(student, tokenizer.pad_token_id, scorer_batch_size)
        self.tokenizer, self.batch_size, self.seed, self.progress = tokenizer, batch_size, seed, progress
        self.answer_extraction, self.keep_only_correct = answer_extraction, keep_only_correct

    def sample(self, dataset, output_path: str | Path, overwrite: bool = False) -> SamplingSummary:
        """Sample every problem of `dataset` (`prompt`, `answer`, optional unique `id`; the row index otherwise)
        not yet in the output files, appending as each batch ends; returns the totals of the whole files.

        The files are claimed first with [`GenSSDSampler.fingerprint`] (`<output>.fingerprint.json`): files made by
        other models or settings raise `StaleOutputError` naming the differing fields, and so do records made from
        other rows (each record keeps the `row_hash` of its row; a longer data set with the same first rows resumes
        the files). `overwrite=True` deletes both files and starts afresh."""
        rows = self._rows(dataset)
        output_path = Path(output_path)
        claim_output(output_path, self.fingerprint(), overwrite=overwrite, companions=[all_records_path(output_path)])
        kept, seen = read_records(output_path), read_records(all_records_path(output_path))
        check_records_rows(seen, rows, output_path)
        check_records_rows(kept, rows, output_path)
        bar = tqdm(total=len(rows), initial=sum(str(r["id"]) in seen for r in rows), desc="gen-ssd",
                   disable=not self.progress)
        start, run_tokens = time.perf_counter(), 0
        for k in range(0, -(-len(rows) // self.batch_size)):
            batch = rows[k * self.batch_size : (k + 1) * self.batch_size]
            if all(str(r["id"]) in seen for r in batch):
                continue
            records = self._sample_batch(batch, batch_seed(self.seed, k))
            append_records(output_path, [r for r in records if self._keeps(r) and str(r["id"]) not in kept])
            append_records(all_records_path(output_path), [r for r in records if str(r["id"]) not in seen])
            run_tokens += sum(r["teacher_tokens"] for r in records)
            bar.update(sum(str(r["id"]) not in seen for r in records))
            seen.update({str(r["id"]): r for r in records})
            kept.update({str(r["id"]): r for r in records if self._keeps(r)})
            bar.set_postfix(tok_s=f"{run_tokens / (time.perf_counter() - start):.0f}", kept=len(kept),
                            dropped=len(seen) - len(kept), pruned=sum(r["pruned"] for r in seen.values()))
        bar.close()
        done = [seen[str(r["id"])] for r in rows]
        return SamplingSummary(len(done), sum(self._keeps(r) for r in done), sum(r["teacher_tokens"] for r in done),
                               sum(r["pruned"] for r in done), time.perf_counter() - start, run_tokens)

    def _keeps(self, record: dict) -> bool:
        return record["is_correct"] or not self.keep_only_correct

    def _rows(self, dataset) -> list[dict]:
        rows = dataset_rows(dataset, "the Gen-SSD dataset")
        check_prompt_answer_rows(rows, "the Gen-SSD dataset")
        return check_unique_ids(rows, "the Gen-SSD dataset")

    def fingerprint(self) -> dict:
        """What decides the records, as stored beside the output: teacher, student scorer, tokenizer, every chunking,
        decoding and selection setting, batching, seed, answer check and the record format."""
        selection = self.selection
        return {
            "record_format": RECORD_FORMAT, "teacher": model_identity(self.proposer),
            "student": model_identity(self.scorer), "tokenizer": tokenizer_identity(self.tokenizer),
            **asdict(self.sampling), "selection": type(selection).__name__, "rule": selection.rule,
            "beam_score": selection.beam_score, "prefer_eos": selection.prefer_eos, "batch_size": self.batch_size,
            "seed": self.seed, "answer_extraction": self.answer_extraction,
            "keep_only_correct": self.keep_only_correct, "eos_token_ids": self.eos_token_ids,
        }

    def _sample_batch(self, batch: list[dict], seed: int) -> list[dict]:
        """The chunk loop on one batch under its own seed, then one answer check per problem (Eq. 5)."""
        texts = [self.tokenizer.apply_chat_template(as_messages(r["prompt"]), tokenize=False,
                                                    add_generation_prompt=True) for r in batch]
        prompt_ids = [self.tokenizer(t, add_special_tokens=False)["input_ids"] for t in texts]
        torch.manual_seed(seed)
        trajectories = sample_chunked(prompt_ids, self.proposer, self.scorer, self.sampling, self.selection,
                                      self.eos_token_ids, self.tokenizer.pad_token_id,
                                      torch.Generator().manual_seed(seed))
        return [self._record(row, text, t) for row, text, t in zip(batch, texts, trajectories, strict=True)]

    def _record(self, row: dict, prompt_text: str, t: Trajectory) -> dict:
        answer_text = self.tokenizer.decode(t.token_ids, skip_special_tokens=True)
        predicted = extract_answer(answer_text, self.answer_extraction)
        s = self.sampling
        return {
            "id": row["id"], "row_hash": row_hash(row), "prompt": prompt_text,
            "completion": self.tokenizer.decode(t.token_ids, skip_special_tokens=False),  # with its EOS: SFT adds none
            "answer": str(row["answer"]), "pred_answer": predicted, "is_correct": grade(predicted, str(row["answer"])),
            "student_ppl": t.perplexity, "completion_tokens": len(t.token_ids), "finish_reason": t.finish_reason,
            "teacher_tokens": t.teacher_tokens, "pruned": t.pruned, "num_chunks": len(t.chunk_lengths),
            "chunk_lengths": t.chunk_lengths, "chunk_ppls": t.chunk_ppls,
            "candidates_per_round": t.candidates_per_round,
            "selection": self.selection.rule, "chunk_size": s.chunk_size, "max_new_tokens": s.max_new_tokens,
            "num_candidates": list(s.num_candidates), "beam_width": s.beam_width, "seed": self.seed,
        }


def split_cold_start(dataset, num_problems: int, seed: int = 0):
    """`(cold_start, rest)`: a seeded draw of `num_problems` distinct problems (by prompt) with all their rows, and
    every other row. Disjoint by problem, as spec §2.2 steps 2-3 require; every attempted cold-start problem leaves
    the Gen-SSD pool, kept or not (spec §8 A10)."""
    keys = [json.dumps(row["prompt"], sort_keys=True) for row in dataset]
    distinct = list(dict.fromkeys(keys))
    if not 0 <= num_problems <= len(distinct):
        raise ValueError(f"num_problems must be in [0, {len(distinct)}] (distinct problems), got {num_problems}.")
    order = torch.randperm(len(distinct), generator=torch.Generator().manual_seed(seed)).tolist()
    cold = {distinct[i] for i in order[:num_problems]}
    return (dataset.select([i for i, key in enumerate(keys) if key in cold]),
            dataset.select([i for i, key in enumerate(keys) if key not in cold]))


def main(argv: list[str] | None = None) -> None:
    """Command line: `python -m trl_reasoning_distill.gen_ssd.sampler --output data.jsonl [...]` (toy defaults)."""
    parser = argparse.ArgumentParser(description="Gen-SSD data generation (resumable JSONL).")
    parser.add_argument("--teacher", default="toy-teacher")
    parser.add_argument("--student", default="toy-student", help="the scorer, e.g. the cold-started student")
    parser.add_argument("--data", default="toy:train:64", help="toy:<split>:<n> or a file with prompt, answer")
    parser.add_argument("--output", required=True)
    parser.add_argument("--backend", choices=("hf", "vllm"), default="hf", help="teacher backend")
    defaults = ChunkSampling()
    for name, value in asdict(defaults).items():
        kind = int if name == "num_candidates" else type(value)
        parser.add_argument(f"--{name}", type=kind, default=value, nargs="+" if name == "num_candidates" else None)
    parser.add_argument("--rule", choices=RULES, default="low")
    parser.add_argument("--batch_size", type=int, default=8)
    parser.add_argument("--scorer_batch_size", type=int, default=16)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--overwrite", action="store_true",
                        help="delete the output files made under other settings and start afresh")
    args = parser.parse_args(argv)

    from ..cli import load_dataset_spec, load_model_and_tokenizer

    student, tokenizer = load_model_and_tokenizer(args.student)
    if args.backend == "vllm":
        from ..generation import VLLMGenerator

        teacher = VLLMGenerator.colocate(args.teacher, tokenizer)
    else:
        teacher, _ = load_model_and_tokenizer(args.teacher)
        if torch.cuda.is_available():
            teacher = teacher.cuda()
    if torch.cuda.is_available():
        student = student.cuda()
    sampling = ChunkSampling(**{name: getattr(args, name) for name in asdict(defaults)})
    sampler = GenSSDSampler(teacher, student, tokenizer, sampling, GenerationSelectionCallback(args.rule),
                            batch_size=args.batch_size, scorer_batch_size=args.scorer_batch_size, seed=args.seed)
    summary = sampler.sample(load_dataset_spec(args.data), args.output, overwrite=args.overwrite)
    print(f"{summary.kept}/{summary.problems} kept, {summary.teacher_tokens} teacher tokens "
          f"({summary.tokens_per_kept:.0f} per kept trajectory), {summary.seconds:.1f} s")


if __name__ == "__main__":
    main()
