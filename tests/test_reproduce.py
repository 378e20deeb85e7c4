"""The toy reproduction: its reports and input checks (fast), and the demo end to end at a tiny budget (slow)."""

import csv
import random

import pytest

from tests.test_examples import ROOT, run
from trl_reasoning_distill import reproduce as rep
from trl_reasoning_distill import reproduce_report as report
from trl_reasoning_distill.fingerprint import StaleOutputError, fingerprint_path


def rows_of(values: dict[str, list[float]], lr: float = 1e-3) -> list[dict]:
    """CSV-like rows (strings) with every metric set to the given per-seed values of each method."""
    rows = []
    for method, per_seed in values.items():
        for seed, value in enumerate(per_seed):
            rate = 0.0 if method in (rep.COLD_START, rep.TEACHER) else lr
            rows.append({"method": method, "seed": str(seed), "learning_rate": str(rate), "steps": "8",
                         "examples": "10", "teacher_tokens": "100", "train_seconds": "1.5",
                         **{m: str(value) for m in rep.METRICS}})
    return rows


def test_table_reports_mean_and_std_over_seeds():
    rows = rows_of({rep.COLD_START: [0.2], rep.STANDARD_KD: [0.3, 0.5], rep.GEN_SSD: [0.4, 0.4]})
    lines = rep.table(rows).splitlines()
    assert [line.split(" | ")[0] for line in lines[2:]] == [f"| {rep.COLD_START}", f"| {rep.STANDARD_KD}",
                                                             f"| {rep.GEN_SSD}"]  # report order, absent ones left out
    assert "| 0.001 | 2 | 0.400 ± 0.141 |" in lines[3]  # rate, seeds, then mean ± sample std
    assert "| - | 1 | 0.200 |" in lines[2]


def test_the_learning_rate_is_chosen_on_validation_and_the_table_keeps_its_rows():
    low = rows_of({rep.GKD: [0.30, 0.1, 0.1]}, lr=5e-4)
    high = [{**row, "val_greedy": "0.35"} for row in rows_of({rep.GKD: [0.2]}, lr=1e-3)]  # sweep: seed 0 only
    assert report.chosen_rates(low + high) == {rep.GKD: 1e-3}  # validation, not test, decides
    tie = [{**row, "val_greedy": "0.30"} for row in high]
    assert report.chosen_rates(low + tie) == {rep.GKD: 5e-4}  # a tie keeps the first rate run
    assert [r["learning_rate"] for r in report.final_rows(low + high)] == ["0.001"]
    assert "| GKD | 0.0005 | 0 | 0.300 |  |" in report.sweep_table(low + high)


def test_paired_bootstrap_matches_a_naive_resampling():
    rng = random.Random(0)
    method = [[int(rng.random() < 0.6) for _ in range(50)] for _ in range(3)]
    base = [[int(rng.random() < 0.4) for _ in range(50)] for _ in range(3)]
    mean, low, high = report.paired_bootstrap(method, base, samples=4000)
    assert mean == pytest.approx(sum(map(sum, method)) / 150 - sum(map(sum, base)) / 150)
    naive = []  # seeds with replacement, then problems with replacement within each drawn seed
    for _ in range(4000):
        seeds = [rng.randrange(3) for _ in range(3)]
        diffs = [method[s][j] - base[s][j] for s in seeds for j in (rng.randrange(50) for _ in range(50))]
        naive.append(sum(diffs) / len(diffs))
    naive.sort()
    assert low == pytest.approx(naive[100], abs=0.02) and high == pytest.approx(naive[3899], abs=0.02)
    assert report.paired_bootstrap(base, base) == (0.0, 0.0, 0.0)


def test_gains_pair_each_method_with_its_papers_baseline_per_seed():
    rows = rows_of({rep.COLD_START: [0.2], rep.STANDARD_KD: [0.3, 0.5], rep.GEN_SSD: [0.45, 0.45], rep.GKD: [0.5]})
    ones, zeros = {"val": "1" * 8, "easy": "1" * 8, "hard": "1" * 8}, {"val": "0" * 8, "easy": "0" * 8,
                                                                     "hard": "0" * 8}
    problems = {(rep.COLD_START, 0, 0.0): zeros, (rep.STANDARD_KD, 0, 1e-3): ones, (rep.STANDARD_KD, 1, 1e-3): zeros,
                (rep.GEN_SSD, 0, 1e-3): ones, (rep.GEN_SSD, 1, 1e-3): ones, (rep.GKD, 0, 1e-3): zeros}
    lines = {line.split(" | ")[0][2:]: line for line in report.gains(rows, problems).splitlines()[2:]}
    assert set(lines) == {rep.STANDARD_KD, rep.GKD, rep.GEN_SSD}  # the others did not run
    assert f"| {rep.GEN_SSD} | {rep.STANDARD_KD} | 2 | +50.0 [+0.0, +100.0] |" in lines[rep.GEN_SSD]
    assert "| +0.0 [+0.0, +0.0] | level / level |" in lines[rep.GKD]
    assert f"| {rep.STANDARD_KD} | {rep.COLD_START} | 2 |" in lines[rep.STANDARD_KD]  # the cold start: every seed
    assert report.PAPER_GAIN[rep.GEN_SSD] in lines[rep.GEN_SSD]
    assert report.verdict(0.01, 0.2) == "ahead" and report.verdict(-0.2, -0.01) == "behind"


def test_plot_writes_a_png(tmp_path):
    path = tmp_path / "reproduce.png"
    rep.plot(rows_of({rep.COLD_START: [0.2], rep.BRTS: [0.3, 0.35, 0.32]}), path)
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


@pytest.mark.parametrize(("kwargs", "message"), [
    ({"methods": ["GKD", "DPO"]}, "unknown methods"),
    ({"methods": [rep.GEN_SSD]}, "include Standard KD"),
    ({"steps": 0}, "must be >= 1"),
    ({"sft_steps": 0}, "must be >= 1"),
    ({"seeds": []}, "seeds non-empty"),
])
def test_bad_options_fail_before_any_compute(tmp_path, kwargs, message):
    settings = {"out": tmp_path / "r.csv", "seeds": [0], "steps": 2, "sft_steps": 2, "batch": 4, "n_test": 4,
                "methods": rep.METHODS, **kwargs}
    with pytest.raises(ValueError, match=message):
        rep.reproduce(**settings)
    assert not (tmp_path / "r.csv").exists()


@pytest.fixture
def scripted(monkeypatch):
    """Every run and evaluation scripted (instant), counting the runs."""
    runs = []

    def runner(prompts, ctx, out, steps, batch, seed, lr):
        runs.append((steps, seed, lr))
        return lr, steps * batch, 0

    def measure(model, ctx):  # validation prefers 1e-3; the runner returns its rate as the "model"
        n = len(ctx["eval_sets"]["easy"])
        return {m: 0.5 for m in rep.METRICS} | {"val_greedy": 0.6 if model == 1e-3 else 0.5}, {
            split: "1" * n for split in ctx["eval_sets"]}

    monkeypatch.setattr(rep, "measure", measure)
    monkeypatch.setitem(rep.RUNNERS, rep.GKD, runner)
    return runs


def test_a_reproduction_sweeps_on_the_first_seed_resumes_and_refuses_other_settings(tmp_path, scripted):
    out = tmp_path / "r.csv"
    settings = {"out": out, "seeds": [0], "steps": 2, "sft_steps": 3, "batch": 4, "n_test": 4, "methods": [rep.GKD],
                "verbose": False}
    assert [r["method"] for r in rep.reproduce(**settings)] == [rep.COLD_START, rep.TEACHER, rep.GKD, rep.GKD]
    assert scripted == [(2, 0, 5e-4), (2, 0, 1e-3)]  # the family's sweep, on-policy steps
    assert len(rep.reproduce(**{**settings, "seeds": [0, 1]})) == 5  # resumed; seed 1 at the chosen rate
    assert scripted[2:] == [(2, 1, 1e-3)]
    assert len(report.read_problems(out)) == 5 and {len(v["easy"]) for v in report.read_problems(out).values()} == {4}
    for change, field in (({"steps": 3}, "steps"), ({"batch": 8}, "batch"), ({"n_test": 6}, "n_test"),
                          ({"sweep": False}, "sweep")):
        with pytest.raises(StaleOutputError, match=rf"(?s)\n  {field}: .*--overwrite"):
            rep.reproduce(**{**settings, **change})
    assert len(scripted) == 3  # nothing ran under the other settings
    rows = rep.reproduce(**{**settings, "steps": 3, "sweep": False}, overwrite=True)
    assert [r["steps"] for r in rows] == ["0", "0", "3"] and scripted[-1] == (3, 0, rep.CHOSEN[rep.GKD])
    assert len(report.read_problems(out)) == 3  # the old per-problem results went with --overwrite


def test_the_committed_csv_is_refused_and_the_table_only_reads(tmp_path, scripted, capsys):
    out = tmp_path / "reproduce.csv"
    committed = ROOT / "benchmarks" / "results" / "reproduce.csv"
    out.write_bytes(committed.read_bytes())
    with pytest.raises(StaleOutputError, match=r"(?s)without a fingerprint.*--overwrite"):
        rep.main(["--out", str(out), "--seeds", "0", "--methods", rep.GKD])
    assert scripted == []
    rep.main(["--table", "--out", str(out)])
    assert out.read_bytes() == committed.read_bytes() and not fingerprint_path(out).exists()
    assert f"| {rep.GKD} | " in capsys.readouterr().out


@pytest.mark.slow
def test_demo_trains_the_baselines_resumes_and_shows_the_committed_methods(tmp_path):
    """`make demo`'s entry point at a tiny budget, one seed: a row per baseline, the tables, the plot, the committed
    reproduction's methods; then every method live (`--methods`), resuming the baselines' rows."""
    out = tmp_path / "demo.csv"
    tiny = ["--steps", "2", "--sft_steps", "2", "--batch", "4", "--n_test", "4", "--out", str(out)]
    first = run(["-m", "trl_reasoning_distill.demo", *tiny], ROOT, tmp_path)
    assert f"| {rep.GKD} | 0.0005 | 1 |" in first and "from the committed reproduction" in first
    assert f"| {rep.BRTS} | " in first.split("from the committed reproduction")[1]  # the methods, read from the CSV
    printed = run(["-m", "trl_reasoning_distill.demo", *tiny, "--methods", *rep.METHODS], ROOT, tmp_path)
    with out.open(newline="") as handle:
        rows = list(csv.DictReader(handle))
    methods = [row["method"] for row in rows]
    assert sorted(methods) == sorted([rep.COLD_START, rep.TEACHER, *rep.METHODS])  # none twice: resumed
    for method in methods:
        assert f"| {method} | " in printed
    assert all(0 <= float(row[m]) <= 1 for row in rows for m in rep.METRICS)
    by_method = {row["method"]: row for row in rows}
    assert int(by_method[rep.GEN_SSD]["examples"]) >= 1 and int(by_method[rep.STANDARD_KD]["teacher_tokens"]) > 0
    assert float(by_method[rep.TEACHER]["easy_greedy"]) > float(by_method[rep.COLD_START]["easy_greedy"])
    assert out.with_suffix(".png").exists() and len(report.read_problems(out)) == len(rows)
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
    assert f"| {rep.VCRD} | 0.001 | 2 | 0.400 ± 0.071 |" in printed
    assert "paper's gain" in printed  # no per-problem results beside this CSV: no paired rows
    assert out.with_suffix(".png").exists()


def test_the_committed_rates_are_what_the_committed_sweep_chose():
    """`CHOSEN` (the demo's and the examples' rates) is the choice of the committed reproduction's sweep."""
    with (ROOT / "benchmarks" / "results" / "reproduce.csv").open(newline="") as handle:
        chosen = report.chosen_rates(list(csv.DictReader(handle)))
    assert {method: chosen[method] for method in rep.METHODS} == rep.CHOSEN


def test_teacher_data_of_a_seed_is_sampled_once_and_reused_by_every_rate(tmp_path):
    """Gen-SSD's budgeted sampling, run again for another learning rate of the same seed, reads its file back (it
    used to be refused: the resumed prefix lacked the records already sampled)."""
    from trl_reasoning_distill.toy import load_toy_student, load_toy_teacher, load_toy_tokenizer, toy_dataset

    ctx = {"tokenizer": load_toy_tokenizer(), "teacher": load_toy_teacher(), "student": load_toy_student()}
    prompts = toy_dataset("train", 48, seed=100, min_ops=2, max_ops=3)
    path = tmp_path / "gen_ssd-seed0.jsonl"
    first = rep._sample("chunked", prompts, ctx, path, seed=0, budget=15_000)
    size = path.stat().st_size
    again = rep._sample("chunked", prompts, ctx, path, seed=0, budget=15_000)
    assert again[1] == first[1] and again[0].to_list() == first[0].to_list() and path.stat().st_size == size
