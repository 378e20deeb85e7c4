"""`TSDKDConfig`: `KDConfig` plus the hyperparameters of TSD-KD, with the paper's defaults.

Paper: Explain in Your Own Words: Improving Reasoning via Token-Selective Dual Knowledge Distillation,
https://huggingface.co/papers/2603.13260 (values from the paper's §3, §4.1 and App. A.3-A.9, and from the
authors' released code).
"""

from dataclasses import dataclass, field

from ..kd_config import KDConfig
from .selection import ENTROPY_SCOPES


@dataclass
class TSDKDConfig(KDConfig):
    r"""
    Configuration class for [`TSDKDTrainer`]. Only the TSD-KD fields are listed, plus the inherited defaults changed
    to the paper's values (`lmbda=1.0`, `beta=0.9`, `temperature=1.0`); see [`KDConfig`] and [`GKDConfig`].

    Parameters:
        > Parameters of the loss (Eq. 13: `L = L_direct + γ · L_ent + α · L_indirect`)

        top_k (`int`, *optional*, defaults to `10`):
            Student top-K candidates re-ranked by the teacher in the indirect loss, K.
        opener_ratio (`float`, *optional*, defaults to `0.1`):
            Opener ratio p: the opener is the shortest prefix holding this share of the response's student entropy.
        entropy_ratio (`float`, *optional*, defaults to `0.1`):
            Ratio ρ of highest-entropy tokens whose student entropy is minimised.
        indirect_coef (`float`, *optional*, defaults to `0.1`):
            Weight α of the indirect (Plackett-Luce re-ranking) loss.
        entropy_coef (`float`, *optional*, defaults to `1.0`):
            Weight γ of the selective entropy loss.
        tau (`float`, *optional*, defaults to `1.0`):
            Gate sharpness τ of `σ((H_S - H_T) / τ)`.
        use_gate (`bool`, *optional*, defaults to `True`):
            Weight the direct loss per token by the entropy-gap gate; `False` weights every token 1.
        entropy_scope (`str`, *optional*, defaults to `"sequence"`):
            `"sequence"`: top-ρ tokens of each response; `"batch"`: of the whole micro-batch (the selection is per
            micro-batch, so unlike `"sequence"` it depends on the per-device batch size; the mean is global).
        reference_code_compat (`bool`, *optional*, defaults to `False`):
            Compute what the authors' released code computes (reversed PL denominator, batch-flattened exclusive
            opener, one ratio for both selections, top ~90 % entropy set, zero JSD at β ∈ {0, 1}). The vocabulary
            stays ours: the released code resizes the student to the teacher's 152,064 embedding rows and takes
            every softmax over all of them, so both models also put probability mass on the untrained padding rows
            past the tokenizer's 151,665 tokens (and the student's resized rows start near an average token's
            logit); we slice both models to the tokenizer's rows, so the JSD, entropies and top-K log-probs are
            over real tokens only and differ slightly from the released code's even with this switch on.

        > Parameters of the adaptive opener (App. A.7)

        adaptive_opener (`bool`, *optional*, defaults to `False`):
            Choose p per sample from the quantile of its smoothed entropy gap `mean H_S - mean H_T` among earlier
            samples (placeholder bins of `adaptive_opener_ratio`).
        adaptive_window (`int`, *optional*, defaults to `5`):
            Moving-average window, in samples, of the entropy gap.
        adaptive_history (`int`, *optional*, defaults to `1024`):
            Number of past gaps kept on the trainer for the quantile.
    """

    lmbda: float = field(
        default=1.0, metadata={"help": "On-policy fraction λ: 1.0, fully on-policy (paper Table 6; code LAMBDA=1)."}
    )
    beta: float = field(
        default=0.9,
        metadata={"help": "JSD interpolation β: 0.9, 'as suggested by GKD' (paper §4.1, App. A.5; code)."},
    )
    temperature: float = field(
        default=1.0, metadata={"help": "KD and sampling temperature T: 1.0 (paper App. A.9; code)."}
    )
    top_k: int = field(
        default=10, metadata={"help": "Student candidates K re-ranked by the teacher: 10 (paper App. A.3, Fig. 4)."}
    )
    opener_ratio: float = field(
        default=0.1, metadata={"help": "Opener entropy ratio p: 0.1 (paper Eq. 10, Fig. 3, App. A.9)."}
    )
    entropy_ratio: float = field(
        default=0.1,
        metadata={"help": "Top-entropy token ratio ρ of the entropy loss: 0.1 (paper Eq. 12, App. A.4, Fig. 5)."},
    )
    indirect_coef: float = field(
        default=0.1, metadata={"help": "Weight α of the indirect loss: 0.1 (paper Eq. 13, App. A.9; code)."}
    )
    entropy_coef: float = field(
        default=1.0,
        metadata={"help": "Weight γ of the entropy loss: 1.0, equal to the direct term (paper §3.3, Eq. 13)."},
    )
    tau: float = field(
        default=1.0, metadata={"help": "Gate sharpness τ: 1.0 (no value in the paper; the code's σ(H_S − H_T))."}
    )
    use_gate: bool = field(
        default=True, metadata={"help": "Gate the direct loss by σ((H_S − H_T)/τ) (paper Eq. 11; Table 3 ablates)."}
    )
    entropy_scope: str = field(
        default="sequence",
        metadata={"help": f"Entropy selection scope, one of {ENTROPY_SCOPES} (per response: Eq. 12; batch: ours)."},
    )
    reference_code_compat: bool = field(
        default=False,
        metadata={"help": "Reproduce the released code's loss (its train.py's trainer); needs entropy_ratio == "
                          "opener_ratio and adaptive_opener=False. The vocabulary stays ours: softmaxes over the "
                          "tokenizer's rows, where the released code resizes the student to the teacher's 152,064 "
                          "rows and normalises over all, padding rows included."},
    )
    adaptive_opener: bool = field(
        default=False, metadata={"help": "Adaptive opener ratio p from the entropy gap (paper App. A.7)."}
    )
    adaptive_window: int = field(
        default=5, metadata={"help": "Moving-average window of the entropy gap: 5 samples (paper App. A.7)."}
    )
    adaptive_history: int = field(
        default=1024, metadata={"help": "Past gaps kept for the adaptive quantile (not in the paper; our choice)."}
    )

    def __post_init__(self):
        super().__post_init__()
        for name in ("opener_ratio", "entropy_ratio"):
            if not 0.0 <= getattr(self, name) <= 1.0:
                raise ValueError(f"{name} must be in [0, 1], got {getattr(self, name)}.")
        if self.top_k < 1:
            raise ValueError(f"top_k must be >= 1, got {self.top_k}.")
        for name in ("indirect_coef", "entropy_coef"):
            if getattr(self, name) < 0:
                raise ValueError(f"{name} must be >= 0, got {getattr(self, name)}.")
        if not self.tau > 0:
            raise ValueError(f"tau must be > 0, got {self.tau}.")
        if self.entropy_scope not in ENTROPY_SCOPES:
            raise ValueError(f"entropy_scope must be one of {ENTROPY_SCOPES}, got {self.entropy_scope!r}.")
        if self.adaptive_window < 1:
            raise ValueError(f"adaptive_window must be >= 1, got {self.adaptive_window}.")
        if self.adaptive_history < 1:
            raise ValueError(f"adaptive_history must be >= 1, got {self.adaptive_history}.")
        if self.reference_code_compat and (self.adaptive_opener or self.entropy_ratio != self.opener_ratio):
            raise ValueError(
                "reference_code_compat=True ties both selections to one fixed ratio (as the released code does): "
                "set entropy_ratio equal to opener_ratio and adaptive_opener=False; "
                f"got entropy_ratio={self.entropy_ratio}, opener_ratio={self.opener_ratio}, "
                f"adaptive_opener={self.adaptive_opener}."
            )
