"""`GenSSDConfig`: `KDConfig` plus the chunked sampling and selection of Gen-SSD, with the paper's defaults.

Paper: Student-in-the-Loop Chain-of-Thought Distillation via Generation-Time Selection,
https://huggingface.co/papers/2604.02819 (values from the paper's §3.2, §4.1, §5.2 and App. A, C; no code is
released; "ours" marks our own choices where the paper is silent).
"""

from dataclasses import dataclass, field

from ..generation.base import TeacherGenerationConfig
from ..kd_config import KDConfig
from ..verify import EXTRACTION_MODES
from .sampler import ChunkSampling, GenerationSelectionCallback
from .selection import BEAM_SCORES, BEAM_WIDTH, CANDIDATE_SCHEDULE, CANDIDATES_PER, CHUNK_SIZE, MAX_NEW_TOKENS, RULES

OBJECTIVES = ("nll", "kd")  # loss on the selected trajectories: SFT (Eq. 1) or KDTrainer's divergence (ours)


@dataclass
class GenSSDConfig(TeacherGenerationConfig, KDConfig):
    r"""
    Configuration class for [`GenSSDTrainer`] and, through [`GenSSDConfig.chunk_sampling`], for [`GenSSDSampler`].
    Only the Gen-SSD fields are listed, plus the inherited defaults changed (`max_new_tokens=16384`, `lmbda=0.0`,
    `seq_kd=True`); see [`KDConfig`] and [`GKDConfig`]. It is an `SFTConfig` too, so the same object can drive the
    cold-start and final `SFTTrainer` runs of the offline pipeline.

    Parameters:
        > Parameters of the chunked sampling (paper §3.2, App. A)

        chunk_size (`int`, *optional*, defaults to `4096`):
            Chunk size m in teacher tokens. `max_new_tokens` (16384) is the total completion budget.
        num_candidates (`list[int]`, *optional*, defaults to `[16, 8, 4]`):
            Teacher candidates per chunk K_1, K_2, K_{c>=3} (the last repeats); an int means a fixed K.
        beam_width (`int`, *optional*, defaults to `2`):
            Candidates kept per chunk, B; 1 is Eq. 4 as printed.
        candidates_per (`str`, *optional*, defaults to `"beam"`):
            `"beam"`: K_c from every kept prefix; `"step"`: K_c split over them.
        beam_score (`str`, *optional*, defaults to `"chunk"`):
            Rank by the chunk's PPL (`"chunk"`) or by the PPL of prefix and chunk (`"cumulative"`).
        selection_rule (`str`, *optional*, defaults to `"low"`):
            `"low"`, `"high"` or `"random"` student PPL, per chunk and for the final pick.
        prefer_eos (`bool`, *optional*, defaults to `True`):
            Final pick among EOS-ended trajectories first.
        teacher_temperature (`float`, *optional*, defaults to `0.6`), teacher_top_p (`float`, *optional*, defaults
        to `0.95`), teacher_top_k (`int`, *optional*, defaults to `30`):
            Teacher decoding.
        reuse_teacher_cache (`bool`, *optional*, defaults to `True`):
            Continue the teacher's KV cache of the kept candidates (Hugging Face teacher).
        scorer_batch_size (`int`, *optional*, defaults to `16`):
            Candidates per student scoring forward.

        > Parameters of the training targets

        objective (`str`, *optional*, defaults to `"nll"`):
            `"nll"`: SFT on the selected trajectories (Eq. 1); `"kd"`: `KDTrainer`'s divergence on them.
        keep_only_correct (`bool`, *optional*, defaults to `True`):
            Train only on selected trajectories whose answer is verified (Eq. 5).
        answer_column (`str`, *optional*, defaults to `"answer"`):
            Dataset column of the gold answers.
        answer_extraction (`str`, *optional*, defaults to `"auto"`):
            Mode of `verify.extract_answer`.
    """

    max_new_tokens: int = field(
        default=MAX_NEW_TOKENS,
        metadata={"help": "Total completion budget Nmax over all chunks: 16384 ('16K', paper §4.1; tokens: ours)."},
    )
    lmbda: float = field(
        default=0.0,
        metadata={"help": "Must be 0 (ours): the targets are selected teacher trajectories, never student samples."},
    )
    seq_kd: bool = field(
        default=True, metadata={"help": "Must be True: Gen-SSD is sequence-level KD on the selected trajectories."}
    )
    chunk_size: int = field(
        default=CHUNK_SIZE, metadata={"help": "Chunk size m: 4096 ('4K', best in Fig. 3, paper §5.2)."}
    )
    num_candidates: list[int] = field(
        default_factory=lambda: list(CANDIDATE_SCHEDULE),
        metadata={"help": "K_1 K_2 K_{c>=3}: 16 8 4, 'progressive sampling reduction' (paper §3.2)."},
    )
    beam_width: int = field(
        default=BEAM_WIDTH, metadata={"help": "Candidates kept per chunk B: 2 (paper App. A; 1 = Eq. 4)."}
    )
    candidates_per: str = field(
        default="beam",
        metadata={"help": f"One of {CANDIDATES_PER}: K_c per kept prefix (ours, after Eq. 3)."},
    )
    beam_score: str = field(
        default="chunk", metadata={"help": f"One of {BEAM_SCORES}: chunk PPL as in Eq. 4 (paper §3.2)."}
    )
    selection_rule: str = field(
        default="low", metadata={"help": f"One of {RULES}: lowest PPL (Eq. 4); the others are Table 4's ablation."}
    )
    prefer_eos: bool = field(
        default=True, metadata={"help": "Prefer EOS-ended trajectories in the final pick (ours: the paper is silent)."}
    )
    teacher_temperature: float = field(
        default=0.6, metadata={"help": "Teacher temperature: 0.6, QwQ-32B's recommended setting (paper §4.1)."}
    )
    teacher_top_p: float = field(default=0.95, metadata={"help": "Teacher top-p: 0.95 (paper §4.1)."})
    teacher_top_k: int = field(default=30, metadata={"help": "Teacher top-k: 30 (paper §4.1)."})
    reuse_teacher_cache: bool = field(
        default=True,
        metadata={"help": "Continue the HF teacher's KV cache across chunks (ours: same samples, no re-encoding)."},
    )
    scorer_batch_size: int = field(
        default=16, metadata={"help": "Candidates per student scoring forward (ours; a memory knob)."}
    )
    objective: str = field(
        default="nll", metadata={"help": f"One of {OBJECTIVES}: SFT NLL (Eq. 1) or KDTrainer's divergence (ours)."}
    )
    keep_only_correct: bool = field(
        default=True, metadata={"help": "Train only on verified selected trajectories (Eq. 5)."}
    )
    answer_column: str = field(
        default="answer", metadata={"help": "Gold answer column (ours: the name every data set of this library uses)."}
    )
    answer_extraction: str = field(
        default="auto", metadata={"help": f"One of {EXTRACTION_MODES} (auto: the last boxed answer first; ours)."}
    )

    def __post_init__(self):
        super().__post_init__()
        if isinstance(self.num_candidates, int):
            self.num_candidates = [self.num_candidates]
        self.num_candidates = list(self.num_candidates)
        self.chunk_sampling()  # raises ValueError naming a bad chunk_size, schedule, beam width or decoding value
        self.selection_callback()  # raises on a bad selection_rule or beam_score
        if self.lmbda != 0.0 or not self.seq_kd:
            raise ValueError(f"Gen-SSD trains on selected teacher trajectories: set lmbda=0.0 and seq_kd=True, got "
                             f"lmbda={self.lmbda}, seq_kd={self.seq_kd}.")
        if self.objective not in OBJECTIVES:
            raise ValueError(f"objective must be one of {OBJECTIVES}, got {self.objective!r}.")
        if self.answer_extraction not in EXTRACTION_MODES:
            raise ValueError(f"answer_extraction must be one of {EXTRACTION_MODES}, got {self.answer_extraction!r}.")
        if self.scorer_batch_size < 1:
            raise ValueError(f"scorer_batch_size must be >= 1, got {self.scorer_batch_size}.")
        if not self.answer_column:
            raise ValueError("answer_column must name the dataset's gold answer column, got ''.")

    def chunk_sampling(self) -> ChunkSampling:
        """The sampling settings of this config, for [`GenSSDSampler`] and the trainer's chunk loop."""
        return ChunkSampling(
            chunk_size=self.chunk_size, max_new_tokens=self.max_new_tokens, num_candidates=tuple(self.num_candidates),
            beam_width=self.beam_width, candidates_per=self.candidates_per, temperature=self.teacher_temperature,
            top_p=self.teacher_top_p, top_k=self.teacher_top_k,
        )

    def selection_callback(self) -> GenerationSelectionCallback:
        """The selection of this config (rule, ranking score, EOS preference)."""
        return GenerationSelectionCallback(self.selection_rule, self.beam_score, self.prefer_eos)
