"""`results.py`: resumable study CSVs."""

import pytest

from trl_reasoning_distill.results import append_row, finished_rows, mean_std

FIELDS = ["variant", "seed", "accuracy"]


def test_rows_survive_a_restart(tmp_path):
    path = tmp_path / "sub" / "study.csv"
    assert finished_rows(path, FIELDS) == [] and path.read_text().strip() == "variant,seed,accuracy"
    append_row(path, FIELDS, {"variant": "a", "seed": 0, "accuracy": 0.5})
    append_row(path, FIELDS, {"variant": "b", "seed": 1})
    rows = finished_rows(path, FIELDS)
    assert rows == [{"variant": "a", "seed": "0", "accuracy": "0.5"}, {"variant": "b", "seed": "1", "accuracy": ""}]


def test_append_rejects_unknown_fields(tmp_path):
    path = tmp_path / "study.csv"
    finished_rows(path, FIELDS)
    with pytest.raises(ValueError):
        append_row(path, FIELDS, {"variant": "a", "typo": 1})


def test_mean_std():
    assert mean_std([0.5]) == "0.500"
    assert mean_std([0.1, 0.3]) == "0.200 ± 0.141"
    assert mean_std([1.0, 2.0, 3.0], digits=1) == "2.0 ± 1.0"
