"""Reasoning distillation on Hugging Face TRL: Gen-SSD, TSD-KD, VCRD, CoTD-PO and BRTS as drop-in trainers.

Public names are imported lazily, so `import trl_reasoning_distill` is cheap and never imports trl by itself.
"""

import importlib

__version__ = "0.1.0"

_LAZY = {
    "BRTSConfig": "brts.config",
    "BRTSTrainer": "brts.trainer",
    "CoTDPOConfig": "cotd_po.config",
    "CoTDPORoundsConfig": "cotd_po.rounds",
    "CoTDPOTrainer": "cotd_po.trainer",
    "GenSSDConfig": "gen_ssd.config",
    "GenSSDSampler": "gen_ssd.sampler",
    "GenSSDTrainer": "gen_ssd.trainer",
    "GenerationSelectionCallback": "gen_ssd.sampler",
    "KDConfig": "kd_config",
    "KDTrainer": "kd_trainer",
    "TSDKDConfig": "tsd_kd.config",
    "TSDKDTrainer": "tsd_kd.trainer",
    "evaluate": "evaluation",
    "rejection_sample": "baselines",
    "load_toy_teacher": "toy",
    "load_toy_student": "toy",
    "load_toy_tokenizer": "toy",
    "toy_dataset": "toy",
    "VCRDConfig": "vcrd.config",
    "VCRDTrainer": "vcrd.trainer",
    "toy_vcrd_dataset": "vcrd.data",
}

__all__ = sorted(_LAZY)


def __getattr__(name: str):
    if name not in _LAZY:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    return getattr(importlib.import_module(f".{_LAZY[name]}", __name__), name)


def __dir__():
    return sorted(list(globals()) + __all__)
