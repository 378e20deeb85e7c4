"""benchmarks/gpu_check.py: the dry run (every part at toy size on the CPU) writes the CSV the GPU run will, the
1.5B/7B configs have the real models' shapes, and a part or case that fails or runs out of time becomes a row."""

import csv
import importlib.util
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
SCRIPT = REPO / "benchmarks" / "gpu_check.py"


def _load():
    spec = importlib.util.spec_from_file_location("gpu_check", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


gpu_check = _load()


@pytest.fixture(scope="module")
def dry_run(tmp_path_factory):
    """The rows of `gpu_check.py --dry-run`: the tests and losses parts in one run, the throughput part in another
    at the same time (two cores: the dry run is mostly imports), each checked to write a whole CSV."""
    folder = tmp_path_factory.mktemp("gpu_check")
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    runs = {parts: subprocess.Popen([sys.executable, str(SCRIPT), "--dry-run", "--parts", parts, "--out",
                                     str(folder / f"{parts}.csv")], stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                                    text=True, cwd=REPO, env=env)
            for parts in ("tests,losses", "throughput")}  # fmt: skip
    fields, rows = set(), []
    for parts, process in runs.items():
        output, _ = process.communicate(timeout=300)
        assert process.returncode == 0, output[-3000:]
        with (folder / f"{parts}.csv").open() as handle:
            reader = csv.DictReader(handle)
            part_rows = list(reader)
        assert {r["part"] for r in part_rows} == set(parts.split(","))
        fields.add(tuple(reader.fieldnames))
        rows += part_rows
    assert len(fields) == 1
    return fields.pop(), rows


def _rows(rows, part, case=None, metric=None):
    return [r for r in rows if r["part"] == part and case in (None, r["case"]) and metric in (None, r["metric"])]


def test_dry_run_columns_and_environment(dry_run):
    fields, rows = dry_run
    assert tuple(fields) == gpu_check.FIELDS
    for r in rows:
        assert r["device"].startswith("CPU") and r["torch"] and r["transformers"] and r["git_commit"]
        assert r["trl"] == "1.16.0"
    assert {r["part"] for r in rows} == {"tests", "losses", "throughput"}
    for part in ("tests", "losses", "throughput"):
        (seconds,) = _rows(rows, part, "part", "seconds")
        assert float(seconds["value"]) > 0 and seconds["status"] == "ok"


def test_dry_run_tests_part_collects_the_gpu_tests_skipped(dry_run):
    _, rows = dry_run
    counts = {r["metric"]: int(r["value"]) for r in _rows(rows, "tests", "pytest -m gpu")}
    assert counts["skipped"] >= 3 and counts["passed"] == counts["failures"] == counts["errors"] == 0
    outcomes = _rows(rows, "tests", metric="outcome")
    assert len(outcomes) == counts["skipped"] and all(r["value"] == "skipped" for r in outcomes)
    assert any("test_kd_trainer_two_steps_on_cuda_match_cpu" in r["case"] for r in outcomes)


def test_dry_run_losses_part_measures_all_three(dry_run):
    _, rows = dry_run
    for impl in ("ours", "gkd", "trl_chunked"):
        measured = {r["metric"]: r for r in _rows(rows, "losses", impl)}
        assert set(measured) == {"peak_mem_mib", "time_ms", "loss"}
        assert all(r["status"] == "ok" and r["setting"] == "N=64 V=512 H=32 bfloat16" for r in measured.values())
        assert float(measured["time_ms"]["value"]) > 0
    losses = [float(r["value"]) for r in _rows(rows, "losses", metric="loss")]
    assert max(losses) - min(losses) < 2e-2 * max(losses)  # the same loss, in bf16
    for other in ("gkd", "trl_chunked"):
        ratios = _rows(rows, "losses", f"ours/{other}")
        assert {r["metric"] for r in ratios} == {"peak_mem_mib_ratio", "time_ms_ratio"}
        assert all(r["status"] == "ok" and float(r["value"]) > 0 for r in ratios)


def test_dry_run_throughput_part_runs_both_trainers_alike(dry_run):
    _, rows = dry_run
    results = {}
    for trainer, setting in gpu_check.THROUGHPUT_CASES:
        case_rows = [r for r in _rows(rows, "throughput", trainer) if r["setting"].startswith(setting)]
        assert all(r["status"] == "ok" for r in case_rows), case_rows
        results[trainer, setting] = {r["metric"]: r["value"] for r in case_rows}
        assert float(results[trainer, setting]["tokens_per_s"]) > 0
        assert results[trainer, setting]["attn_implementation"] == "sdpa"
    off_kd, off_trl = results["kd_trainer", "off_policy"], results["trl_distillation", "off_policy"]
    # 2 rows of 8 prompt + 16 completion words, 5 chat-template tokens and the end of turn: the same tokens for both,
    # so the same first loss (same student, teacher and data; the generalized JSD with beta 0.5 in both)
    assert float(off_kd["tokens_per_step"]) == float(off_trl["tokens_per_step"]) == 2 * (8 + 16 + 6)
    assert float(off_kd["first_loss"]) == pytest.approx(float(off_trl["first_loss"]), rel=1e-3)
    on_kd, on_trl = results["kd_trainer", "on_policy"], results["trl_distillation", "on_policy"]
    assert float(on_kd["tokens_per_step"]) <= 2 * (8 + 5 + 4) and float(on_trl["tokens_per_step"]) <= 2 * (8 + 5 + 4)


@pytest.mark.parametrize("size, expected", [("1.5b", 1.54e9), ("7b", 7.6e9)])
def test_configs_have_the_real_shapes(size, expected):
    count = gpu_check.parameter_count(gpu_check.qwen_config(size))
    assert abs(count - expected) / expected < 0.05


def test_a_subprocess_past_its_timeout_is_killed(tmp_path):
    start = time.monotonic()
    code, _ = gpu_check.run_with_timeout([sys.executable, "-c", "import time; time.sleep(60)"], 0.5,
                                         tmp_path / "log")  # fmt: skip
    assert code is None and time.monotonic() - start < 20


def test_a_stuck_throughput_case_times_out(tmp_path):
    results = tmp_path / "results.jsonl"
    worker = f"import json, time; open({str(results)!r}, 'w').write(json.dumps({{'event': 'ready'}}) + '\\n'); " \
             "time.sleep(60)"  # fmt: skip
    done, status, ready = gpu_check.watch_worker([sys.executable, "-c", worker], results, tmp_path / "log", 30.0, 1.0)
    assert done == [] and status == "timeout after 1 s" and ready


def test_failing_throughput_cases_and_parts_become_rows(tmp_path, monkeypatch):
    args = gpu_check.parse_args(["--dry-run", "--out", str(tmp_path / "out.csv"), "--parts", "throughput,losses"])
    calls = []

    def crashing_worker(command, *_):  # ready, then dies in each case it is given
        calls.append(json.loads(Path(command[-1]).read_text())["cases"])
        return [], "failed: worker exit 1: boom", True

    monkeypatch.setattr(gpu_check, "watch_worker", crashing_worker)
    rows = gpu_check.part_throughput(args, 60.0, tmp_path)
    cases = [list(case) for case in gpu_check.THROUGHPUT_CASES]
    assert calls == [cases, cases[1:], cases[2:], cases[3:]]  # restarted on the cases left after each failure
    assert [(r["case"], r["status"]) for r in rows] == [
        (trainer, "failed: worker exit 1: boom") for trainer, _ in gpu_check.THROUGHPUT_CASES]
    monkeypatch.setattr(gpu_check, "watch_worker", lambda *_: ([], "failed: worker exit 1: no CUDA", False))
    rows = gpu_check.part_throughput(args, 60.0, tmp_path)  # never ready: every case fails at once, one start
    assert [r["status"] for r in rows] == ["failed: worker setup: worker exit 1: no CUDA"] * 4

    def broken(*_):
        raise RuntimeError("no device")

    monkeypatch.setitem(gpu_check.PARTS, "losses", (broken, "losses_budget"))
    monkeypatch.setitem(gpu_check.PARTS, "throughput", (broken, "throughput_budget"))
    monkeypatch.setattr(gpu_check, "environment", lambda: {"device": "x"})
    rows = gpu_check.main(["--dry-run", "--out", str(tmp_path / "out.csv"), "--parts", "throughput,losses"])
    assert [(r["part"], r["status"]) for r in rows if r["case"] == "all"] == [
        ("losses", "failed: RuntimeError: no device"), ("throughput", "failed: RuntimeError: no device")]
    with (tmp_path / "out.csv").open() as handle:
        assert len(list(csv.DictReader(handle))) == 4  # each failed part, then its seconds
