"""`make demo` / `trl-distill demo`: the toy reproduction at a small budget, one seed, one table (~3 min on 2 CPU
cores).

Every method and baseline of `trl_reasoning_distill.reproduce` (its docstring defines the shared budget), trained
from the cold-started toy student for 16 optimizer steps of batch 16 and evaluated on 50 easy and 50 hard held-out
problems. The rows go to `runs/demo/reproduce.csv` (a stopped demo resumes; a demo under other settings refuses to
resume it, naming what differs, and `--overwrite` starts afresh) and the bar chart beside it. Any `reproduce` option
overrides these, e.g. `trl-distill demo --steps 64 --seeds 0 1 2`.
"""

import os
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_HUB_DISABLE_TELEMETRY", "1")

DEMO = {"seeds": [0], "steps": 16, "n_test": 50, "out": Path("runs/demo/reproduce.csv")}  # ours: a few minutes


def main(argv: list[str] | None = None) -> list[dict]:
    from .reproduce import main as reproduce

    return reproduce(argv, description=__doc__, **DEMO)


if __name__ == "__main__":
    main()
