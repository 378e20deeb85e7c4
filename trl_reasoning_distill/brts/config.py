"""`BRTSConfig`: `KDConfig` plus the hyperparameters of BRTS, with the paper's (or the authors' code's) defaults.

Paper: On-Policy Distillation with Best-of-N Teacher Rollout Selection, https://huggingface.co/papers/2605.09725
(values from the paper's §3, §4.1 and App. A-C; "[code]" marks values found only in the authors' released code,
BWGZK-keke/BRTS@3885b18, a verl fork).
"""

from dataclasses import dataclass, field

from ..generation.base import TeacherGenerationConfig
from ..kd_config import KDConfig
from ..verify import EXTRACTION_MODES
from .loss import (
    DEFAULT_TEACHER_CONTEXT_COEF,
    DEFAULT_TOP_K,
    STUDENT_CONTEXT_ESTIMATORS,
    TEACHER_CONTEXT_MODES,
    WEIGHT_MODES,
)
from .main_context import MAIN_TEACHER_CONTEXTS
from .selection import FALLBACKS

TRAINER_ALIGNMENTS = ("positional", "teacher_ctx")  # the code's _topk_overlap; ours: overlap at the teacher prefix


@dataclass
class BRTSConfig(TeacherGenerationConfig, KDConfig):
    r"""
    Configuration class for [`BRTSTrainer`]. Only the BRTS fields are listed, plus the inherited defaults changed to
    the paper's values (`lmbda=1.0`: BRTS is on-policy only; `temperature=1.0`); see [`KDConfig`] and [`GKDConfig`].
    `beta` and `divergence` are not used. The paper trains with `learning_rate=1e-6` (constant, no warm-up) and
    `max_new_tokens=7168`; see `examples/configs/brts_paper.yaml`.

    Parameters:
        > Parameters of the loss (Eq. (5): `L = L_S + λ · L_T`)

        top_k (`int`, *optional*, defaults to `16`):
            K: the student's candidates in L_S, the teacher's in L_T, and the student's in the alignment score.
        teacher_context_coef (`float`, *optional*, defaults to `0.05`):
            λ, weight of the teacher-context term L_T. `0` is plain on-policy distillation (no teacher rollouts).
        student_context_estimator (`str`, *optional*, defaults to `"topk_rkl"`):
            L_S per token: the code's sampled top-K reverse KL (`"topk_rkl"`), or the exact reverse KL (`"full_rkl"`).
        weight_mode (`str`, *optional*, defaults to `"student_p"`):
            Weights of the top-K reverse KL over the student's candidates: `"student_p"`, `"teacher_p"` or `"none"`.
        teacher_context_mode (`str`, *optional*, defaults to `"teacher_topk_fkl"`):
            L_T per token: forward KL over the teacher's renormalised top-K (`"teacher_topk_fkl"`), or the L_S
            estimator on the teacher's context (`"student_topk_rkl"`).
        truncate_to_student_length (`bool`, *optional*, defaults to `True`):
            Supervise the selected rollout only up to the length of the student's rollout, as the code does.

        > Parameters of the released launchers (`examples/configs/brts_released.yaml`; the paper's setting is the
        > default)

        num_generations (`int`, *optional*, defaults to `1`):
            G, student rollouts per prompt: each prompt of a batch is repeated G times (so
            `per_device_train_batch_size` counts prompts), and each row gets its own teacher pool, as in the code. The
            paper's BRTS runs use 1; the released launchers 2 (`N_RESPONSES`).
        main_teacher_context (`str`, *optional*, defaults to `"student"`):
            Context of L_S's teacher log-probs: `"student"`, the student's rollout (paper §3.1); `"selected"`, the
            selected teacher rollout (`apply_selected_for_teacher_forward`); `"auto_overlap"`, whichever of the two
            holds more of the student's top-K in the teacher's top-K over the batch (plus
            `multi_forward_select_by_overlap`, the released `forward.sh`). Neither is in the paper (spec §2.11).

        > Parameters of the teacher rollout pool and the selection (Tiers 1-3)

        num_teacher_rollouts (`int`, *optional*, defaults to `2`):
            N, teacher rollouts sampled per prompt.
        teacher_temperature (`float`, *optional*, defaults to `0.7`):
            Sampling temperature of the teacher rollouts.
        teacher_top_p (`float`, *optional*, defaults to `0.95`):
            Nucleus of the teacher rollouts.
        teacher_max_new_tokens (`int`, *optional*):
            Longest teacher rollout; defaults to `max_new_tokens`, the student's.
        answer_column (`str`, *optional*, defaults to `"answer"`):
            Dataset column holding the ground-truth final answer.
        answer_extraction (`str`, *optional*, defaults to `"boxed"`):
            How the final answer is read from a rollout, one of `verify.EXTRACTION_MODES`.
        alignment (`str`, *optional*, defaults to `"positional"`):
            Alignment score ranking the rollouts: `"positional"` (teacher token t in the student's top-K at position
            t of the student's own rollout) or `"teacher_ctx"` (at the teacher's prefix; one more student forward).
        recovery (`bool`, *optional*, defaults to `False`):
            Tier 2: when no rollout of a prompt is correct, sample `num_recovery_rollouts` from the teacher prompted
            with the ground truth as a silent validation key. The student is trained on them under the original
            prompt: the hint never enters its input.
        num_recovery_rollouts (`int`, *optional*, defaults to `1`):
            M2, hinted rollouts per prompt without a correct rollout.
        recovery_leak_filter (`bool`, *optional*, defaults to `False`):
            Count a hinted rollout that mentions the validation key as incorrect.
        tier3_fallback (`str`, *optional*, defaults to `"most_similar"`):
            Prompts with no correct rollout: train on the most aligned rollout (`"most_similar"`), or not at all in
            L_T (`"skip"`).
    """

    lmbda: float = field(
        default=1.0,
        metadata={"help": "On-policy fraction: 1.0, every step samples the student (paper §3.1; App. A); required."},
    )
    temperature: float = field(
        default=1.0,
        metadata={"help": "Student sampling and loss temperature: 1.0 ([code]: rollout and logit temperature; "
                          "the paper's App. A value is lost)."},
    )
    top_k: int = field(
        default=DEFAULT_TOP_K,
        metadata={"help": "K of both loss branches and of the alignment score: 16 ([code] "
                          "LOG_PROB_TOP_K)."},
    )
    teacher_context_coef: float = field(
        default=DEFAULT_TEACHER_CONTEXT_COEF,
        metadata={"help": "λ, weight of the teacher-context term: 0.05 ([code] AUX_TEACHER_CTX_KD_COEF; "
                          "the paper's value, §3.3 and App. A, is lost). 0 = plain OPD, no teacher rollouts."},
    )
    student_context_estimator: str = field(
        default="topk_rkl",
        metadata={"help": f"L_S per token, one of {STUDENT_CONTEXT_ESTIMATORS}: top-K reverse KL (paper §3.1, "
                          "§3.4; [code]); full_rkl: ours, the exact reverse KL of Eq. 2, a sanity baseline."},
    )
    weight_mode: str = field(
        default="student_p",
        metadata={"help": f"Top-K weights of L_S, one of {WEIGHT_MODES}: student_p ([code] "
                          "reward_weight_mode)."},
    )
    teacher_context_mode: str = field(
        default="teacher_topk_fkl",
        metadata={"help": f"L_T per token, one of {TEACHER_CONTEXT_MODES}: forward KL over the teacher's top-K "
                          "on the selected trajectory (paper §3.3-3.4, Eq. 4)."},
    )
    truncate_to_student_length: bool = field(
        default=True,
        metadata={"help": "Truncate the selected rollout to the student's rollout length in L_T (ours: "
                          "as the [code] does)."},
    )
    num_generations: int = field(
        default=1,
        metadata={"help": "G, student rollouts per prompt (each prompt repeated G times in its batch): 1 (paper "
                          "App. A, 'Student 1'); the released launchers use 2 ([code] N_RESPONSES)."},
    )
    main_teacher_context: str = field(
        default="student",
        metadata={"help": f"Context of L_S's teacher, one of {MAIN_TEACHER_CONTEXTS}: student, matched contexts "
                          "(paper §3.1); selected: the selected teacher rollout ([code] "
                          "apply_selected_for_teacher_forward); auto_overlap: the context with more top-K overlap "
                          "([code] multi_forward_select_by_overlap, the released launchers)."},
    )
    num_teacher_rollouts: int = field(
        default=2, metadata={"help": "N, teacher rollouts per prompt: 2 (paper main setting, Table 1; [code])."}
    )
    teacher_temperature: float = field(
        default=0.7, metadata={"help": "Teacher sampling temperature: 0.7 ([code]; the paper's App. A value is lost)."}
    )
    teacher_top_p: float = field(default=0.95, metadata={"help": "Teacher top-p: 0.95 ([code]; App. A value lost)."})
    teacher_max_new_tokens: int | None = field(
        default=None,
        metadata={"help": "Longest teacher rollout; default max_new_tokens, 'the same maximum response length as "
                          "the student' (paper App. A)."},
    )
    answer_column: str = field(
        default="answer",
        metadata={"help": "Ground-truth answer column (ours: the name; the ground truth of paper App. A)."},
    )
    answer_extraction: str = field(
        default="boxed",
        metadata={"help": f"Answer extraction, one of {EXTRACTION_MODES}: the last \\boxed{{}} (paper App. B)."},
    )
    alignment: str = field(
        default="positional",
        metadata={"help": f"Alignment score, one of {TRAINER_ALIGNMENTS}: positional ([code] _topk_overlap; "
                          "paper §3.2); teacher_ctx: ours, the top-K overlap at the teacher's prefix."},
    )
    recovery: bool = field(
        default=False,
        metadata={"help": "Tier 2, ground-truth-hinted recovery rollouts (paper §3.2, App. B); off in the paper's "
                          "main runs (Table 1), on in Table 2's '2+1'."},
    )
    num_recovery_rollouts: int = field(
        default=1,
        metadata={"help": "M2, hinted rollouts per unsolved prompt: 1 ('one additional', paper App. A; [code])."},
    )
    recovery_leak_filter: bool = field(
        default=False,
        metadata={"help": "Reject hinted rollouts that mention the validation key (ours; off: the code "
                          "has none)."},
    )
    tier3_fallback: str = field(
        default="most_similar",
        metadata={"help": f"Tier 3, one of {FALLBACKS}: most_similar (paper §3.2, App. B; code); "
                          "skip: ours, in neither."},
    )

    def __post_init__(self):
        super().__post_init__()
        if self.lmbda != 1.0 or self.seq_kd:
            raise ValueError(f"BRTS is on-policy only: lmbda must be 1.0 and seq_kd False, got lmbda={self.lmbda}, "
                             f"seq_kd={self.seq_kd}.")
        for name in ("top_k", "num_generations", "num_teacher_rollouts", "num_recovery_rollouts"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be >= 1, got {getattr(self, name)}.")
        if not self.teacher_context_coef >= 0.0:
            raise ValueError(f"teacher_context_coef must be >= 0, got {self.teacher_context_coef}.")
        if not self.teacher_temperature > 0.0:
            raise ValueError(f"teacher_temperature must be > 0, got {self.teacher_temperature}.")
        if not 0.0 < self.teacher_top_p <= 1.0:
            raise ValueError(f"teacher_top_p must be in (0, 1], got {self.teacher_top_p}.")
        if self.teacher_max_new_tokens is not None and self.teacher_max_new_tokens < 1:
            raise ValueError(f"teacher_max_new_tokens must be >= 1 or None, got {self.teacher_max_new_tokens}.")
        if not self.answer_column:
            raise ValueError("answer_column must name the dataset's ground-truth column, got ''.")
        choices = {
            "student_context_estimator": STUDENT_CONTEXT_ESTIMATORS, "weight_mode": WEIGHT_MODES,
            "teacher_context_mode": TEACHER_CONTEXT_MODES, "answer_extraction": EXTRACTION_MODES,
            "alignment": TRAINER_ALIGNMENTS, "tier3_fallback": FALLBACKS,
            "main_teacher_context": MAIN_TEACHER_CONTEXTS,
        }
        for name, allowed in choices.items():
            if getattr(self, name) not in allowed:
                raise ValueError(f"{name} must be one of {allowed}, got {getattr(self, name)!r}.")
        if self.main_teacher_context != "student" and self.student_context_estimator != "topk_rkl":
            raise ValueError(f"main_teacher_context={self.main_teacher_context!r} (the released code's path) "
                             f"needs student_context_estimator='topk_rkl', got {self.student_context_estimator!r}.")
