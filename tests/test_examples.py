"""End to end on the toy world: every example script, a couple of steps each (slow); the demo: test_reproduce.py."""

import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
TINY = ["--max_steps", "2", "--dataset_name", "toy:train:16", "--eval_dataset_name", "toy:test:4",
        "--eval_max_new_tokens", "48", "--per_device_train_batch_size", "4", "--logging_steps", "1"]
EXAMPLES = {
    "brts.py": ["--max_new_tokens", "24"],
    "cotd_po.py": ["--num_rounds", "2", "--prompts_per_round", "8", "--num_candidates", "2", "--max_new_tokens", "12"],
    "gen_ssd.py": ["--chunk_size", "16", "--max_new_tokens", "96", "--num_candidates", "4", "2"],
    "gkd.py": ["--max_new_tokens", "24"],
    "standard_kd.py": ["--samples_per_prompt", "2", "--sample_max_new_tokens", "96"],
    "tsd_kd.py": ["--max_new_tokens", "24"],
    "vcrd.py": ["--max_new_tokens", "24", "--line_proposal_max_new_tokens", "8"],
}


def run(args: list[str], cwd: Path, tmp_path: Path) -> str:
    done = subprocess.run([sys.executable, *args], cwd=cwd, capture_output=True, text=True, timeout=600,
                          env={"HF_HUB_OFFLINE": "1", "TRL_EXPERIMENTAL_SILENCE": "1", "PATH": "/usr/bin:/bin",
                               "HOME": str(tmp_path), "PYTHONPATH": str(ROOT)})
    assert done.returncode == 0, done.stderr[-3000:]
    return done.stdout


@pytest.mark.slow
@pytest.mark.parametrize("script", sorted(EXAMPLES))
def test_example_runs(script, tmp_path):
    out = run([str(ROOT / "examples" / script), *TINY, *EXAMPLES[script], "--output_dir", str(tmp_path / "run")],
              ROOT / "examples", tmp_path)
    assert "student before: greedy pass@1" in out and "student after" in out
    assert (tmp_path / "run" / "model.safetensors").exists()
    if script != "cotd_po.py":  # saved by the trainer: its arguments and a model card (CoTD-PO: one per round)
        assert (tmp_path / "run" / "training_args.bin").exists() and (tmp_path / "run" / "README.md").exists()
    else:
        assert (tmp_path / "run" / "training_args.json").exists()


@pytest.mark.slow
def test_standard_kd_example_repeats_itself(tmp_path):
    """The teacher's samples are seeded by `--seed`: the same command draws the same data and trains the same model."""
    runs = []
    for i in range(2):
        out = run([str(ROOT / "examples" / "standard_kd.py"), *TINY, *EXAMPLES["standard_kd.py"], "--output_dir",
                   str(tmp_path / f"run{i}")], ROOT / "examples", tmp_path)
        lines = [line for line in out.splitlines() if "verified teacher samples" in line or "student after" in line]
        runs.append([line.split(" (")[0] for line in lines])  # without the wall time
    assert len(runs[0]) == 2 and runs[0] == runs[1]
    weights = [(tmp_path / f"run{i}" / "model.safetensors").read_bytes() for i in range(2)]
    assert weights[0] == weights[1]
