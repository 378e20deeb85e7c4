"""`KDConfig`: `GKDConfig` plus the fields of our shared distillation base."""

import importlib.util
from dataclasses import dataclass, field

import torch

from ._trl import GKDConfig
from .divergence import DIVERGENCES
from .validation import check_finite_fields


def default_attn_implementation() -> str:
    """`flash_attention_2` where flash-attn is installed and a GPU is present, else `sdpa` (works everywhere)."""
    if torch.cuda.is_available() and importlib.util.find_spec("flash_attn") is not None:
        return "flash_attention_2"
    return "sdpa"


@dataclass
class KDConfig(GKDConfig):
    r"""
    Configuration class for [`KDTrainer`]. Only the fields added to [`GKDConfig`] are listed; `lmbda` (on-policy
    fraction), `beta`, `temperature` (now used by the loss as well as by sampling), `max_new_tokens` and `seq_kd` keep
    GKD's meaning and defaults.

    Parameters:
        divergence (`str`, *optional*, defaults to `"generalized_jsd"`):
            Per-token divergence, one of `divergence.DIVERGENCES`. GKD's loss is `generalized_jsd` with `beta`.
        skew_alpha (`float`, *optional*, defaults to `0.1`):
            Mixing weight of `skew_kl`/`skew_reverse_kl` (DistiLLM-2's default).
        vocab_size (`int`, *optional*):
            Number of vocabulary rows compared between student and teacher. Defaults to the tokenizer's length, so
            padded embedding rows (Qwen2.5: 152064 vs 151936) are dropped.
        loss_chunk_size (`int`, *optional*, defaults to `-1`):
            Tokens per chunk of the memory-lean loss (`chunked.py`): the logits of both models are formed this many
            tokens at a time from the last hidden states and never held whole. `-1` picks the size that keeps each
            `[chunk, vocab]` buffer at 256 MiB; `0` computes full logits (GKD's way).
        attn_implementation (`str`, *optional*):
            Attention kernel for models loaded from a path: `flash_attention_2` when flash-attn and a GPU exist, else
            `sdpa`.

        > Parameters that control on-policy generation with vLLM (TRL's `DistillationConfig` names and defaults)

        use_vllm (`bool`, *optional*, defaults to `False`):
            Whether to use vLLM (TRL's `VLLMGeneration`) for generating on-policy completions from the student model.
        vllm_mode (`str`, *optional*, defaults to `"colocate"`):
            Mode for student vLLM integration. Either `"server"` or `"colocate"`.
        vllm_model_impl (`str`, *optional*, defaults to `"vllm"`):
            Model implementation backend for vLLM. Use `"vllm"` or `"transformers"`.
        vllm_enable_sleep_mode (`bool`, *optional*, defaults to `False`):
            Enable vLLM sleep mode to offload student weights during the optimizer step.

        > Parameters that control the vLLM server (only used when `vllm_mode` is `"server"`)

        vllm_server_base_url (`str`, *optional*):
            Base URL for the student vLLM server. If provided, `vllm_server_host` and `vllm_server_port` are ignored.
        vllm_server_host (`str`, *optional*, defaults to `"0.0.0.0"`):
            Host of the student vLLM server.
        vllm_server_port (`int`, *optional*, defaults to `8000`):
            Port of the student vLLM server.
        vllm_server_timeout (`float`, *optional*, defaults to `240.0`):
            Timeout for connecting to the student vLLM server.
        vllm_group_port (`int`, *optional*, defaults to `51216`):
            Port for the vLLM weight-update group (NCCL communicator).

        > Parameters that control colocated vLLM execution (only used when `vllm_mode` is `"colocate"`)

        vllm_gpu_memory_utilization (`float`, *optional*, defaults to `0.3`):
            GPU memory utilization for the colocated student vLLM engine.
        vllm_max_model_length (`int`, *optional*):
            Maximum model sequence length for the colocated vLLM engine.
        vllm_tensor_parallel_size (`int`, *optional*, defaults to `1`):
            Tensor parallel size for the colocated student vLLM engine.
    """

    divergence: str = field(
        default="generalized_jsd", metadata={"help": f"Per-token divergence, one of {', '.join(DIVERGENCES)}."}
    )
    skew_alpha: float = field(default=0.1, metadata={"help": "alpha of skew (reverse) KL; DistiLLM-2's default."})
    vocab_size: int | None = field(
        default=None, metadata={"help": "Vocabulary rows compared (default: the tokenizer's length)."}
    )
    loss_chunk_size: int = field(
        default=-1, metadata={"help": "Tokens per loss chunk: -1 auto (256 MiB buffers), 0 full logits (GKD's way)."}
    )
    attn_implementation: str | None = field(
        default=None, metadata={"help": "Attention kernel for models loaded by name (default: flash-attn or sdpa)."}
    )

    # vLLM for student generation: TRL's `DistillationConfig` fields, names, defaults and help
    use_vllm: bool = field(
        default=False,
        metadata={"help": "Whether to use vLLM for generating on-policy completions from the student model."},
    )
    vllm_mode: str = field(
        default="colocate", metadata={"help": 'Mode for student vLLM integration. Either "server" or "colocate".'}
    )
    vllm_model_impl: str = field(
        default="vllm", metadata={"help": 'Model implementation backend for vLLM. Use "vllm" or "transformers".'}
    )
    vllm_enable_sleep_mode: bool = field(
        default=False,
        metadata={"help": "Enable vLLM sleep mode to offload student weights during the optimizer step."},
    )
    vllm_server_base_url: str | None = field(
        default=None, metadata={"help": "Base URL for the student vLLM server."}
    )
    vllm_server_host: str = field(default="0.0.0.0", metadata={"help": "Host of the student vLLM server."})
    vllm_server_port: int = field(default=8000, metadata={"help": "Port of the student vLLM server."})
    vllm_server_timeout: float = field(
        default=240.0, metadata={"help": "Timeout for connecting to the student vLLM server."}
    )
    vllm_group_port: int = field(
        default=51216, metadata={"help": "Port for the vLLM weight-update group (NCCL communicator)."}
    )
    vllm_gpu_memory_utilization: float = field(
        default=0.3, metadata={"help": "GPU memory utilization for the colocated student vLLM engine."}
    )
    vllm_max_model_length: int | None = field(
        default=None, metadata={"help": "Maximum model sequence length for the colocated vLLM engine."}
    )
    vllm_tensor_parallel_size: int = field(
        default=1, metadata={"help": "Tensor parallel size for the colocated student vLLM engine."}
    )

    def __post_init__(self):
        check_finite_fields(self)  # every float field, those of subclasses and of GKD/TrainingArguments included
        if self.bf16 is None and not self.fp16:  # ours: TRL turns bf16 on by default, which is slow and lossy on CPU
            self.bf16 = torch.cuda.is_available()
        super().__post_init__()
        if self.use_liger_kernel:  # ours: transformers would patch the model with Liger (ImportError without it)
            raise ValueError("use_liger_kernel=True is not supported by KDTrainer, whose loss is already chunked from "
                             "the hidden states (see `loss_chunk_size`) and never holds full logits; leave it False.")
        if self.divergence not in DIVERGENCES:
            raise ValueError(f"divergence must be one of {DIVERGENCES}, got {self.divergence!r}.")
        if not 0.0 <= self.skew_alpha <= 1.0:
            raise ValueError(f"skew_alpha must be in [0, 1], got {self.skew_alpha}.")
        if self.temperature <= 0:
            raise ValueError(f"temperature must be > 0, got {self.temperature}.")
        if self.loss_chunk_size < -1:
            raise ValueError(f"loss_chunk_size must be -1 (auto), 0 (full logits) or > 0, got {self.loss_chunk_size}.")
        if self.vocab_size is not None and self.vocab_size < 1:
            raise ValueError(f"vocab_size must be >= 1, got {self.vocab_size}.")
        self.attn_implementation = self.attn_implementation or default_attn_implementation()
        check_vllm_fields(self)


VLLM_MODES = ("colocate", "server")
VLLM_MODEL_IMPLS = ("auto", "vllm", "transformers", "terratorch")  # those `vllm.LLM(model_impl=...)` accepts


def check_vllm_fields(args) -> None:
    """The vLLM fields of `args` (TRL's names), checked whether or not `use_vllm` is on, so a bad value in a config
    file is caught before the run that would use it."""
    if args.vllm_mode not in VLLM_MODES:
        raise ValueError(f"vllm_mode must be one of {VLLM_MODES}, got {args.vllm_mode!r}.")
    if args.vllm_model_impl not in VLLM_MODEL_IMPLS:
        raise ValueError(f"vllm_model_impl must be one of {VLLM_MODEL_IMPLS}, got {args.vllm_model_impl!r}.")
    if not 0 < args.vllm_gpu_memory_utilization <= 1:
        raise ValueError(f"vllm_gpu_memory_utilization must be in (0, 1], got {args.vllm_gpu_memory_utilization}.")
    if args.vllm_tensor_parallel_size < 1:
        raise ValueError(f"vllm_tensor_parallel_size must be >= 1, got {args.vllm_tensor_parallel_size}.")
    for name in ("vllm_server_port", "vllm_group_port"):
        if not 0 < getattr(args, name) < 65536:
            raise ValueError(f"{name} must be a port number in [1, 65535], got {getattr(args, name)}.")
    if args.vllm_server_timeout <= 0:
        raise ValueError(f"vllm_server_timeout must be > 0 seconds, got {args.vllm_server_timeout}.")
    max_new_tokens = getattr(args, "max_new_tokens", 0)
    if args.vllm_max_model_length is not None and args.vllm_max_model_length <= max_new_tokens:
        raise ValueError(f"vllm_max_model_length ({args.vllm_max_model_length}) must exceed max_new_tokens "
                         f"({max_new_tokens}): it holds the prompt and the completion.")
    if args.vllm_server_base_url is not None and not args.vllm_server_base_url.startswith(("http://", "https://")):
        raise ValueError(f"vllm_server_base_url must start with http:// or https://, got "
                         f"{args.vllm_server_base_url!r}.")
