"""Answer extraction and grading for math reasoning data (pure: standard library, plus math-verify if installed)."""

from .extract import EXTRACTION_MODES, extract_answer, extract_boxed, extract_gsm8k, extract_last_number
from .grade import grade, grade_batch

__all__ = [
    "EXTRACTION_MODES",
    "extract_answer",
    "extract_boxed",
    "extract_gsm8k",
    "extract_last_number",
    "grade",
    "grade_batch",
]
