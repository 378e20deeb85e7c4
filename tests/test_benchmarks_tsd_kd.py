"""Smoke tests of the TSD-KD benchmarks on tiny sizes, so that the scripts cannot rot."""

import csv
import importlib.util
from pathlib import Path

import pytest

BENCHMARKS = Path(__file__).resolve().parents[1] / "benchmarks"


def load(name: str):
    spec = importlib.util.spec_from_file_location(f"benchmark_{name}", BENCHMARKS / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_step_time_on_tiny_models(tmp_path):
    argv = ["--vocab", "300", "--hidden", "16", "--seq", "24", "--repeats", "1", "--out-dir", str(tmp_path)]
    load("tsd_kd_step_time").main(argv)
    with (tmp_path / "tsd_kd_step_time.csv").open() as handle:
        rows = list(csv.DictReader(handle))
    methods = ("GKD", "TSD-KD", "TSD-KD accumulated")
    assert [(row["method"], row["loss_path"]) for row in rows] == [
        (method, path) for path in ("chunked (default)", "full logits") for method in methods
    ]
    assert all(float(row["cpu_ms"]) > 0 and float(row["wall_ms"]) > 0 for row in rows)
    assert all(float(row["ratio_min"]) <= float(row["ratio_to_gkd"]) <= float(row["ratio_max"]) for row in rows)
    assert [float(row["ratio_to_gkd"]) for row in rows[::3]] == [1.0, 1.0]


@pytest.mark.slow
def test_toy_study_resumes_and_tabulates(tmp_path):
    module = load("tsd_kd_toy")
    out = tmp_path / "study.csv"
    argv = ["--seeds", "0", "--steps", "2", "--n_test", "4", "--out", str(out), "--variants", "TSD-KD, toy-scaled"]
    module.main(argv)
    module.main(argv)  # finished runs are not redone
    rows = list(csv.DictReader(out.open()))
    assert [row["variant"] for row in rows] == ["student (cold start)", "TSD-KD, toy-scaled"]
    assert "| TSD-KD, toy-scaled | 1 |" in module.table(out)


def test_gradient_norms_of_each_term():
    norms = load("tsd_kd_toy").gradient_norms(batch=2)
    assert len(norms) == 5 and all(0.0 < norm < 1e3 for norm in norms.values())

