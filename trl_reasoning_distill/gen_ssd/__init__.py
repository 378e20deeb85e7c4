"""Gen-SSD, generation-time self-selection distillation (https://huggingface.co/papers/2604.02819).

The pure selection pieces (`selection.py`) are imported here and need torch only; the sampler (`GenSSDSampler`, which
imports transformers), `GenSSDConfig` and `GenSSDTrainer` (which import trl) load on first access, so importing this
package stays light.
"""

import importlib

from .selection import (
    BEAM_SCORES,
    BEAM_WIDTH,
    CANDIDATE_SCHEDULE,
    CANDIDATES_PER,
    CHUNK_SIZE,
    MAX_NEW_TOKENS,
    RULES,
    BeamState,
    BeamStep,
    CandidatePool,
    FinalPick,
    Selection,
    advance_beams,
    candidate_log_perplexity,
    candidate_pool,
    candidate_token_logprobs,
    candidates_per_beam,
    chunk_budget,
    chunk_finish,
    chunk_nll,
    chunk_perplexity,
    final_pick,
    group_candidates,
    initial_beams,
    max_chunk_rounds,
    num_candidates,
    right_pad,
    select_candidates,
    trajectory_perplexity,
)

_LAZY = {
    "ChunkProposer": "models",
    "ChunkSampling": "sampler",
    "GenSSDSampler": "sampler",
    "GenerationSelectionCallback": "sampler",
    "HFChunkProposer": "models",
    "GeneratorProposer": "models",
    "RoundInfo": "sampler",
    "SamplingSummary": "sampler",
    "StudentScorer": "models",
    "Trajectory": "sampler",
    "sample_chunked": "sampler",
    "split_cold_start": "sampler",
    "GenSSDConfig": "config",
    "GenSSDTrainer": "trainer",
}

__all__ = [
    "BEAM_SCORES",
    "BEAM_WIDTH",
    "CANDIDATES_PER",
    "CANDIDATE_SCHEDULE",
    "CHUNK_SIZE",
    "MAX_NEW_TOKENS",
    "RULES",
    "BeamState",
    "BeamStep",
    "CandidatePool",
    "ChunkProposer",
    "ChunkSampling",
    "FinalPick",
    "GenSSDConfig",
    "GenSSDSampler",
    "GenSSDTrainer",
    "GenerationSelectionCallback",
    "GeneratorProposer",
    "HFChunkProposer",
    "RoundInfo",
    "SamplingSummary",
    "Selection",
    "StudentScorer",
    "Trajectory",
    "advance_beams",
    "candidate_log_perplexity",
    "candidate_pool",
    "candidate_token_logprobs",
    "candidates_per_beam",
    "chunk_budget",
    "chunk_finish",
    "chunk_nll",
    "chunk_perplexity",
    "final_pick",
    "group_candidates",
    "initial_beams",
    "max_chunk_rounds",
    "num_candidates",
    "right_pad",
    "sample_chunked",
    "select_candidates",
    "split_cold_start",
    "trajectory_perplexity",
]


def __getattr__(name: str):
    if name not in _LAZY:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    return getattr(importlib.import_module(f".{_LAZY[name]}", __name__), name)
