"""The `Generator` protocol every sampling backend implements, and the `Sample` it returns.

Backends take token ids (not strings) so that the caller controls templating, and return `n` samples per prompt
grouped by prompt: `result[i][j]` is sample `j` of prompt `i`.
"""

from dataclasses import dataclass, field
from typing import Protocol, runtime_checkable


@dataclass
class Sample:
    """One sampled continuation.

    Args:
        token_ids (`list[int]`): generated ids, without padding; ends with EOS when `finish_reason == "eos"`.
        text (`str`): decoded `token_ids` (special tokens skipped), cut before the first stop string if one matched.
        finish_reason (`str`): `"eos"`, `"stop"` (a stop string) or `"length"` (hit `max_new_tokens`).
        logprobs (`list[float] | None`): per generated token, log-probability under the model's own distribution at
            temperature 1 (as vLLM reports it), when asked for.
    """

    token_ids: list[int]
    text: str
    finish_reason: str
    logprobs: list[float] | None = field(default=None)


@runtime_checkable
class Generator(Protocol):
    """Samples continuations of token-id prompts."""

    def generate(
        self,
        prompt_ids: list[list[int]],
        n: int = 1,
        max_new_tokens: int = 256,
        temperature: float = 1.0,
        top_p: float = 1.0,
        top_k: int = 0,
        stop: list[str] | None = None,
        return_logprobs: bool = False,
    ) -> list[list[Sample]]:
        """`n` samples for each prompt; `temperature=0` is greedy decoding."""
        ...

    def continue_(
        self,
        prefix_ids: list[list[int]],
        n: int = 1,
        max_new_tokens: int = 256,
        temperature: float = 1.0,
        top_p: float = 1.0,
        top_k: int = 0,
        stop: list[str] | None = None,
        return_logprobs: bool = False,
    ) -> list[list[Sample]]:
        """Like `generate`, from prefixes that already hold part of a completion (Gen-SSD's chunk loop)."""
        ...


TEACHER_GENERATION_BACKENDS = ("hf", "vllm")


@dataclass
class TeacherGenerationConfig:
    r"""
    Fields of the configs whose teacher samples (BRTS's pool, Gen-SSD's proposals, VCRD's offline rollouts, CoTD-PO's
    rationales, rejection sampling): which backend samples the teacher. Built by
    `generation.vllm.teacher_generator_from_config`.

    Parameters:
        teacher_generation_backend (`str`, *optional*, defaults to `"hf"`):
            `"hf"`: Hugging Face `generate` on the teacher model (ours: runs everywhere, as the authors' code does).
            `"vllm"`: our `VLLMGenerator`, on a `trl vllm-serve` of the teacher when `teacher_model_server_url` is
            set, else on a vLLM engine colocated in this process.
        teacher_model_server_url (`str`, *optional*):
            Base URL of a vLLM server hosting the teacher model (e.g., `"http://localhost:8000"`); TRL's name (in
            `ServerDistillationConfig`). Only with `teacher_generation_backend="vllm"`.
        teacher_vllm_server_timeout (`float`, *optional*, defaults to `240.0`):
            Seconds to wait for the teacher's server to come up (TRL's `vllm_server_timeout` default).
        teacher_vllm_gpu_memory_utilization (`float`, *optional*, defaults to `0.3`):
            GPU memory share of a colocated teacher engine (TRL's `vllm_gpu_memory_utilization` default).
        teacher_vllm_tensor_parallel_size (`int`, *optional*, defaults to `1`):
            Tensor parallel size of a colocated teacher engine (TRL's `vllm_tensor_parallel_size` default).
        teacher_vllm_max_model_length (`int`, *optional*):
            Context length of a colocated teacher engine (TRL's `vllm_max_model_length`; default: the model's).
    """

    teacher_generation_backend: str = field(
        default="hf",
        metadata={"help": 'Teacher sampling: "hf" (generate) or "vllm" (VLLMGenerator); ours: "hf" needs no GPU.'},
    )
    teacher_model_server_url: str | None = field(
        default=None,
        metadata={"help": 'Base URL of a `trl vllm-serve` hosting the teacher (e.g., "http://localhost:8000"); TRL\'s '
                          'DistillationConfig field.'},
    )
    teacher_vllm_server_timeout: float = field(
        default=240.0,
        metadata={"help": "Seconds to wait for the teacher's vLLM server (TRL's vllm_server_timeout default)."},
    )
    teacher_vllm_gpu_memory_utilization: float = field(
        default=0.3, metadata={"help": "GPU memory share of a colocated teacher engine (TRL's vllm default)."}
    )
    teacher_vllm_tensor_parallel_size: int = field(
        default=1, metadata={"help": "Tensor parallel size of a colocated teacher engine (TRL's vllm default)."}
    )
    teacher_vllm_max_model_length: int | None = field(
        default=None,
        metadata={"help": "Context length of a colocated teacher engine (TRL's vllm default: the model's)."},
    )

    def __post_init__(self):
        check_teacher_generation_fields(self)
        super().__post_init__()


def check_teacher_generation_fields(args) -> None:
    """`ValueError` naming a bad teacher-backend field of `args`."""
    if args.teacher_generation_backend not in TEACHER_GENERATION_BACKENDS:
        raise ValueError(f"teacher_generation_backend must be one of {TEACHER_GENERATION_BACKENDS}, got "
                         f"{args.teacher_generation_backend!r}.")
    url = args.teacher_model_server_url
    if url is not None and not url.startswith(("http://", "https://")):
        raise ValueError(f"teacher_model_server_url must start with http:// or https://, got {url!r}.")
    if url is not None and args.teacher_generation_backend != "vllm":
        raise ValueError("teacher_model_server_url is set but teacher_generation_backend is 'hf': set it to 'vllm'.")
    if not args.teacher_vllm_server_timeout > 0:
        raise ValueError(f"teacher_vllm_server_timeout must be > 0, got {args.teacher_vllm_server_timeout}.")
    if not 0 < args.teacher_vllm_gpu_memory_utilization <= 1:
        raise ValueError(f"teacher_vllm_gpu_memory_utilization must be in (0, 1], got "
                         f"{args.teacher_vllm_gpu_memory_utilization}.")
    if args.teacher_vllm_tensor_parallel_size < 1:
        raise ValueError(f"teacher_vllm_tensor_parallel_size must be >= 1, got "
                         f"{args.teacher_vllm_tensor_parallel_size}.")
    if args.teacher_vllm_max_model_length is not None and args.teacher_vllm_max_model_length < 2:
        raise ValueError(f"teacher_vllm_max_model_length must be >= 2, got {args.teacher_vllm_max_model_length}.")


def validate_sampling(n: int, max_new_tokens: int, temperature: float, top_p: float, top_k: int) -> None:
    """Raise `ValueError` naming the bad sampling argument, before any compute."""
    if n < 1:
        raise ValueError(f"n must be >= 1, got {n}.")
    if max_new_tokens < 1:
        raise ValueError(f"max_new_tokens must be >= 1, got {max_new_tokens}.")
    if temperature < 0:
        raise ValueError(f"temperature must be >= 0 (0 = greedy), got {temperature}.")
    if not 0 < top_p <= 1:
        raise ValueError(f"top_p must be in (0, 1], got {top_p}.")
    if top_k < 0:
        raise ValueError(f"top_k must be >= 0 (0 = off), got {top_k}.")
