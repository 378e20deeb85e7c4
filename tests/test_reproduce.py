"""The toy reproduction: its reports and input checks (fast), and the demo end to end at a tiny budget (slow)."""

import csv

import pytest

from tests.test_examples import ROOT, run
from trl_reasoning_distill import reproduce as rep
from trl_reasoning_distill.fingerprint import StaleOutputError, fingerprint_path


def rows_of(values: dict[str, list[float]]) -> list[dict]:
    """CSV-like rows (strings) with every metric set to the given per-seed values of each method."""
    rows = []
    for method, per_seed in values.items():
        for seed, value in enumerate(per_seed):
            rows.append({"method": method, "seed": str(seed), "examples": "10", "teacher_tokens": "100",
                         "train_seconds": "1.5", **{m: str(value) for m in rep.METRICS}})
    return rows


def test_table_reports_mean_and_std_over_seeds():
    rows = rows_of({rep.COLD_START: [0.2], rep.STANDARD_KD: [0.3, 0.5], rep.GEN_SSD: [0.4, 0.4]})
    lines = rep.table(rows).splitlines()
    assert [line.split(" | ")[0] for line in lines[2:]] == [f"| {rep.COLD_START}", f"| {rep.STANDARD_KD}",
                                                             f"| {rep.GEN_SSD}"]  # report order, absent ones left out
    assert "| 2 | 0.400 ± 0.141 |" in lines[3]  # seeds, then mean ± sample std
    assert "| 1 | 0.200 |" in lines[2]


def test_gains_are_against_each_papers_baseline():
    rows = rows_of({rep.STANDARD_KD: [0.30, 0.50], rep.GEN_SSD: [0.45, 0.45], rep.GKD: [0.5]})
    lines = {line.split(" | ")[0][2:]: line for line in rep.gains(rows).splitlines()[2:]}
    assert set(lines) == set(rep.BASELINE)
    assert f"| {rep.GEN_SSD} | {rep.STANDARD_KD} | +5.0 pts | +5.0 pts |" in lines[rep.GEN_SSD]
    assert "| - | - |" in lines[rep.TSD_KD]  # TSD-KD did not run: no toy gain, the paper's still shown
    assert rep.PAPER_GAIN[rep.TSD_KD] in lines[rep.TSD_KD]


def test_plot_writes_a_png(tmp_path):
    path = tmp_path / "reproduce.png"
    rep.plot(rows_of({rep.COLD_START: [0.2], rep.BRTS: [0.3, 0.35, 0.32]}), path)
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


@pytest.mark.parametrize(("kwargs", "message"), [
    ({"methods": ["GKD", "DPO"]}, "unknown methods"),
    ({"methods": [rep.GEN_SSD]}, "include Standard KD"),
    ({"steps": 0}, "must be >= 1"),
    ({"seeds": []}, "seeds non-empty"),
])
def test_bad_options_fail_before_any_compute(tmp_path, kwargs, message):
    settings = {"out": tmp_path / "r.csv", "seeds": [0], "steps": 2, "batch": 4, "n_test": 4,
                "methods": rep.METHODS, **kwargs}
    with pytest.raises(ValueError, match=message):
        rep.reproduce(**settings)
    assert not (tmp_path / "r.csv").exists()


@pytest.fixture
def scripted(monkeypatch):
    """Every run and evaluation scripted (instant), counting the runs."""
    runs = []

    def runner(prompts, ctx, out, steps, batch, seed):
        runs.append((steps, seed))
        return None, steps * batch, 0

    monkeypatch.setattr(rep, "measure", lambda model, ctx, n_test: {m: 0.5 for m in rep.METRICS})
    monkeypatch.setitem(rep.RUNNERS, rep.GKD, runner)
    return runs


def test_a_reproduction_resumed_under_other_settings_refuses(tmp_path, scripted):
    out = tmp_path / "r.csv"
    settings = {"out": out, "seeds": [0], "steps": 2, "batch": 4, "n_test": 4, "methods": [rep.GKD], "verbose": False}
    assert [r["method"] for r in rep.reproduce(**settings)] == [rep.COLD_START, rep.TEACHER, rep.GKD]
    assert len(rep.reproduce(**{**settings, "seeds": [0, 1]})) == 4 and scripted == [(2, 0), (2, 1)]  # resumed
    for change, field in (({"steps": 3}, "steps"), ({"batch": 8}, "batch"), ({"n_test": 6}, "n_test")):
        with pytest.raises(StaleOutputError, match=rf"(?s)\n  {field}: .*--overwrite"):
            rep.reproduce(**{**settings, **change})
    assert scripted == [(2, 0), (2, 1)]  # nothing ran under the other settings
    rows = rep.reproduce(**{**settings, "steps": 3}, overwrite=True)
    assert [r["steps"] for r in rows] == ["0", "0", "3"] and scripted[-1] == (3, 0)


def test_the_committed_csv_is_refused_and_the_table_only_reads(tmp_path, scripted, capsys):
    out = tmp_path / "reproduce.csv"
    committed = ROOT / "benchmarks" / "results" / "reproduce.csv"
    out.write_bytes(committed.read_bytes())
    with pytest.raises(StaleOutputError, match=r"(?s)without a fingerprint.*--overwrite"):
        rep.main(["--out", str(out), "--seeds", "0", "--methods", rep.GKD])
    assert scripted == []
    rep.main(["--table", "--out", str(out)])
    assert out.read_bytes() == committed.read_bytes() and not fingerprint_path(out).exists()
    assert f"| {rep.GKD} | 3 |" in capsys.readouterr().out


@pytest.mark.slow
def test_demo_runs_every_method_once_and_resumes(tmp_path):
    """`make demo`'s entry point at a tiny budget, one seed: a row per method, the tables, the plot; a second run
    finds every run finished and adds no row."""
    out = tmp_path / "demo.csv"
    tiny = ["--steps", "2", "--batch", "4", "--n_test", "4", "--out", str(out)]
    first = run(["-m", "trl_reasoning_distill.demo", *tiny, "--methods", rep.STANDARD_KD, rep.GKD], ROOT, tmp_path)
    assert f"| {rep.GKD} | 1 |" in first
    printed = run(["-m", "trl_reasoning_distill.demo", *tiny], ROOT, tmp_path)
    with out.open(newline="") as handle:
        rows = list(csv.DictReader(handle))
    methods = [row["method"] for row in rows]
    assert sorted(methods) == sorted([rep.COLD_START, rep.TEACHER, *rep.METHODS])  # none twice: resumed
    for method in methods:
        assert f"| {method} | 1 |" in printed
    assert all(0 <= float(row[m]) <= 1 for row in rows for m in rep.METRICS)
    by_method = {row["method"]: row for row in rows}
    assert int(by_method[rep.GEN_SSD]["examples"]) >= 1 and int(by_method[rep.STANDARD_KD]["teacher_tokens"]) > 0
    assert float(by_method[rep.TEACHER]["easy_greedy"]) > float(by_method[rep.COLD_START]["easy_greedy"])
    assert out.with_suffix(".png").exists()
    assert "paper's gain" in printed


def test_cli_reproduce_table_reads_the_csv_and_draws_the_plot(tmp_path, capsys):
    from trl_reasoning_distill import cli

    out = tmp_path / "reproduce.csv"
    rows = rows_of({rep.COLD_START: [0.2], rep.GKD: [0.3, 0.4], rep.VCRD: [0.35, 0.45]})
    with out.open("w", newline="") as handle:
        writer = csv.DictWriter(handle, rep.FIELDS, extrasaction="ignore")
        writer.writeheader()
        writer.writerows(rows)
    cli.main(["reproduce", "--table", "--out", str(out)])
    printed = capsys.readouterr().out
    assert f"| {rep.VCRD} | 2 | 0.400 ± 0.071 |" in printed
    assert f"| {rep.VCRD} | {rep.GKD} | +5.0 pts | +5.0 pts |" in printed
    assert out.with_suffix(".png").exists()
