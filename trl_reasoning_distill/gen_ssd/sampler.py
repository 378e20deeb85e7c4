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

Where the pieces live (every name is importable from here, as before):
- `chunk_loop.py`: the chunk loop on one batch of prompts, [`sample_chunked`], with its settings
  ([`ChunkSampling`], `TEACHER_DECODING`), the selection hook ([`GenerationSelectionCallback`], [`RoundInfo`]) and
  its result ([`Trajectory`]);
- `models.py`: the teacher proposers and the student scorer;
- here: the data set driver [`GenSSDSampler`] (answer check, record writing, fingerprint and resume,
  [`all_records_path`], [`batch_seed`], [`SamplingSummary`]), [`split_cold_start`] and the command line.
"""

import argparse
import json
import time
import zlib
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path

import torch
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
from ..generation.base import Generator
from ..jsonl import append_records, read_records
from ..progress import tqdm_class
from ..validation import check_prompt_answer_rows, dataset_rows
from ..verify import EXTRACTION_MODES, extract_answer, grade
from .chunk_loop import (  # the chunk loop, re-exported: import it from here as before
    TEACHER_DECODING,
    ChunkSampling,
    GenerationSelectionCallback,
    RoundInfo,
    Trajectory,
    sample_chunked,
)
from .models import ChunkProposer, GeneratorProposer, HFChunkProposer, StudentScorer
from .selection import RULES

RECORD_FORMAT = "gen_ssd/2"  # 2: records carry the `row_hash` of their row

__all__ = [
    "RECORD_FORMAT", "SamplingSummary", "all_records_path", "batch_seed", "GenSSDSampler", "split_cold_start", "main",
    # re-exported from chunk_loop.py and models.py
    "TEACHER_DECODING", "ChunkSampling", "RoundInfo", "GenerationSelectionCallback", "Trajectory", "sample_chunked",
    "ChunkProposer", "GeneratorProposer", "HFChunkProposer", "StudentScorer",
]


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
        bar = tqdm_class()(total=len(rows), initial=sum(str(r["id"]) in seen for r in rows), desc="gen-ssd",
                           unit="problem", dynamic_ncols=True, **({} if self.progress else {"disable": True}))
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
            bar.set_postfix({"tok/s": f"{run_tokens / (time.perf_counter() - start):.0f}", "kept": len(kept),
                             "dropped": len(seen) - len(kept), "pruned": sum(r["pruned"] for r in seen.values())})
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

    from ..loading import load_dataset_spec, load_model_and_tokenizer

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
