"""TSD-KD trainer: `KDTrainer` (on-policy GKD) with the token-selective dual loss of `tsd_kd/loss.py`.

Paper: Explain in Your Own Words: Improving Reasoning via Token-Selective Dual Knowledge Distillation,
https://huggingface.co/papers/2603.13260

    L = L_direct + γ · L_ent + α · L_indirect        (Eq. 13)

Only `compute_loss` changes: both models run on the sampled responses, and `tsd_kd_loss_chunked` (from the last
hidden states, the default) or `tsd_kd_loss` (full logits: `loss_chunk_size=0`, or `reference_code_compat`) does the
maths. Unlike the
authors' trainer (a copy of TRL 0.21's `GKDTrainer`, whose terms are per-micro-batch means, spec D7/D11/D13), every
term is normalised over the whole global batch (every accumulation micro-batch on every process): the direct term
over its loss tokens (`num_items_in_batch`), the indirect term over its opener tokens, the entropy term over its
responses with a non-empty set I (or selected tokens, `entropy_scope="batch"`). The loss and the update are then those
of one large batch, whatever the per-device batch size and the number of processes. The opener depends on the
student's entropies, so with several micro-batches or processes `_count_loss_tokens` runs a no-grad student pass (and
a teacher pass for the adaptive opener) over the step's samples first, chooses the selections there and counts them;
the loss then uses those selections. With one micro-batch on one process there is nothing to count beforehand.
"""

import textwrap
from collections import deque

import torch

from ..chunked import chunked_logits
from ..divergence import entropy
from ..kd_trainer import KDTrainer, last_hidden_state
from .config import TSDKDConfig
from .loss import TSDKDOutput, tsd_kd_loss, tsd_kd_loss_chunked
from .selection import _selections, adaptive_opener_ratio, entropy_set_units, sample_entropy_gap, top_entropy_mask

SELECTIONS, COUNTS = "tsd_kd_selections", "tsd_kd_counts"  # what `_count_loss_tokens` adds to each micro-batch


class TSDKDTrainer(KDTrainer):
    """[`KDTrainer`] with gated direct KD, teacher re-ranking of the student's candidates on the opener (indirect KD)
    and selective entropy minimisation. Metrics are logged as `tsd_kd/<term>`."""

    _tag_names = ["trl", "gkd", "trl-reasoning-distill", "tsd-kd"]
    _name = "TSD-KD"
    _paper = {
        "title": "Explain in Your Own Words: Improving Reasoning via Token-Selective Dual Knowledge Distillation",
        "id": "2603.13260",
        # docstyle-ignore
        "citation": textwrap.dedent("""\
            @inproceedings{kim2026explain,
                title     = {{Explain in Your Own Words: Improving Reasoning via Token-Selective Dual
                              Knowledge Distillation}},
                author    = {Minsang Kim and Seung Jun Baek},
                year      = 2026,
                booktitle = {The Fourteenth International Conference on Learning Representations, {ICLR} 2026},
            }"""),
    }
    metric_prefix = "tsd_kd"

    def __init__(self, model=None, teacher_model=None, args: TSDKDConfig | None = None, **kwargs):
        if not isinstance(args, TSDKDConfig):
            raise ValueError(f"TSDKDTrainer needs `args` to be a TSDKDConfig, got {type(args).__name__}.")
        super().__init__(model, teacher_model, args, **kwargs)
        self.gap_history = deque(maxlen=args.adaptive_history)  # App. A.7: past entropy gaps, oldest first

    def resume_state(self) -> dict:
        """The entropy-gap history of the adaptive opener (App. A.7) travels with each checkpoint."""
        return {"gap_history": list(self.gap_history)} if self.args.adaptive_opener else {}

    def load_resume_state(self, state: dict) -> None:
        self.gap_history.clear()
        self.gap_history.extend(state.get("gap_history", []))

    def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
        model_inputs = {"input_ids": inputs["input_ids"], "attention_mask": inputs["attention_mask"]}
        mask_BT = inputs["labels"][:, 1:] != -100  # causal shift of GKD: no prompt-width slicing
        self.teacher_model.eval()
        args = self.args
        terms = {
            "beta": self.beta, "top_k": args.top_k, "entropy_ratio": args.entropy_ratio,
            "indirect_coef": args.indirect_coef, "entropy_coef": args.entropy_coef, "tau": args.tau,
            "use_gate": args.use_gate, "entropy_scope": args.entropy_scope, "temperature": self.temperature,
            "num_items_in_batch": num_items_in_batch, "num_processes": self.accelerator.num_processes,
            **(inputs.get(COUNTS, {}) if num_items_in_batch is not None else {}),
            "selections": inputs.get(SELECTIONS) if num_items_in_batch is not None else None,
        }
        if args.loss_chunk_size == 0 or args.reference_code_compat:
            out = self._logits_loss(model, model_inputs, mask_BT, terms)
        else:
            out = self._chunked_loss(model, model_inputs, mask_BT, terms)
        for name, value in out.metrics.items():  # the terms as this micro-batch's means
            self.log_metric(name, value)
        return (out.loss, {}) if return_outputs else out.loss

    # --- global normalisers: counted over the step's micro-batches and processes -----------------------------------

    def _count_loss_tokens(self, batches: list[dict], device) -> torch.Tensor:
        """`num_items_in_batch`, after adding to every micro-batch the global batch's opener-token and entropy-unit
        counts (`COUNTS`) and, where the opener or the released code's entropy set needs the student's entropies,
        the selections they count (`SELECTIONS`), chosen by a no-grad pass over the step's samples."""
        count = super()._count_loss_tokens(batches, device)
        if len(batches) == 1 and self.accelerator.num_processes == 1:
            return count  # the loss's own micro-batch is the global batch
        args = self.args
        masks = [batch["labels"][:, 1:] != -100 for batch in batches]
        if args.indirect_coef > 0 or (args.reference_code_compat and args.entropy_coef > 0):
            selections = self._choose_selections(batches, masks)
            for batch, chosen in zip(batches, selections, strict=True):
                batch[SELECTIONS] = chosen
            names = ("num_opener_tokens", "num_entropy_units")
        else:  # the opener is unused (the indirect term stays a micro-batch mean, weighted 0); I's size follows
            # from the masks, whatever the entropies (ties go by position)
            selections = [(top_entropy_mask(mask_BT.float(), mask_BT, args.entropy_ratio, scope=args.entropy_scope),)
                          for mask_BT in masks]
            names = ("num_entropy_units",)
        scope = "batch" if args.reference_code_compat else args.entropy_scope
        local = torch.stack([torch.stack([*(opener_BT.sum() for opener_BT in chosen[:-1]),
                                          entropy_set_units(chosen[-1], scope)])
                             for chosen in selections]).sum(dim=0).to(device)
        if self.accelerator.num_processes > 1:
            local = self.accelerator.gather(local).view(-1, len(names)).sum(dim=0)
        for batch in batches:
            batch[COUNTS] = dict(zip(names, local, strict=True))
        return count

    @torch.no_grad()
    def _choose_selections(self, batches: list[dict], masks: list[torch.Tensor]) -> list[tuple]:
        """(opener, entropy set I) of each micro-batch from the student's token entropies, computed as the loss
        computes them (from the last hidden states, or full logits with `loss_chunk_size=0` / the released code). The
        adaptive opener draws its ratios from one call over the step's samples, in order, as one micro-batch would."""
        args = self.args
        entropies = [self._token_entropies(batch, mask_BT) for batch, mask_BT in zip(batches, masks, strict=True)]
        ratios = [args.opener_ratio] * len(batches)
        if args.adaptive_opener:
            gaps = [sample_entropy_gap(student_BT, teacher_BT, mask_BT)
                    for (student_BT, teacher_BT), mask_BT in zip(entropies, masks, strict=True)]
            history_H = torch.tensor(list(self.gap_history), dtype=torch.float64) if self.gap_history else None
            ratio_B = adaptive_opener_ratio(torch.cat(gaps), history_H, window=args.adaptive_window)
            self.gap_history.extend(torch.cat([gap_B[mask_BT.any(dim=-1)] for gap_B, mask_BT in zip(gaps, masks)])
                                    .tolist())
            self.log_metric("opener_ratio", ratio_B.mean().item(), mode="train")
            ratios = ratio_B.to(masks[0].device).split([mask_BT.shape[0] for mask_BT in masks])
        return [_selections(student_BT, mask_BT, ratio, args.entropy_ratio, args.entropy_scope,
                            args.reference_code_compat)
                for (student_BT, _), mask_BT, ratio in zip(entropies, masks, ratios, strict=True)]

    def _token_entropies(self, batch: dict, mask_BT: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor | None]:
        """Student (and, for the adaptive opener, teacher) token entropies `(B, T-1)` at the loss's temperature: on
        every position from full logits, on the loss tokens only (0 elsewhere) from the last hidden states."""
        model_inputs = {"input_ids": batch["input_ids"], "attention_mask": batch["attention_mask"]}
        models = [self.model_wrapped] + ([self.teacher_model] if self.args.adaptive_opener else [])
        if self.args.loss_chunk_size == 0 or self.args.reference_code_compat:
            values = [entropy(model(**model_inputs).logits[:, :-1, : self.vocab_size], self.temperature)
                      for model in models]
        else:
            chunk_size = self.args.loss_chunk_size if self.args.loss_chunk_size > 0 else None
            values = []
            for model in models:
                hidden_RH = last_hidden_state(model, model_inputs)[mask_BT]
                chunks = chunked_logits(hidden_RH, self.output_weight(model), chunk_size=chunk_size,
                                        vocab_size=self.vocab_size)
                entropy_R = torch.cat([entropy(logits_CV, self.temperature) for logits_CV in chunks])
                values.append(entropy_R.new_zeros(mask_BT.shape).index_put_((mask_BT,), entropy_R))
        return values[0], (values[1] if len(values) > 1 else None)

    def _logits_loss(self, model, model_inputs: dict, mask_BT: torch.Tensor, terms: dict) -> TSDKDOutput:
        """`tsd_kd_loss` on both models' full `(B, T, V)` logits (`loss_chunk_size=0`, or the released code's loss)."""
        student_logits_BTV = model(**model_inputs).logits[:, :-1, : self.vocab_size]
        with torch.no_grad():
            teacher_logits_BTV = self.teacher_model(**model_inputs).logits[:, :-1, : self.vocab_size]
        return tsd_kd_loss(student_logits_BTV, teacher_logits_BTV, mask_BT, opener_ratio=self._opener_ratio(mask_BT),
                           reference_code_compat=self.args.reference_code_compat, **terms)

    def _chunked_loss(self, model, model_inputs: dict, mask_BT: torch.Tensor, terms: dict) -> TSDKDOutput:
        """`tsd_kd_loss_chunked` from the last hidden states: neither model's logits are built."""
        student_BTH = last_hidden_state(model, model_inputs)
        with torch.no_grad():
            teacher_BTH = last_hidden_state(self.teacher_model, model_inputs)
        chunk_size = self.args.loss_chunk_size if self.args.loss_chunk_size > 0 else None
        return tsd_kd_loss_chunked(
            student_BTH, self.output_weight(model), teacher_BTH, self.output_weight(self.teacher_model), mask_BT,
            opener_ratio=self._opener_ratio(mask_BT), chunk_size=chunk_size, vocab_size=self.vocab_size, **terms,
        )

    def _opener_ratio(self, mask_BT: torch.Tensor):
        """The fixed `opener_ratio`, or (App. A.7) a function of the loss's detached token entropies giving per-row
        ratios from the smoothed entropy gap. Training rows with tokens extend `gap_history` (per process, as the
        authors' statistics are per device)."""
        if not self.args.adaptive_opener:
            return self.args.opener_ratio

        def adaptive(student_entropy_BT: torch.Tensor, teacher_entropy_BT: torch.Tensor) -> torch.Tensor:
            gap_B = sample_entropy_gap(student_entropy_BT, teacher_entropy_BT, mask_BT)
            history_H = torch.tensor(list(self.gap_history), dtype=torch.float64) if self.gap_history else None
            ratio_B = adaptive_opener_ratio(gap_B, history_H, window=self.args.adaptive_window)
            if self.model.training:
                self.gap_history.extend(gap_B[mask_BT.any(dim=-1)].tolist())
            self.log_metric("opener_ratio", ratio_B.mean().item())
            return ratio_B

        return adaptive
