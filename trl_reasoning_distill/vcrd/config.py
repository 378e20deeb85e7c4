"""`VCRDConfig`: `KDConfig` plus the hyperparameters of VCRD, with the paper's defaults.

Paper: Validity-Calibrated Reasoning Distillation, https://huggingface.co/papers/2605.04078 (values from
the paper's §2, §4, §10 and Table 9; "DL2" is the DistiLLM-2 code the paper follows, jongwooko/distillm-2; "ours"
marks our own choices).
"""

import json
from dataclasses import dataclass, field
from typing import Any

from ..generation.base import TeacherGenerationConfig
from ..kd_config import KDConfig
from .loss import REDUCTIONS, WEIGHTING_RULES
from .validity import PROPOSAL_SOURCES, PROPOSAL_STRATEGIES, SCORING_IMPLS

VALIDITY_JUDGES = ("prm", "step_checker", "teacher_prob", "constant")
ROLLOUT_MODES = ("offline", "online")


@dataclass
class VCRDConfig(TeacherGenerationConfig, KDConfig):
    r"""
    Configuration class for [`VCRDTrainer`]. Only the VCRD fields are listed, plus the inherited defaults changed to
    the paper's values (`learning_rate=5e-5`, `max_length=1024`, `max_new_tokens=512`, `temperature=1.0`,
    `lmbda=0.0`); see [`KDConfig`] and [`GKDConfig`]. `divergence` and `beta` are not used: the two terms are fixed
    to skew KL on the teacher responses and skew reverse KL on the student responses, with `skew_alpha`.

    Parameters:
        > Parameters of the objective (Eqs. 3-4: `L = λ_T · L_LV-SKL + λ_S · L_LV-SRKL`)

        lambda_teacher (`float`, *optional*, defaults to `1.0`):
            λ_T, weight of the validity-weighted skew KL on the teacher responses.
        lambda_student (`float`, *optional*, defaults to `1.0`):
            λ_S, weight of the validity-weighted skew reverse KL on the student responses.
        loss_reduction (`str`, *optional*, defaults to `"seq_mean"`):
            `"seq_mean"` (per-response token mean, then the batch mean) or `"seq_sum"` (Algorithm 1's Σ_t).

        > Parameters of the validity weights (Eq. 1: `w = r(c, a^S) / (r(c, a^T) + ε)`)

        validity_judge (`str`, *optional*, defaults to `"prm"`):
            `"prm"`: a token-level judge, the PRM of `prm_model_name_or_path` or a `validity_scorer` given to the
            trainer (scored on token ids); `"step_checker"`: a line-level judge, the toy world's exact step checker or
            a given `validity_scorer` (scored on the text lines of `vcrd.toy_steps`); `"teacher_prob"`: the PRM-free
            weight of paper §10.4; `"constant"`: `w = 1`, the DistiLLM-2 loss.
        weighting_rule (`str`, *optional*, defaults to `"ratio"`):
            `"ratio"` (Eq. 1), `"difference"`, `"student_only"` or `"constant"` (ablations of paper Tables 5 and 10).
        validity_eps (`float`, *optional*, defaults to `1e-8`):
            Smoothing ε of Eq. (1) and of the PRM-free ratio.
        proposal_source (`str`, *optional*, defaults to `"same_prefix"`):
            `"same_prefix"`: the other model proposes under each rollout's own prefix; `"aligned_rollout"`: the step
            at the same position of the other rollout (Algorithm 1 read literally).
        student_proposal, teacher_proposal (`str`, *optional*, default to `"sample"`):
            How the student proposes on teacher prefixes and the teacher on student prefixes: `"sample"` or `"greedy"`.
        proposal_temperature (`float`, *optional*, defaults to `1.0`):
            Sampling temperature of the proposals.
        line_proposal_max_new_tokens (`int`, *optional*, defaults to `48`):
            Token budget of one proposed line (`"step_checker"` with `"same_prefix"` only).
        disable_amplification (`bool`, *optional*, defaults to `False`):
            `w ← min(w, 1)` (paper Fig. 3 ablation).
        weight_clip_min, weight_clip_max (`float` or `None`, *optional*, default to `None`):
            Bounds of the judge weights (`"prm"`, `"step_checker"`); the paper does not clip.

        > Parameters of the PRM judge

        prm_model_name_or_path (`str` or `None`, *optional*, defaults to `None`):
            A token-classification PRM over the policy's vocabulary (1 label: value head; 2 labels: P(positive)).
        prm_model_init_kwargs (`dict` or `None`, *optional*, defaults to `None`):
            Keyword arguments of `AutoModelForTokenClassification.from_pretrained` for the PRM, e.g. `key_mapping`.
        prm_prompt_template (`str`, *optional*, defaults to `"{bos}{prompt}\n"`):
            The PRM prompt (Skywork format).
        prm_separator_token_id (`int` or `None`, *optional*, defaults to `None`):
            Token appended after each candidate and read there (Qwen2.5-Math-PRM's `<extra_0>`); `None` reads at the
            candidate.
        prm_scoring_impl (`str`, *optional*, defaults to `"packed"`):
            `"packed"` (one forward per rollout) or `"loop"` (one forward per proposal, the reference).
        prm_batch_size (`int`, *optional*, defaults to `8`):
            Rollouts per PRM forward.

        > Parameters of the PRM-free judge (paper §10.4)

        teacher_prob_top_k (`int`, *optional*, defaults to `128`):
            k of the teacher's top-k collision mass.
        teacher_prob_gamma (`float`, *optional*, defaults to `0.5`):
            Smoothing exponent γ.
        teacher_prob_clip_min, teacher_prob_clip_max (`float`, *optional*, default to `0.5` and `2.0`):
            Clip range of the PRM-free weight.

        > Parameters of the rollouts and the data

        student_rollout (`str`, *optional*, defaults to `"offline"`):
            `"offline"`: student responses come from the dataset; `"online"`: the trainer samples them.
        rollout_temperature (`float`, *optional*, defaults to `0.8`):
            Sampling temperature of online student rollouts.
        rollout_top_p (`float`, *optional*, defaults to `0.95`):
            Nucleus top-p of online student rollouts.
        max_prompt_length (`int`, *optional*, defaults to `512`):
            Prompts are cut to their last `max_prompt_length` tokens, responses to `max_length` minus the prompt.
    """

    # --- inherited fields with VCRD's values ---
    learning_rate: float = field(default=5e-5, metadata={"help": "Learning rate: 5e-5 (paper Table 9)."})
    max_length: int | None = field(
        default=1024, metadata={"help": "Max prompt + response tokens: 1024 (paper Table 9)."}
    )
    max_new_tokens: int = field(
        default=512,
        metadata={"help": "Online rollout budget: 512 = max_length - max_prompt_length (DL2 code)."},
    )
    temperature: float = field(
        default=1.0, metadata={"help": "Divergence temperature: 1.0, none in the paper or DL2 code (ours)."}
    )
    lmbda: float = field(
        default=0.0,
        metadata={"help": "GKD's on-policy switch, unused: must stay 0; set student_rollout instead (ours)."},
    )
    skew_alpha: float = field(
        default=0.1, metadata={"help": "Skew α of SKL and SRKL: 0.1, not in the paper (DL2 base_alpha_1/2)."}
    )
    # --- objective ---
    lambda_teacher: float = field(
        default=1.0,
        metadata={"help": "λ_T: 1.0 (paper §10.2, Qwen2.5-Math; 2 for Qwen2-Math, code and IF)."},
    )
    lambda_student: float = field(
        default=1.0,
        metadata={"help": "λ_S: 1.0 (paper §10.2, Qwen2.5-Math; 1.5 Qwen2-Math, 1 code, 2/1 IF)."},
    )
    loss_reduction: str = field(
        default="seq_mean",
        metadata={"help": f"One of {REDUCTIONS}: per-response token mean, DL2's reduction (Alg. 1 sums)."},
    )
    # --- validity weights ---
    validity_judge: str = field(
        default="prm",
        metadata={"help": f"One of {VALIDITY_JUDGES}: a PRM, as in the paper's main results (paper §4)."},
    )
    weighting_rule: str = field(
        default="ratio", metadata={"help": f"One of {WEIGHTING_RULES}: the ratio of Eq. 1 (paper §2.2)."}
    )
    validity_eps: float = field(default=1e-8, metadata={"help": "ε of Eq. 1: 1e-8 (paper Table 9; also §10.4's)."})
    proposal_source: str = field(
        default="same_prefix",
        metadata={"help": f"One of {PROPOSAL_SOURCES}: proposals under the same prefix (paper §2.1-2.2)."},
    )
    student_proposal: str = field(
        default="sample",
        metadata={"help": f"One of {PROPOSAL_STRATEGIES}: sampled at τ=1, not stated in the paper (ours)."},
    )
    teacher_proposal: str = field(
        default="sample",
        metadata={"help": f"One of {PROPOSAL_STRATEGIES}: sampled, 'rather than taken greedily' (paper §4.6)."},
    )
    proposal_temperature: float = field(
        default=1.0, metadata={"help": "Proposal sampling temperature: 1.0, not stated in the paper (ours)."}
    )
    line_proposal_max_new_tokens: int = field(
        default=48,
        metadata={"help": "Tokens of one proposed line (step_checker, same_prefix): 48, ours: toy lines are <= 30."},
    )
    disable_amplification: bool = field(
        default=False, metadata={"help": "w <- min(w, 1): off; the 'amplification disabled' ablation (§4.4, Fig. 3)."}
    )
    weight_clip_min: float | None = field(
        default=None, metadata={"help": "Lower bound of PRM weights: none (paper, by omission)."}
    )
    weight_clip_max: float | None = field(
        default=None, metadata={"help": "Upper bound of PRM weights: none (paper, by omission)."}
    )
    # --- PRM judge ---
    prm_model_name_or_path: str | None = field(
        default=None,
        metadata={"help": "PRM checkpoint: none; the paper uses Skywork/Skywork-o1-Open-PRM-Qwen-2.5-1.5B (§4)."},
    )
    prm_model_init_kwargs: dict[str, Any] | str | None = field(
        default=None, metadata={"help": "from_pretrained kwargs of the PRM (a dict or a JSON string): none, ours."}
    )
    prm_prompt_template: str = field(
        default="{bos}{prompt}\n",
        metadata={"help": "PRM prompt: Skywork's bos + problem + newline (Skywork's inference code)."},
    )
    prm_separator_token_id: int | None = field(
        default=None,
        metadata={"help": "Read the PRM at this appended token: none, read at the candidate (ours; paper: no rule)."},
    )
    prm_scoring_impl: str = field(
        default="packed",
        metadata={"help": f"One of {SCORING_IMPLS}: packed sibling scoring, one forward per rollout (ours)."},
    )
    prm_batch_size: int = field(
        default=8, metadata={"help": "Rollouts per PRM forward: 8, ours (bounds the PRM's memory)."}
    )
    # --- PRM-free judge ---
    teacher_prob_top_k: int = field(default=128, metadata={"help": "Top-k of the collision mass: 128 (paper §10.4)."})
    teacher_prob_gamma: float = field(default=0.5, metadata={"help": "Smoothing exponent γ: 0.5 (paper §10.4)."})
    teacher_prob_clip_min: float = field(default=0.5, metadata={"help": "Lower clip of w: 0.5 (paper §10.4)."})
    teacher_prob_clip_max: float = field(default=2.0, metadata={"help": "Upper clip of w: 2.0 (paper §10.4)."})
    # --- rollouts and data ---
    student_rollout: str = field(
        default="offline",
        metadata={"help": f"One of {ROLLOUT_MODES}: generated once before training (paper §12)."},
    )
    rollout_temperature: float = field(
        default=0.8, metadata={"help": "Online rollout temperature: 0.8 (DL2 generate_vllm.py; not in the paper)."}
    )
    rollout_top_p: float = field(default=0.95, metadata={"help": "Online rollout top-p: 0.95 (DL2 generate_vllm.py)."})
    max_prompt_length: int = field(
        default=512, metadata={"help": "Prompt tokens kept (the last ones): 512 (paper Table 9)."}
    )

    def __post_init__(self):
        super().__post_init__()
        if isinstance(self.prm_model_init_kwargs, str):
            self.prm_model_init_kwargs = json.loads(self.prm_model_init_kwargs)
        choices = {
            "loss_reduction": REDUCTIONS, "validity_judge": VALIDITY_JUDGES, "weighting_rule": WEIGHTING_RULES,
            "proposal_source": PROPOSAL_SOURCES, "student_proposal": PROPOSAL_STRATEGIES,
            "teacher_proposal": PROPOSAL_STRATEGIES, "prm_scoring_impl": SCORING_IMPLS,
            "student_rollout": ROLLOUT_MODES,
        }  # fmt: skip
        for name, allowed in choices.items():
            if getattr(self, name) not in allowed:
                raise ValueError(f"{name} must be one of {allowed}, got {getattr(self, name)!r}.")
        for name in ("lambda_teacher", "lambda_student", "teacher_prob_gamma"):
            if not getattr(self, name) >= 0:
                raise ValueError(f"{name} must be >= 0, got {getattr(self, name)}.")
        if self.lambda_teacher == self.lambda_student == 0:
            raise ValueError("lambda_teacher and lambda_student are both 0: the loss would be 0.")
        for name in ("validity_eps", "proposal_temperature", "rollout_temperature"):
            if not getattr(self, name) > 0:
                raise ValueError(f"{name} must be > 0, got {getattr(self, name)}.")
        if not 0 < self.rollout_top_p <= 1:
            raise ValueError(f"rollout_top_p must be in (0, 1], got {self.rollout_top_p}.")
        for name in ("line_proposal_max_new_tokens", "prm_batch_size", "teacher_prob_top_k", "max_prompt_length"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be >= 1, got {getattr(self, name)}.")
        if self.max_length is None or self.max_prompt_length >= self.max_length:
            raise ValueError(f"max_prompt_length ({self.max_prompt_length}) must be below max_length "
                             f"({self.max_length}), leaving room for the responses.")
        if not 0 < self.teacher_prob_clip_min <= self.teacher_prob_clip_max:
            raise ValueError(f"teacher_prob_clip_min, teacher_prob_clip_max must satisfy 0 < min <= max, got "
                             f"{self.teacher_prob_clip_min} and {self.teacher_prob_clip_max}.")
        self._check_weight_clip()
        if self.lmbda != 0.0 or self.seq_kd:
            raise ValueError(f"VCRD draws its rollouts itself: lmbda must be 0 and seq_kd False (got lmbda="
                             f"{self.lmbda}, seq_kd={self.seq_kd}); use student_rollout='online' for on-line samples.")

    def _check_weight_clip(self) -> None:
        low, high = self.weight_clip_min, self.weight_clip_max
        if (low, high) == (None, None):
            return
        if self.validity_judge not in ("prm", "step_checker"):
            raise ValueError(f"weight_clip_min, weight_clip_max apply to the 'prm' and 'step_checker' judges, not "
                             f"{self.validity_judge!r} (the PRM-free weight uses teacher_prob_clip_min/max).")
        if low is not None and high is not None and low > high:
            raise ValueError(f"weight_clip_min ({low}) must be <= weight_clip_max ({high}).")
