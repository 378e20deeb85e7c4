"""Shared fixtures: offline environment, seeding, the toy tokenizer and models (random tiny ones and trained ones)."""

import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_HUB_DISABLE_TELEMETRY", "1")
os.environ.setdefault("TRL_EXPERIMENTAL_SILENCE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
os.environ.setdefault("TQDM_DISABLE", "1")  # no progress bars in test output (tqdm reads it at import)

import pytest
import torch

from trl_reasoning_distill.utils import tune_cpu_allocator

tune_cpu_allocator()
torch.set_num_threads(1)  # the toy models' matrices are tiny: one thread is faster than two on small CPUs

CPU_TRAINING = dict(
    use_cpu=True, bf16=False, fp16=False, report_to="none", logging_steps=1, save_strategy="no", seed=0,
    dataloader_num_workers=0, disable_tqdm=True, activation_checkpointing=False,
)


def pytest_collection_modifyitems(config, items):
    has_cuda = torch.cuda.is_available()
    for item in items:
        if "gpu" in item.keywords and not has_cuda:
            item.add_marker(pytest.mark.skip(reason="needs a CUDA device"))


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(0)


@pytest.fixture(scope="session")
def tokenizer():
    from trl_reasoning_distill.toy.tokenizer import build_tokenizer

    return build_tokenizer()


@pytest.fixture
def tiny_student(tokenizer):
    from trl_reasoning_distill.toy.models import build_student

    return build_student(tokenizer, seed=1)


@pytest.fixture
def tiny_teacher(tokenizer):
    from trl_reasoning_distill.toy.models import build_teacher

    return build_teacher(tokenizer, seed=2)


@pytest.fixture
def fake_vllm(monkeypatch):
    """`tests/fake_vllm.py` as the `vllm` module, and its client as TRL's `VLLMClient`, for this test only. TRL's
    `is_vllm_available()` then finds it (the module has a spec and a supported `__version__`), but
    `trl.generation.vllm_generation` bound `LLM` / `SamplingParams` at its import only if vLLM was there: they are
    set on that module. The process-group variables `VLLMGeneration` exports in colocate mode are restored."""
    import sys

    import fake_vllm as fake
    from trl.generation import vllm_client, vllm_generation

    monkeypatch.setitem(sys.modules, "vllm", fake.module())
    for name in ("LLM", "SamplingParams"):
        monkeypatch.setattr(vllm_generation, name, getattr(fake, name), raising=False)
    monkeypatch.setattr(vllm_generation, "VLLMClient", fake.FakeVLLMClient)
    monkeypatch.setattr(vllm_client, "VLLMClient", fake.FakeVLLMClient)
    for name in ("RANK", "LOCAL_RANK", "WORLD_SIZE", "MASTER_ADDR", "MASTER_PORT"):
        monkeypatch.setenv(name, os.environ.get(name, ""))  # recorded, so undone after the test
        if not os.environ[name]:
            monkeypatch.delenv(name)
    fake.reset()
    yield fake
    fake.reset()
