"""Sampling backends: the `Generator` protocol, Hugging Face `generate`, and vLLM (imported lazily)."""

from .base import Generator, Sample
from .hf import HFGenerator
from .vllm import VLLMGenerator

__all__ = ["Generator", "HFGenerator", "Sample", "VLLMGenerator"]
