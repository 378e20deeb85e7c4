"""Smoke test of `benchmarks/losses.py` on tiny sizes, so that the script cannot rot: every implementation runs in its
subprocess, the three losses agree, and the CSV and PNG are written."""

import csv
import importlib.util
from pathlib import Path

import pytest

SCRIPT = Path(__file__).resolve().parents[1] / "benchmarks" / "losses.py"


@pytest.fixture(scope="module")
def losses_module():
    spec = importlib.util.spec_from_file_location("benchmark_losses", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_quick_benchmark_on_tiny_sizes(losses_module, tmp_path):
    argv = ["--quick", "--sizes", "24", "--vocabs", "50", "--hidden", "8", "--repeats", "1", "--warmup", "0"]
    losses_module.main([*argv, "--out-dir", str(tmp_path)])
    with (tmp_path / "losses.csv").open() as handle:
        rows = list(csv.DictReader(handle))
    assert [row["impl"] for row in rows] == ["ours", "gkd", "trl_chunked"]
    assert all(row["status"] == "ok" and float(row["peak_mem_mib"]) >= 0 and float(row["time_ms"]) > 0 for row in rows)
    assert {row["N"] for row in rows} == {"24"} and {row["git_commit"] != "" for row in rows} == {True}
    losses = [float(row["loss"]) for row in rows]
    assert max(losses) - min(losses) < 1e-4 * max(losses)
    assert (tmp_path / "losses.png").stat().st_size > 0


def test_skips_cases_that_do_not_fit(losses_module):
    args = losses_module.parse_args(["--sizes", "1024,4096,8192", "--vocabs", "152064"])
    assert losses_module.estimated_gib("gkd", 4096, 152064, 1024, "float32") > args.max_gib
    assert losses_module.estimated_gib("ours", 8192, 152064, 1024, "float32") < 3.0  # 1 GiB of buffers + heads
    fitting = losses_module.largest_fitting_n(152064, args)
    assert 1024 <= fitting < 4096 and (fitting, 152064) in losses_module.grid(args)


def test_merge_replaces_only_the_re_measured_rows(losses_module, tmp_path):
    argv = ["--sizes", "16", "--vocabs", "40", "--hidden", "8", "--repeats", "1", "--warmup", "0", "--impls", "ours",
            "--out-dir", str(tmp_path)]  # fmt: skip
    first = losses_module.main([*argv, "--sizes", "16,24"])
    losses_module.main([*argv, "--merge"])
    with (tmp_path / "losses.csv").open() as handle:
        rows = list(csv.DictReader(handle))
    assert [row["N"] for row in rows] == ["16", "24"]
    assert rows[1]["timestamp"] == str(first[1]["timestamp"]) and rows[0]["status"] == "ok"
    assert losses_module.estimated_gib("ours", 16, 40, 8, "float32") < losses_module.estimated_gib(
        "ours", 2**20, 40, 8, "float32")
