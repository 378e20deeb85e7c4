"""Small process-level helpers shared by the CLI, the examples, the benchmarks and the toy build."""

import ctypes
import ctypes.util
import sys

_M_TRIM_THRESHOLD, _M_MMAP_THRESHOLD = -1, -3


def tune_cpu_allocator() -> bool:
    """Keep freed tensor memory in glibc's heap instead of returning it to the OS after every step.

    CPU training allocates and frees the same large activation buffers each step; with glibc's defaults each one is
    a fresh `mmap` whose pages the kernel must zero again, which made a toy training step ~3x slower here (most time
    in the kernel). Same effect as `MALLOC_MMAP_THRESHOLD_`/`MALLOC_TRIM_THRESHOLD_`. Returns False where there is no
    glibc (macOS, musl), which changes nothing.
    """
    if not sys.platform.startswith("linux"):
        return False
    name = ctypes.util.find_library("c")
    if name is None:
        return False
    libc = ctypes.CDLL(name)
    if not hasattr(libc, "mallopt"):
        return False
    return bool(libc.mallopt(_M_TRIM_THRESHOLD, 1 << 40) and libc.mallopt(_M_MMAP_THRESHOLD, 1 << 30))


def quiet_cpu_run(threads: int = 1) -> None:
    """Set up a long CPU job on the toy models: `tune_cpu_allocator`, `threads` torch threads (one is fastest for
    the toy models on a small machine), no `datasets` progress bars, transformers and TRL errors only, DeepSpeed
    (when installed) told it runs on the CPU (`DS_ACCELERATOR=cpu` unless set) instead of saying so at import, and
    no `FutureWarning` on `is_gradient_checkpointing`, which TRL 1.16 reads at every on-policy generation."""
    import logging
    import os
    import warnings

    os.environ.setdefault("DS_ACCELERATOR", "cpu")
    warnings.filterwarnings("ignore", message="`is_gradient_checkpointing` is deprecated", category=FutureWarning)

    import datasets
    import torch
    import transformers

    tune_cpu_allocator()
    torch.set_num_threads(threads)
    datasets.disable_progress_bars()
    transformers.logging.set_verbosity_error()
    transformers.utils.logging.disable_progress_bar()  # "Loading weights" bars of every model load
    logging.getLogger("trl").setLevel(logging.ERROR)  # e.g. GKDTrainer's advice to migrate, once per run


def quiet_notebook(threads: int = 1) -> None:
    """Set up a notebook on the toy models: `quiet_cpu_run(threads)` (DeepSpeed's CPU notice and TRL's
    `is_gradient_checkpointing` FutureWarning included), and silence tqdm's "IProgress not found" `TqdmWarning` where
    ipywidgets is not installed (bars fall back to text). Call it before anything imports transformers.

    Errors, and warnings about the notebook's own settings, still show.
    """
    import warnings

    warnings.filterwarnings("ignore", message="IProgress not found")
    quiet_cpu_run(threads)
