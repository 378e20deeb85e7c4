"""The only module that imports from `trl`: TRL moves things between releases (experimental -> stable), so every
path we depend on is named here once and covered by `tests/test_trl_contract.py`."""

import warnings

with warnings.catch_warnings():  # trl.experimental warns on import; GKD lives there in trl 1.16
    warnings.simplefilter("ignore")
    from trl import (
        DPOConfig,
        DPOTrainer,
        ModelConfig,
        ScriptArguments,
        SFTConfig,
        SFTTrainer,
        TrlParser,
        get_peft_config,
        get_quantization_config,
    )
    from trl.experimental.gkd import GKDConfig, GKDTrainer
    from trl.models.utils import unwrap_model_for_generation



def __getattr__(name: str):
    """`VLLMClient` and `VLLMGeneration` on first use only: their modules import vLLM when vLLM is installed."""
    if name == "VLLMClient":
        from trl.generation.vllm_client import VLLMClient

        return VLLMClient
    if name == "VLLMGeneration":
        from trl.generation.vllm_generation import VLLMGeneration

        return VLLMGeneration
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


__all__ = [
    "DPOConfig",
    "DPOTrainer",
    "GKDConfig",
    "GKDTrainer",
    "ModelConfig",
    "SFTConfig",
    "SFTTrainer",
    "ScriptArguments",
    "TrlParser",
    "get_peft_config",
    "get_quantization_config",
    "unwrap_model_for_generation",
]
