"""Gen-SSD: generation-time self-selection of teacher chunks by student perplexity, as pure selection pieces.

Paper: Student-in-the-Loop Chain-of-Thought Distillation via Generation-Time Selection,
https://huggingface.co/papers/2604.02819

    y*_c = argmin_k PPL_S(y_c^(k) | x, y_<c)                                                            (Eq. 4)
    PPL_S(y_c | x, y_<c) = exp(-(1/|y_c|) Σ_t log P_S(y_c,t | x, y_<c, y_c,<t))                    (spec §2.1)

The two lowest are kept per chunk (App. A) and the ended trajectory of lowest overall PPL is the output. The sampler
owns the teacher and student calls; here are tensors in and out, vectorised over P prompts: chunk scoring, the
candidate schedule, the pool layout, ranking (low / high / random, Table 4), beam bookkeeping, termination and the
final pick. Shapes: P prompts, B beams, N pool slots per prompt, laid out beam-major (beam b's samples together, in
sample order), M candidates flattened in that order, L chunk tokens, V vocabulary, F ended trajectories, C chunks.
Ranking uses log-PPL (mean NLL): it orders like PPL without overflowing; ties go to the lowest (beam, sample) slot.

Where the pieces live (all pure, torch only; every public name is importable from here):
- `perplexity.py`: chunk scoring (`candidate_token_logprobs`, `chunk_nll`, `chunk_perplexity`,
  `trajectory_perplexity`, `candidate_log_perplexity`) and `right_pad`;
- `beam_search.py`: the schedule and budget (`num_candidates`, `max_chunk_rounds`, `chunk_budget`), the pool
  (`candidates_per_beam`, `candidate_pool`, `group_candidates`), ranking (`select_candidates`) and the beams
  (`initial_beams`, `advance_beams`);
- `termination.py`: `chunk_finish` and `final_pick`;
- `_selection_base.py`: the result types (`CandidatePool`, `Selection`, `BeamState`, `BeamStep`, `FinalPick`) and
  the argument checks the parts share.

The defaults live with their functions: `BEAM_SCORES` in `perplexity.py`, the rest (`RULES`, `CANDIDATE_SCHEDULE`,
`BEAM_WIDTH`, `CHUNK_SIZE`, ...) in `beam_search.py`.
"""

from . import _selection_base, beam_search, perplexity, termination
from ._selection_base import *  # noqa: F403  (each part's `__all__`)
from .beam_search import *  # noqa: F403
from .perplexity import *  # noqa: F403
from .termination import *  # noqa: F403

__all__ = [*_selection_base.__all__, *perplexity.__all__, *beam_search.__all__, *termination.__all__]
