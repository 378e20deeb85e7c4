"""`make demo` / `trl-distill demo`: the two baselines trained live on the toy world, then every method as the
committed reproduction measured it (about 4 min on 2 CPU cores).

Standard KD (SFT on verified teacher samples, 300 optimizer steps of batch 16) and GKD (on-policy, 100 steps) are
trained from the cold-started toy student with `trl_reasoning_distill.reproduce` (its docstring defines the budget)
at the learning rates the reproduction's sweep chose, and scored on 300 easy and 300 hard held-out problems and 300
validation problems: both lift the student well above the cold start. The methods need the reproduction's budgets
(500 SFT-type / 200 on-policy steps, 3 seeds, about an hour), so the demo then prints the committed reproduction's
table and each method's paired difference to its paper's baseline (`benchmarks/results/reproduce.csv`).

The demo's rows go to `runs/demo/reproduce.csv` (a stopped demo resumes; a demo under other settings refuses to
resume it, naming what differs, and `--overwrite` starts afresh) and its bar chart beside it. Any `reproduce` option
overrides these, e.g. `trl-distill demo --methods GKD TSD-KD` trains TSD-KD live beside GKD.
"""

import os
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_HUB_DISABLE_TELEMETRY", "1")

# Ours: the shortest budgets at which both baselines clearly beat the cold start (benchmarks/results/demo.csv).
DEMO = {"seeds": [0], "steps": 100, "sft_steps": 300, "n_test": 300, "sweep": False,
        "methods": ["Standard KD", "GKD"], "out": Path("runs/demo/reproduce.csv")}
COMMITTED = Path(__file__).resolve().parents[1] / "benchmarks" / "results" / "reproduce.csv"


def main(argv: list[str] | None = None) -> list[dict]:
    import csv

    from .reproduce import main as reproduce
    from .reproduce_report import gains, read_problems, table

    rows = reproduce(argv, description=__doc__, **DEMO)
    if not COMMITTED.exists():
        print(f"\n(The committed reproduction, {COMMITTED}, is not here: run `python benchmarks/reproduce.py` in a "
              "clone of the repository for every method.)")
        return rows
    with COMMITTED.open(newline="") as handle:
        committed = list(csv.DictReader(handle))
    print(f"\nEvery method, from the committed reproduction ({COMMITTED.relative_to(COMMITTED.parents[2])}; "
          "`python benchmarks/reproduce.py` remakes it):\n\n" + table(committed) + "\n\n" +
          gains(committed, read_problems(COMMITTED)))
    return rows


if __name__ == "__main__":
    main()
