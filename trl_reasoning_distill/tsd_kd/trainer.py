"""TSD-KD trainer: `KDTrainer` (on-policy GKD) with the token-selective dual loss of `tsd_kd/loss.py`.

Paper: Explain in Your Own Words: Improving Reasoning via Token-Selective Dual Knowledge Distillation,
https://huggingface.co/papers/2603.13260

    L = L_direct + γ · L_ent + α · L_indirect        (Eq. 13)

Only `compute_loss` changes: both models run on the sampled responses, and `tsd_kd_loss_chunked` (from the last
hidden states, the default) or `tsd_kd_loss` (full logits: `loss_chunk_size=0`, or `reference_code_compat`) does the
maths. Unlike the
authors' trainer (a copy of TRL 0.21's `GKDTrainer`), the loss is normalised over the global batch's loss tokens
after generation (`num_items_in_batch`), so accumulation and DDP give the per-token mean of one large batch.
"""

import textwrap
from collections import deque

import torch

from ..kd_trainer import KDTrainer, last_hidden_state
from .config import TSDKDConfig
from .loss import TSDKDOutput, tsd_kd_loss, tsd_kd_loss_chunked
from .selection import adaptive_opener_ratio, sample_entropy_gap


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
        }
        if args.loss_chunk_size == 0 or args.reference_code_compat:
            out = self._logits_loss(model, model_inputs, mask_BT, terms)
        else:
            out = self._chunked_loss(model, model_inputs, mask_BT, terms)
        self._log_terms(out.metrics, mask_BT, num_items_in_batch)
        return (out.loss, {}) if return_outputs else out.loss

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

    def _log_terms(self, metrics: dict[str, float], mask_BT: torch.Tensor, num_items_in_batch) -> None:
        """Log every term as this micro-batch's mean: undo the global-batch share the loss terms carry, so the
        logged values do not shrink with gradient accumulation or the number of processes."""
        count = mask_BT.sum().item() * self.accelerator.num_processes
        scale = 1.0 if num_items_in_batch is None or count == 0 else float(num_items_in_batch) / count
        for name, value in metrics.items():
            self.log_metric(name, value * scale if name in ("direct", "indirect", "entropy") else value)
