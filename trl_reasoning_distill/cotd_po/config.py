"""`CoTDPOConfig`: `DPOConfig` plus the hyperparameters of CoTD-PO, with the paper's or the released code's defaults.

Paper: CoTD-PO: Chain-of-Thought Distillation with Preference Optimization (Niu et al.); authors' code
github.com/little-mushroom0/COTD_PO (`cotdpo_o.py`). Values and their sources: the paper (§2.2, §3.1, App. C),
the released code, or ours where neither gives one. Where the paper gives no value the released code's is used, so
the loss defaults compute the code's loss (`PromptLevelTrainer.compute_loss`); the optimisation defaults are the
paper's (§3.1, "Training Details").
"""

from dataclasses import dataclass, field

import torch

from .._trl import DPOConfig
from ..generation.base import TeacherGenerationConfig
from ..validation import check_finite_fields
from .loss import LOGP_AGGREGATIONS, LOSS_MODES, RATIONALE_REDUCTIONS, REWARD_NORMALIZATIONS

# The released code's user message (`cotdpo_o.py`; the paper gives none); `{prompt}` is replaced by the instruction.
CODE_INSTRUCTION_TEMPLATE = (
    "Your task is to answer the question below. Provide a brief, step-by-step analysis of your thought process in "
    "answering the question, and then give your answer to the question. Please use the format 'My thought: ...' and "
    "'My answer: ...'. \nQuestion: {prompt}"
)

# The released code's hard-coded Llama-3 markup (`cotdpo_o.py`), a `prompt_template` value: one user turn and the
# assistant header, with no `<|begin_of_text|>` (BOS) and no system turn, where Llama-3.1's chat template adds both.
LLAMA3_RELEASED_PROMPT_TEMPLATE = (
    "<|start_header_id|>user<|end_header_id|>\n\n{prompt}<|eot_id|><|start_header_id|>assistant<|end_header_id|>\n\n"
)

# DPO's own loss settings: CoTD-PO's loss does not read them, so a changed value would be silently ignored.
_UNUSED_DPO_DEFAULTS = {"beta": 0.1, "loss_type": ["sigmoid"], "loss_weights": None, "ld_alpha": None,
                        "use_weighting": False, "label_smoothing": 0.0, "f_divergence_type": "reverse_kl",
                        "sync_ref_model": False}


@dataclass
class CoTDPOConfig(TeacherGenerationConfig, DPOConfig):
    r"""
    Configuration class for [`CoTDPOTrainer`]. Only the CoTD-PO fields are listed, plus the inherited defaults changed
    to the paper's (or the released code's) values; see [`DPOConfig`]. DPO's loss settings (`beta`, `loss_type`,
    `loss_weights`, `ld_alpha`, `use_weighting`, `label_smoothing`, `f_divergence_type`, `sync_ref_model`) are not
    used and must keep their defaults; `precompute_ref_log_probs` is forced to `True`, which only stops
    [`DPOTrainer`] from building a reference copy of the policy (CoTD-PO is reference-free: Eq. 9 has no reference).

    Parameters:
        > Parameters of the teacher target (Eq. 4)

        reward_normalization (`str`, *optional*, defaults to `"minmax"`):
            Per-prompt rescaling of the teacher's rewards before the softmax: `"minmax"` (released code), `"none"`
            (Eq. 4 literally; the choice for log-likelihood teachers) or `"zscore"`.
        reward_scale (`float`, *optional*, defaults to `5.0`):
            Multiplier after normalisation, the teacher's inverse temperature.
        reward_norm_eps (`float`, *optional*, defaults to `1e-3`):
            Added to the range (or std) in the normalisation's denominator.

        > Parameters of the student distribution (Eq. 7-8)

        apa_lambda (`float`, *optional*, defaults to `0.5`):
            λ, inverse temperature of the student's softmax over its candidates' log-likelihoods.
        logp_aggregation (`str`, *optional*, defaults to `"padded_mean"`):
            Candidate score before λ: `"padded_mean"` (answer log-likelihood / (group's longest sequence − 1),
            released code), `"sum"` (Eq. 8 literally; use a much smaller λ) or `"mean"` (per answer token).

        > Parameters of the composite objective (Eq. 9)

        alpha (`float`, *optional*, defaults to `1.0`):
            α, weight of the answer-preference term.
        rationale_weight (`float`, *optional*, defaults to `1.0`):
            Weight of the teacher-rationale NLL; 0 with `use_teacher_rationale=False` is the No-Teacher-CoT ablation.
        rationale_reduction (`str`, *optional*, defaults to `"token_mean"`):
            `"token_mean"` (released code) or `"sum"` (Eq. 9 literally) over the rationale tokens.
        best_answer_nll_weight (`float`, *optional*, defaults to `0.0`):
            Weight of the token-mean NLL of the highest-reward answer (the code logs it with weight 0).

        > Parameters of the pairwise ablation (Eq. 11, Table 3)

        loss_mode (`str`, *optional*, defaults to `"apa"`):
            `"apa"`: the listwise loss of Eq. 8; `"pairwise_simpo"`: SimPO on the best and worst candidate plus NLL
            on the best.
        simpo_beta (`float`, *optional*, defaults to `2.5`):
            SimPO β (not reported by the paper).
        simpo_gamma (`float`, *optional*, defaults to `1.375`):
            SimPO margin γ (not reported by the paper).
        chosen_nll_weight (`float`, *optional*, defaults to `1.0`):
            Weight of the chosen answer's NLL in the pairwise loss (value not reported by the paper).

        > Parameters of the sequence format (released code)

        use_teacher_rationale (`bool`, *optional*, defaults to `True`):
            Condition every candidate on the teacher's rationale (dataset column `rationale`) and train on it;
            `False`: no rationale, the candidates are whole student continuations (No-Teacher-CoT ablation).
        instruction_template (`str`, *optional*, defaults to the released code's):
            User message built from the instruction; `{prompt}` is replaced by the (last user turn of the) prompt.
        prompt_template (`str` or `None`, *optional*, defaults to `None`):
            Raw prompt markup used instead of the tokenizer's chat template, with exactly one `{prompt}` (replaced by
            the user message of `instruction_template`); the text is tokenized as is, adding no BOS. Prompts must then
            be a single user turn. `LLAMA3_RELEASED_PROMPT_TEMPLATE` is the released code's Llama-3 markup (no BOS, no
            system turn). `None`: the chat template.
        thought_prefix (`str`, *optional*, defaults to `"My thought: "`):
            Text before the teacher's rationale, at the start of the assistant turn.
        answer_prefix (`str`, *optional*, defaults to `"My answer:"`):
            Text between the rationale and the answer.
    """

    # --- teacher target (Eq. 4) ---
    reward_normalization: str = field(
        default="minmax",
        metadata={"help": f"Per-prompt reward rescaling, one of {REWARD_NORMALIZATIONS}: minmax (released code, "
                          "PromptLevelTrainer.compute_loss); none is Eq. 4 literally."},
    )
    reward_scale: float = field(
        default=5.0, metadata={"help": "Multiplier after normalisation: 5, targets in [0, 5) (released code)."}
    )
    reward_norm_eps: float = field(
        default=1e-3, metadata={"help": "Epsilon of the normalisation's denominator: 1e-3 (released code)."}
    )
    # --- student distribution (Eq. 7-8) ---
    apa_lambda: float = field(
        default=0.5,
        metadata={"help": "λ of Eq. 8: 0.5 (paper: not reported; released code, with "
                          "padded_mean)."},
    )
    logp_aggregation: str = field(
        default="padded_mean",
        metadata={"help": f"Candidate score, one of {LOGP_AGGREGATIONS}: padded_mean (released code); sum is "
                          "Eq. 8 literally."},
    )
    # --- composite objective (Eq. 9) ---
    alpha: float = field(
        default=1.0, metadata={"help": "α, weight of the preference term: 1 (paper: not reported; released code)."}
    )
    rationale_weight: float = field(
        default=1.0, metadata={"help": "Weight of the rationale NLL: 1 (Eq. 9); 0 for No-Teacher-CoT (ours, Table 2)."}
    )
    rationale_reduction: str = field(
        default="token_mean",
        metadata={"help": f"Rationale NLL reduction, one of {RATIONALE_REDUCTIONS}: token_mean (released code); sum "
                          "is Eq. 9 literally."},
    )
    best_answer_nll_weight: float = field(
        default=0.0, metadata={"help": "NLL weight of the best answer: 0 (the released code only logs it)."}
    )
    # --- pairwise ablation (Eq. 11) ---
    loss_mode: str = field(
        default="apa",
        metadata={"help": f"One of {LOSS_MODES}: apa, the listwise loss (Eq. 8); pairwise_simpo, the Table 3 "
                          "ablation (Eq. 11 + chosen NLL)."},
    )
    simpo_beta: float = field(
        default=2.5,
        metadata={"help": "SimPO β: 2.5, NOT from the paper (ours: SimPO's Llama-3-8B-Instruct v1 recipe)."},
    )
    simpo_gamma: float = field(
        default=1.375, metadata={"help": "SimPO margin γ: 1.375, NOT from the paper (ours: γ/β = 0.55, SimPO's)."}
    )
    chosen_nll_weight: float = field(
        default=1.0, metadata={"help": "Chosen-answer NLL weight of the pairwise loss: 1 (ours; unreported, Table 3)."}
    )
    # --- sequence format (released code) ---
    use_teacher_rationale: bool = field(
        default=True,
        metadata={"help": "Condition the candidates on the teacher's rationale (paper main setting); false is the "
                          "No-Teacher-CoT ablation (paper §3.3, Table 2)."},
    )
    instruction_template: str = field(
        default=CODE_INSTRUCTION_TEMPLATE,
        metadata={"help": "User message around the instruction, with a {prompt} field (released code; paper: none)."},
    )
    prompt_template: str | None = field(
        default=None,
        metadata={"help": "Raw prompt markup with exactly one {prompt} (the instruction-wrapped user message), used "
                          "instead of the chat template and tokenized adding no BOS; e.g. the released code's "
                          "Llama-3 markup, LLAMA3_RELEASED_PROMPT_TEMPLATE. None (ours): the chat template."},
    )
    thought_prefix: str = field(
        default="My thought: ", metadata={"help": "Text before the rationale (released code)."}
    )
    answer_prefix: str = field(
        default="My answer:", metadata={"help": "Text between the rationale and the answer (released code)."}
    )
    # --- DPOConfig / TrainingArguments defaults changed ---
    learning_rate: float = field(
        default=5e-5, metadata={"help": "AdamW learning rate: 5e-5 (paper §3.1; released code 1e-5)."}
    )
    lr_scheduler_type: str = field(
        default="linear", metadata={"help": "Scheduler: linear (paper §3.1; released code cosine)."}
    )
    warmup_steps: float = field(
        default=0.1, metadata={"help": "Warm-up: 0.1, a ratio of the steps (paper §3.1 and code)."}
    )
    per_device_train_batch_size: int = field(
        default=2, metadata={"help": "Prompts (groups of candidates) per device: 2 (paper §3.1, 2 per GPU)."}
    )
    gradient_accumulation_steps: int = field(
        default=32, metadata={"help": "Accumulation: 32, effective batch 128 prompts on 2 GPUs (paper §3.1)."}
    )
    num_train_epochs: float = field(
        default=5.0, metadata={"help": "Epochs per round: 5 (paper: unspecified; released code)."}
    )
    max_length: int | None = field(
        default=2048,
        metadata={"help": "Longest prompt + rationale + answer; longer answers are cut at the end, groups whose "
                          "context alone reaches it are dropped: 2048 (ours; the paper and code give none)."},
    )
    bf16: bool | None = field(
        default=None,
        metadata={"help": "bf16 training; defaults to True on a GPU (paper's code: bf16) and False on CPU (ours)."},
    )
    precompute_ref_log_probs: bool = field(
        default=True,
        metadata={"help": "Must stay True: it only stops DPOTrainer from copying the policy as a reference model; "
                          "CoTD-PO has none (Eq. 9)."},
    )

    def __post_init__(self):
        check_finite_fields(self)  # every float field, DPOConfig's and TrainingArguments' included
        if self.bf16 is None and not self.fp16:  # ours: TRL turns bf16 on by default, which is slow and lossy on CPU
            self.bf16 = torch.cuda.is_available()
        super().__post_init__()
        for name, choices in (("reward_normalization", REWARD_NORMALIZATIONS), ("logp_aggregation", LOGP_AGGREGATIONS),
                              ("rationale_reduction", RATIONALE_REDUCTIONS), ("loss_mode", LOSS_MODES)):
            if getattr(self, name) not in choices:
                raise ValueError(f"{name} must be one of {choices}, got {getattr(self, name)!r}.")
        for name in ("reward_scale", "apa_lambda", "simpo_beta"):
            if not getattr(self, name) > 0:
                raise ValueError(f"{name} must be > 0, got {getattr(self, name)}.")
        for name in ("reward_norm_eps", "alpha", "rationale_weight", "best_answer_nll_weight", "chosen_nll_weight"):
            if not getattr(self, name) >= 0:
                raise ValueError(f"{name} must be >= 0, got {getattr(self, name)}.")
        if self.alpha == 0 and self.rationale_weight == 0 and self.best_answer_nll_weight == 0:
            raise ValueError("alpha, rationale_weight and best_answer_nll_weight are all 0: the loss would be 0.")
        if "{prompt}" not in self.instruction_template:
            raise ValueError(f"instruction_template must contain '{{prompt}}', got {self.instruction_template!r}.")
        if self.prompt_template is not None and self.prompt_template.count("{prompt}") != 1:
            raise ValueError(f"prompt_template must contain '{{prompt}}' exactly once, got {self.prompt_template!r}.")
        for name, default in _UNUSED_DPO_DEFAULTS.items():
            if getattr(self, name) != default:
                raise ValueError(
                    f"{name}={getattr(self, name)!r} is a DPO loss setting that CoTD-PO does not use (its loss has no "
                    f"reference model); leave it at {default!r} and set apa_lambda, loss_mode or simpo_beta instead."
                )
        if not self.precompute_ref_log_probs:
            raise ValueError(
                "precompute_ref_log_probs must stay True: with False, DPOTrainer builds a reference copy of the "
                "policy, which CoTD-PO never uses (it is reference-free)."
            )
