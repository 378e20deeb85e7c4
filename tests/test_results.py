"""`results.py`: resumable study CSVs, bound to the settings that made them; the study scripts use them so."""

import argparse
import importlib.util
import shutil
from pathlib import Path

import pytest

import trl_reasoning_distill
from trl_reasoning_distill.fingerprint import StaleOutputError, fingerprint_path
from trl_reasoning_distill.results import append_row, finished_rows, mean_std, study_settings, toy_identity

FIELDS = ["variant", "seed", "accuracy"]
SETTINGS = {"steps": 150, "n_test": 300, "learning_rate": 5e-4}
BENCHMARKS = Path(__file__).resolve().parents[1] / "benchmarks"


def test_rows_survive_a_restart(tmp_path):
    path = tmp_path / "sub" / "study.csv"
    assert finished_rows(path, FIELDS, SETTINGS) == [] and path.read_text().strip() == "variant,seed,accuracy"
    append_row(path, FIELDS, {"variant": "a", "seed": 0, "accuracy": 0.5})
    append_row(path, FIELDS, {"variant": "b", "seed": 1})
    rows = finished_rows(path, FIELDS, dict(SETTINGS))
    assert rows == [{"variant": "a", "seed": "0", "accuracy": "0.5"}, {"variant": "b", "seed": "1", "accuracy": ""}]


def test_append_rejects_unknown_fields(tmp_path):
    path = tmp_path / "study.csv"
    finished_rows(path, FIELDS, SETTINGS)
    with pytest.raises(ValueError):
        append_row(path, FIELDS, {"variant": "a", "typo": 1})


@pytest.mark.parametrize(("change", "field"), [({"steps": 30}, "steps"), ({"learning_rate": 1e-3}, "learning_rate"),
                                               ({"n_test": 4}, "n_test")])
def test_a_study_resumed_under_other_settings_refuses(tmp_path, change, field):
    path = tmp_path / "study.csv"
    finished_rows(path, FIELDS, SETTINGS)
    append_row(path, FIELDS, {"variant": "a", "seed": 0, "accuracy": 0.5})
    with pytest.raises(StaleOutputError, match=rf"(?s)\n  {field}: .*--overwrite"):
        finished_rows(path, FIELDS, {**SETTINGS, **change})
    assert len(path.read_text().splitlines()) == 2  # the rows are kept
    assert finished_rows(path, FIELDS, {**SETTINGS, **change}, overwrite=True) == []
    assert path.read_text().strip() == "variant,seed,accuracy"
    assert finished_rows(path, FIELDS, {**SETTINGS, **change}) == []  # resumable under the new settings


def test_other_columns_refuse(tmp_path):
    path = tmp_path / "study.csv"
    finished_rows(path, FIELDS, SETTINGS)
    with pytest.raises(StaleOutputError, match="columns"):
        finished_rows(path, [*FIELDS, "extra"], SETTINGS)


def test_overwrite_deletes_the_companion_folders(tmp_path):
    path, work = tmp_path / "study.csv", tmp_path / "study"
    finished_rows(path, FIELDS, SETTINGS, companions=[work])
    work.mkdir()
    (work / "data.jsonl").write_text("{}\n")
    finished_rows(path, FIELDS, {**SETTINGS, "steps": 1}, overwrite=True, companions=[work])
    assert not work.exists()


@pytest.mark.parametrize("name", ["brts_toy", "cotd_po_toy", "gen_ssd_cost", "reproduce", "tsd_kd_toy", "vcrd_toy"])
def test_a_committed_csv_is_resumed_only_under_the_settings_that_made_it(tmp_path, name):
    """A committed CSV ships with the fingerprint of the run that made it (those made before fingerprints have none):
    resuming it under other settings refuses, naming --overwrite, and leaves it as it was."""
    committed = BENCHMARKS / "results" / f"{name}.csv"
    path = tmp_path / f"{name}.csv"
    shutil.copy(committed, path)
    if fingerprint_path(committed).exists():
        shutil.copy(fingerprint_path(committed), fingerprint_path(path))
    with pytest.raises(StaleOutputError, match=r"(?s)(without a fingerprint|  [a-z_]+: ).*--overwrite"):
        finished_rows(path, FIELDS, SETTINGS)
    assert path.read_bytes() == committed.read_bytes()


def test_study_settings_keep_what_changes_rows():
    args = argparse.Namespace(seeds=[0, 1], variants=["a"], methods=["m"], out=Path("x.csv"), plot=None, table=False,
                              overwrite=True, workdir=Path("runs"), steps=150, n_test=300, lr=3e-4, grad_norms=False)
    settings = study_settings(args, ignore=["grad_norms"], training={"learning_rate": 5e-4})
    assert settings == {"steps": 150, "n_test": 300, "lr": 3e-4, "training": {"learning_rate": 5e-4}}


def test_toy_identity_names_the_toy_models():
    from trl_reasoning_distill.toy import load_toy_student

    identity = toy_identity()
    assert set(identity) == {"toy_teacher", "toy_student", "toy_tokenizer"}
    assert identity["toy_teacher"] != identity["toy_student"]
    assert toy_identity(student=load_toy_student()) == identity


def test_mean_std():
    assert mean_std([0.5]) == "0.500"
    assert mean_std([0.1, 0.3]) == "0.200 ± 0.141"
    assert mean_std([1.0, 2.0, 3.0], digits=1) == "2.0 ± 1.0"


# --- the study scripts ---------------------------------------------------------------------------------------------


class Work(Exception):
    """Raised where a study would start its first run: everything before it is checks and setup."""


def load(name: str):
    spec = importlib.util.spec_from_file_location(f"benchmark_{name}", BENCHMARKS / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def no_work(*args, **kwargs):
    raise Work


STUDIES = {  # script -> options of a smoke run
    "brts_toy": ["--n_test", "2"],
    "tsd_kd_toy": ["--n_test", "2"],
    "vcrd_toy": ["--n_test", "2"],
    "cotd_po_toy": ["--n_test", "2", "--rounds", "1"],
    "gen_ssd_cost": ["--n_test", "2", "--problems", "8"],
}


@pytest.mark.parametrize("name", list(STUDIES))
def test_a_study_script_refuses_other_settings_before_any_run(tmp_path, monkeypatch, name):
    module = load(name)
    monkeypatch.setattr(trl_reasoning_distill, "evaluate", no_work)  # the first thing every study computes
    if hasattr(module, "measure"):
        monkeypatch.setattr(module, "measure", no_work)
    out = tmp_path / "study.csv"
    argv = [*STUDIES[name], "--seeds", "0", "--out", str(out)]
    if name == "cotd_po_toy":
        argv += ["--workdir", str(tmp_path / "runs")]
    with pytest.raises(Work):
        module.main([*argv, "--steps", "2"])
    assert fingerprint_path(out).exists()
    with pytest.raises(StaleOutputError, match=r"(?s)\n  steps: 2 -> 3.*--overwrite"):
        module.main([*argv, "--steps", "3"])
    with pytest.raises(Work):  # more seeds: the same study, resumed
        module.main([*argv, "--steps", "2", "--seeds", "0", "1"])
    with pytest.raises(Work):
        module.main([*argv, "--steps", "3", "--overwrite"])
    assert '"steps": 3' in fingerprint_path(out).read_text()
