"""Every method and baseline on the toy world under one budget: the table and plot the README leads with.

The work is `trl_reasoning_distill.reproduce` (also `trl-distill reproduce`; `make demo` runs it at a small budget);
its docstring defines the budget. Rows go to `results/reproduce.csv` as each (method, seed) finishes, so a stopped
run resumes; the bar chart is `results/reproduce.png`.

    python benchmarks/reproduce.py                   # 7 methods + cold start + teacher, 3 seeds
    python benchmarks/reproduce.py --seeds 0 --steps 2 --n_test 4 --out /tmp/reproduce.csv   # smoke run
    python benchmarks/reproduce.py --table           # the tables of the CSV (and the PNG redrawn)
"""

from pathlib import Path

from trl_reasoning_distill.reproduce import main

if __name__ == "__main__":
    main(out=Path(__file__).parent / "results" / "reproduce.csv")
