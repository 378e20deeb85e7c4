"""TSD-KD trainer: `KDTrainer` (on-policy GKD) with the token-selective dual loss of `tsd_kd/loss.py`.

Paper: Explain in Your Own Words: Improving Reasoning via Token-Selective Dual Knowledge Distillation,
https://huggingface.co/papers/2603.13260

    L = L_direct + γ · L_ent + α · L_indirect        (Eq. 13)

Only `compute_loss` changes: both models run on the sampled responses and `tsd_kd_loss` does the maths. Unlike the
authors' trainer (a copy of TRL 0.21's `GKDTrainer`), the loss is normalised over the global batch's loss tokens
after generation (`num_items_in_batch`), so accumulation and DDP give the per-token mean of one large batch.
"""

import textwrap
from collections import deque

import torch

from ..divergence import entropy
from ..kd_trainer import KDTrainer
from .config import TSDKDConfig
from .loss import adaptive_opener_ratio, sample_entropy_gap, tsd_kd_loss


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

    def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
        model_inputs = {"input_ids": inputs["input_ids"], "attention_mask": inputs["attention_mask"]}
        student_logits_BTV = model(**model_inputs).logits[:, :-1, : self.vocab_size]
        self.teacher_model.eval()
        with torch.no_grad():
            teacher_logits_BTV = self.teacher_model(**model_inputs).logits[:, :-1, : self.vocab_size]
        mask_BT = inputs["labels"][:, 1:] != -100  # causal shift of GKD: no prompt-width slicing
        args = self.args
        out = tsd_kd_loss(
            student_logits_BTV, teacher_logits_BTV, mask_BT, beta=self.beta, top_k=args.top_k,
            opener_ratio=self._opener_ratio(student_logits_BTV, teacher_logits_BTV, mask_BT),
            entropy_ratio=args.entropy_ratio, indirect_coef=args.indirect_coef, entropy_coef=args.entropy_coef,
            tau=args.tau, use_gate=args.use_gate, entropy_scope=args.entropy_scope, temperature=self.temperature,
            reference_code_compat=args.reference_code_compat, num_items_in_batch=num_items_in_batch,
            num_processes=self.accelerator.num_processes,
        )
        self._log_terms(out.metrics, mask_BT, num_items_in_batch)
        return (out.loss, {}) if return_outputs else out.loss

    def _opener_ratio(self, student_logits_BTV, teacher_logits_BTV, mask_BT) -> float | torch.Tensor:
        """The fixed `opener_ratio`, or per-row ratios from the smoothed entropy gap (App. A.7); training rows with
        tokens extend `gap_history` (per process, as the authors' statistics are per device)."""
        if not self.args.adaptive_opener:
            return self.args.opener_ratio
        with torch.no_grad():
            gap_B = sample_entropy_gap(entropy(student_logits_BTV, self.temperature),
                                       entropy(teacher_logits_BTV, self.temperature), mask_BT)
        history_H = torch.tensor(list(self.gap_history), dtype=torch.float64) if self.gap_history else None
        ratio_B = adaptive_opener_ratio(gap_B, history_H, window=self.args.adaptive_window)
        if self.model.training:
            self.gap_history.extend(gap_B[mask_BT.any(dim=-1)].tolist())
        self.log_metric("opener_ratio", ratio_B.mean().item())
        return ratio_B

    def _log_terms(self, metrics: dict[str, float], mask_BT: torch.Tensor, num_items_in_batch) -> None:
        """Log every term as this micro-batch's mean: undo the global-batch share the loss terms carry, so the
        logged values do not shrink with gradient accumulation or the number of processes."""
        count = mask_BT.sum().item() * self.accelerator.num_processes
        scale = 1.0 if num_items_in_batch is None or count == 0 else float(num_items_in_batch) / count
        for name, value in metrics.items():
            self.log_metric(name, value * scale if name in ("direct", "indirect", "entropy") else value)
