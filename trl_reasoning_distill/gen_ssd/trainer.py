"""Gen-SSD trainer: `KDTrainer` whose targets are teacher trajectories selected on the fly by the student.

Paper: Student-in-the-Loop Chain-of-Thought Distillation via Generation-Time Selection,
https://huggingface.co/papers/2604.02819

    min_θ E_(x, y*) [-log P_S(y* | x; θ)]    (Eq. 1 on y* from Eq. 4 / App. A, kept if Answer(y*) = y, Eq. 5)

The paper builds its data offline (`GenSSDSampler`) and then runs plain SFT. This trainer is the on-line variant (not
in the paper, spec §10): for every micro-batch, the teacher writes in chunks and the *current* student selects them
with the same chunk loop and [`GenerationSelectionCallback`] as the sampler, and the student trains on the selected
trajectories. `objective="nll"` is Eq. 1; `objective="kd"` applies `KDTrainer`'s divergence on them instead (ours).
"""

import textwrap
import time

import torch
import torch.nn.functional as F

from .._trl import unwrap_model_for_generation
from ..chunked import chunked_cross_entropy
from ..generation import Generator
from ..generation.vllm import teacher_generator_from_config
from ..kd_trainer import AnswerCollator, KDTrainer, last_hidden_state
from ..validation import checked_rows
from ..verify import extract_answer, grade
from .config import GenSSDConfig
from .sampler import (
    GenerationSelectionCallback,
    GeneratorProposer,
    HFChunkProposer,
    StudentScorer,
    Trajectory,
    sample_chunked,
)
from .selection import right_pad


class GenSSDTrainer(KDTrainer):
    """[`KDTrainer`] that trains on teacher trajectories chunk-selected by the current student. Metrics are logged as
    `gen_ssd/<name>`.

    Args:
        teacher_generator (`Generator`, *optional*):
            Proposes the teacher's chunks instead of `teacher_model`, e.g. a `VLLMGenerator` (prefix caching).
        selection (`GenerationSelectionCallback`, *optional*):
            The selection hook; `args.selection_callback()` by default. A hook that keeps state between batches
            exposes it as `state_dict()` / `load_state_dict(state)` (JSON-serialisable), saved with each checkpoint.
        model, teacher_model, args, train_dataset, **kwargs:
            As in [`KDTrainer`]; `args` is a [`GenSSDConfig`]; `train_dataset` needs `args.answer_column` when
            `keep_only_correct`.
    """

    _tag_names = ["trl", "gkd", "trl-reasoning-distill", "gen-ssd"]
    _name = "Gen-SSD"
    _paper = {
        "title": "Student-in-the-Loop Chain-of-Thought Distillation via Generation-Time Selection",
        "id": "2604.02819",
        # docstyle-ignore
        "citation": textwrap.dedent("""\
            @article{he2026genssd,
                title   = {{Student-in-the-Loop Chain-of-Thought Distillation via Generation-Time Selection}},
                author  = {Chaoqun He and Yingfa Chen and Chaojun Xiao and Xu Han and Lijie Wen},
                year    = 2026,
                journal = {arXiv preprint arXiv:2604.02819},
            }"""),
    }
    metric_prefix = "gen_ssd"

    def __init__(self, model=None, teacher_model=None, args: GenSSDConfig | None = None, train_dataset=None,
                 teacher_generator: Generator | None = None, selection: GenerationSelectionCallback | None = None,
                 **kwargs):
        if not isinstance(args, GenSSDConfig):
            raise ValueError(f"GenSSDTrainer needs `args` to be a GenSSDConfig, got {type(args).__name__}.")
        columns = None if train_dataset is None else train_dataset.column_names
        if args.keep_only_correct and columns is not None and args.answer_column not in columns:
            raise ValueError(f"keep_only_correct=True grades the selected trajectories: the training dataset needs an "
                             f"{args.answer_column!r} column (see `answer_column`); it has {columns}.")
        if args.keep_only_correct:  # a None or blank answer would be graded as "None" or "": nothing would be kept
            train_dataset = checked_rows(train_dataset, "the training dataset", answer_column=args.answer_column)
        super().__init__(model, teacher_model, args, train_dataset=train_dataset, **kwargs)
        self.teacher_generator = teacher_generator or teacher_generator_from_config(
            args, self.accelerator.unwrap_model(self.teacher_model), self.processing_class,
            self.accelerator.num_processes)  # `teacher_generation_backend`: None proposes with HF generate
        self.selection = selection or args.selection_callback()
        self.selection_generator = torch.Generator().manual_seed(args.seed)  # rule="random"; reseeded per batch
        stop = self.accelerator.unwrap_model(self.teacher_model).generation_config.eos_token_id  # every stop id
        stop = [] if stop is None else [stop] if isinstance(stop, int) else list(stop)
        self.eos_token_ids = list(dict.fromkeys([self.processing_class.eos_token_id, *stop]))
        self.data_collator = AnswerCollator(self.data_collator, args.answer_column)

    # --- sampling: the chunk loop on the micro-batch's prompts -----------------------------------------------------

    def _sample_completions(self, inputs: dict) -> dict:
        if self.args.keep_only_correct and "answers" not in inputs:
            raise ValueError(f"keep_only_correct=True needs the gold column {self.args.answer_column!r} in every row.")
        prompts = [ids[mask.bool()].tolist() for ids, mask in zip(inputs["prompts"], inputs["prompt_attention_mask"])]
        self.selection_generator.manual_seed(self.draw_seed("selection"))  # (seed, step, micro-batch, process)
        start = time.perf_counter()
        trajectories = self.select_trajectories(prompts)
        seconds = time.perf_counter() - start
        keep_B = self._keep_rows(trajectories, inputs.get("answers"))
        self._log_selection(trajectories, keep_B, seconds)
        return {**inputs, **self._target_batch(inputs, trajectories, keep_B)}

    def resume_state(self) -> dict:
        """The selection hook's own state, when it keeps one (`state_dict` / `load_state_dict`, JSON-serialisable)."""
        state_dict = getattr(self.selection, "state_dict", None)
        return {"selection": state_dict()} if callable(state_dict) else {}

    def load_resume_state(self, state: dict) -> None:
        if "selection" in state:
            self.selection.load_state_dict(state["selection"])

    def select_trajectories(self, prompt_ids: list[list[int]]) -> list[Trajectory]:
        """One Gen-SSD trajectory per prompt: the teacher proposes, the current student (eval, no grad) selects."""
        args, tokenizer = self.args, self.processing_class
        sampling, eos = args.chunk_sampling(), self.eos_token_ids
        decoding = {"temperature": sampling.temperature, "top_p": sampling.top_p, "top_k": sampling.top_k}
        with unwrap_model_for_generation(self.model_wrapped, self.accelerator) as student:
            scorer = StudentScorer(student, tokenizer.pad_token_id, args.scorer_batch_size)
            if self.teacher_generator is not None:
                proposer = GeneratorProposer(self.teacher_generator, **decoding)
                return sample_chunked(prompt_ids, proposer, scorer, sampling, self.selection, eos,
                                      tokenizer.pad_token_id, self.selection_generator)
            with unwrap_model_for_generation(self.teacher_model, self.accelerator) as teacher:
                proposer = HFChunkProposer(teacher, tokenizer, reuse_cache=args.reuse_teacher_cache,
                                           eos_token_ids=eos, **decoding)
                return sample_chunked(prompt_ids, proposer, scorer, sampling, self.selection, eos,
                                      tokenizer.pad_token_id, self.selection_generator)

    def _keep_rows(self, trajectories: list[Trajectory], answers: list[str] | None) -> list[bool]:
        """Eq. 5: a trajectory is a target iff its answer is verified (every one when `keep_only_correct=False`)."""
        if not self.args.keep_only_correct:
            return [True] * len(trajectories)
        texts = [self.processing_class.decode(t.token_ids, skip_special_tokens=True) for t in trajectories]
        return [grade(extract_answer(text, self.args.answer_extraction), answer)
                for text, answer in zip(texts, answers, strict=True)]

    def _target_batch(self, inputs: dict, trajectories: list[Trajectory], keep_B: list[bool]) -> dict:
        """Prompt (left-padded, as collated) + selected completion (right-padded); labels on kept completions only."""
        prompts_BP, prompt_mask_BP = inputs["prompts"], inputs["prompt_attention_mask"]
        ids_BC, mask_BC = right_pad([t.token_ids for t in trajectories], self.processing_class.pad_token_id,
                                    prompts_BP.device)
        labels_BC = ids_BC.masked_fill(~(mask_BC & torch.tensor(keep_B, device=mask_BC.device)[:, None]), -100)
        return {"input_ids": torch.cat([prompts_BP, ids_BC], dim=1),
                "attention_mask": torch.cat([prompt_mask_BP, mask_BC.long()], dim=1),
                "labels": torch.cat([torch.full_like(prompts_BP, -100), labels_BC], dim=1)}

    def _log_selection(self, trajectories: list[Trajectory], keep_B: list[bool], seconds: float) -> None:
        n = len(trajectories)
        for name, value in {
            "selected_ppl": sum(t.perplexity for t in trajectories) / n,
            "correct_frac": sum(keep_B) / n,
            "teacher_tokens": sum(t.teacher_tokens for t in trajectories) / n,
            "pruned": sum(t.pruned for t in trajectories) / n,
            "num_chunks": sum(len(t.chunk_lengths) for t in trajectories) / n,
            "completion_length": sum(len(t.token_ids) for t in trajectories) / n,
            "eos_frac": sum(t.finish_reason == "eos" for t in trajectories) / n,
            "generation_seconds": seconds,
        }.items():
            self.log_metric(name, value, mode="train")

    # --- loss ------------------------------------------------------------------------------------------------------

    def weighted_loss_sum(self, model, inputs: dict, weights_BT: torch.Tensor) -> torch.Tensor:
        """`objective="nll"`: `Σ_t w_t · -log P_S(y_t | x, y_<t)` (Eq. 1) over the tokenizer's vocabulary rows, by
        `chunked_cross_entropy` from the last hidden states (fp32, never the `[tokens, vocab]` logits), or from full
        logits with `loss_chunk_size=0`; `"kd"`: KDTrainer's."""
        if self.args.objective == "kd":
            return super().weighted_loss_sum(model, inputs, weights_BT)
        model_inputs = {"input_ids": inputs["input_ids"], "attention_mask": inputs["attention_mask"]}
        targets_BT = inputs["input_ids"][:, 1:]
        if self.args.loss_chunk_size == 0:
            logits_BTV = model(**model_inputs).logits[:, :-1, : self.vocab_size]
            nll_BT = F.cross_entropy(logits_BTV.float().flatten(0, 1), targets_BT.flatten(), reduction="none")
            return (nll_BT.view_as(weights_BT) * weights_BT).sum()
        return chunked_cross_entropy(
            last_hidden_state(model, model_inputs).flatten(0, 1), self.output_weight(model), targets_BT.flatten(),
            weights_BT.flatten(), chunk_size=self.args.loss_chunk_size if self.args.loss_chunk_size > 0 else None,
            vocab_size=self.vocab_size,
        )
