"""Distributed helpers for losses that read a model's output head outside its forward (DDP, FSDP2, DeepSpeed).

The chunked losses project hidden states through `lm_head.weight` themselves, so they read a parameter outside the
module that owns it. Under ZeRO-3 that parameter is partitioned (`numel 0`) outside its module's forward, and under
FSDP2 it is a sharded `DTensor` once its FSDP unit has resharded. `output_head_weight` returns the full `[V, H]`
weight as a plain tensor whose gradient reaches the real parameter (and so the backend's gradient reduction).
"""

import contextlib

import torch
from accelerate.utils import extract_model_from_parallel
from torch import nn
from torch.distributed.tensor import DTensor


def unwrap(model: nn.Module) -> nn.Module:
    """`model` without DDP / DeepSpeed engine / torch.compile wrappers (accelerate's own unwrapping); FSDP2 and PEFT
    models are returned as they are (FSDP2 wraps in place)."""
    return extract_model_from_parallel(model, keep_torch_compile=False)


def model_config(model: nn.Module):
    """The Hugging Face config of `model`, which may be wrapped in a DeepSpeed engine (whose `.config` is the
    DeepSpeed dict) or DDP."""
    return unwrap(model).config


def _zero3_partitioned(param: torch.Tensor) -> bool:
    if not hasattr(param, "ds_status"):
        return False
    from deepspeed.runtime.zero.partition_parameters import ZeroParamStatus

    return param.ds_status != ZeroParamStatus.AVAILABLE


@contextlib.contextmanager
def _forward_returning_weight(head: nn.Module):
    """Let `head(x)` return `head.weight` (times one, a new tensor): called as a module, ZeRO-3's hooks gather the
    weight for the forward and again for the backward, where its gradient is accumulated and reduce-scattered as
    for any module's parameter."""
    original = head.forward
    head.forward = lambda anchor: head.weight * 1 + anchor.to(head.weight.dtype)
    try:
        yield
    finally:
        head.forward = original


def _fsdp_owner(root: nn.Module, head: nn.Module):
    """The innermost FSDP2 module of `root` that holds `head` (None without FSDP2)."""
    from torch.distributed.fsdp import FSDPModule

    owner = None
    for module in root.modules():
        if isinstance(module, FSDPModule) and any(sub is head for sub in module.modules()):
            owner = module  # modules() is pre-order: later matches are nested deeper
    return owner


def output_head_weight(model: nn.Module) -> torch.Tensor:
    """The full `[V, H]` output projection of `model` (wrapped in DDP, FSDP2, a DeepSpeed engine or PEFT, or not),
    as a plain tensor; with gradients enabled, its gradient reaches the parameter through the backend's own
    machinery. A head with a bias is refused (the chunked losses have no bias term).

    - ZeRO-3: the head module is called with its forward returning its weight, so DeepSpeed's module hooks gather
      it for the forward and the backward, and reduce its gradient (the pattern of TRL's fused heads, which run
      inside the wrapped forward for the same reason).
    - FSDP2: a head resharded after the forward is unsharded again by its FSDP unit (so the plain unsharded
      parameter is read, and its gradient is reduce-scattered in the unit's post-backward); a head given to its own
      unit with `full_tensor()`-style gathering is handled by the same call.
    - DDP / one process / ZeRO-1/2: the parameter itself.
    """
    root = unwrap(model)
    head = root.get_output_embeddings()
    if head is None:
        raise ValueError(f"{type(root).__name__} has no output embeddings (lm_head) for the chunked loss.")
    if getattr(head, "bias", None) is not None:
        raise ValueError("the chunked loss needs an lm_head without bias; set loss_chunk_size=0.")
    weight = head.weight
    trained = weight.requires_grad and torch.is_grad_enabled()
    if _zero3_partitioned(weight):
        anchor = weight.new_zeros((), dtype=torch.float32, requires_grad=trained)
        with _forward_returning_weight(head):
            return head(anchor)
    if isinstance(weight, DTensor):
        owner = _fsdp_owner(root, head)
        if owner is not None and trained:
            owner.unshard()  # resharded after the forward: the unsharded parameter, reduced after the backward
            weight = head.weight
        if isinstance(weight, DTensor):
            weight = weight.full_tensor()
    return weight


def shard_for_evaluation(model: nn.Module, accelerator) -> nn.Module:
    """`model` (a frozen teacher) sharded like the student under FSDP2, through accelerate's own
    `fsdp2_prepare_model` (one unit per decoder layer, the embeddings and head, then the root), in eval mode with
    gradients off, so a teacher larger than one device fits. FSDP1 (and a model already sharded) is left as it is."""
    from torch.distributed.fsdp import FSDPModule

    if isinstance(model, FSDPModule) or accelerator.state.fsdp_plugin.fsdp_version != 2:
        return model
    from accelerate.utils.fsdp_utils import fsdp2_prepare_model

    model.requires_grad_(False)  # frozen: no fp32 master copy under mixed precision, no gradients
    model = fsdp2_prepare_model(accelerator, model)
    # accelerate (and FSDP2 for the root) keep the embeddings and head gathered after the forward for the backward
    # that follows; a teacher has no backward, so every unit is freed after each forward.
    units = [module for module in model.modules() if isinstance(module, FSDPModule)]

    def reshard_all(*_) -> None:
        for unit in units:
            unit.reshard()

    model.register_forward_hook(reshard_all)
    return model.eval()
