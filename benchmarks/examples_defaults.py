"""Every example script run as a newcomer runs it, with no flag: the toy world at the script's defaults, greedy pass@1
of the student on the script's held-out problems before and after training (what the script prints), and the wall
time. No example may leave the student worse than it found it.

    python benchmarks/examples_defaults.py               # the seven examples, one after another (~20 min, 2 cores)
    python benchmarks/examples_defaults.py --examples gkd tsd_kd
    python benchmarks/examples_defaults.py --table       # the markdown table of the CSV

Rows are appended to `results/examples_defaults.csv` as each example ends; the CSV is fingerprinted (the scripts'
sources and the toy models), so a rerun after a change of defaults refuses to mix rows (`--overwrite` starts afresh).
"""

import argparse
import csv
import hashlib
import re
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from trl_reasoning_distill.results import append_row, finished_rows, toy_identity

ROOT = Path(__file__).resolve().parents[1]
RESULTS = Path(__file__).parent / "results"
EXAMPLES = ["standard_kd", "gkd", "gen_ssd", "tsd_kd", "vcrd", "cotd_po", "brts"]
FIELDS = ["example", "before", "after", "change", "eval_n", "seconds", "toy_settings"]
SCORE = re.compile(r"student (before|after)[^:]*: greedy pass@1 ([0-9.]+) on (\d+) problems")


def sources_digest() -> str:
    """Hash of the code that sets the examples' defaults: the scripts, the configs, the toy budgets."""
    package = ROOT / "trl_reasoning_distill"
    files = sorted([*package.glob("scripts/*.py"), *package.glob("**/config.py"), package / "kd_config.py",
                    package / "reproduce.py"])
    return hashlib.sha256(b"".join(f.read_bytes() for f in files)).hexdigest()[:16]


def run_example(name: str, workdir: Path) -> dict:
    """Run `examples/<name>.py` with no flag but its output folder; returns before, after, eval_n, the toy-settings
    line it printed, and the seconds it took."""
    began = time.time()
    done = subprocess.run([sys.executable, str(ROOT / "examples" / f"{name}.py"), "--output_dir", str(workdir)],
                          cwd=ROOT, capture_output=True, text=True)
    if done.returncode:
        raise RuntimeError(f"examples/{name}.py failed:\n{done.stderr[-3000:]}")
    scores = {kind: (float(value), int(n)) for kind, value, n in SCORE.findall(done.stdout)}
    toy = next((line for line in done.stdout.splitlines() if line.startswith("toy settings")), "")
    return {"before": scores["before"][0], "after": scores["after"][0], "eval_n": scores["after"][1],
            "change": scores["after"][0] - scores["before"][0], "seconds": time.time() - began,
            "toy_settings": toy.split("): ", 1)[-1].split("; a paper YAML")[0]}


def table(path: Path) -> str:
    rows = list(csv.DictReader(path.open()))
    lines = ["| example (defaults) | before | after | change | held-out problems | wall s |",
             "| --- | --- | --- | --- | --- | --- |"]
    for row in rows:
        lines.append(f"| `examples/{row['example']}.py` | {float(row['before']):.3f} | {float(row['after']):.3f} | "
                     f"{100 * float(row['change']):+.1f} pts | {row['eval_n']} | {float(row['seconds']):.0f} |")
    return "\n".join(lines)


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--examples", nargs="+", default=EXAMPLES, choices=EXAMPLES)
    parser.add_argument("--out", type=Path, default=RESULTS / "examples_defaults.csv")
    parser.add_argument("--table", action="store_true", help="print the table of --out and exit")
    parser.add_argument("--overwrite", action="store_true", help="delete --out and start afresh")
    args = parser.parse_args(argv)
    if not args.table:
        settings = {"sources": sources_digest(), **toy_identity()}
        done = {row["example"] for row in finished_rows(args.out, FIELDS, settings, args.overwrite)}
        for name in args.examples:
            if name in done:
                continue
            with tempfile.TemporaryDirectory() as workdir:
                row = append_row(args.out, FIELDS, {"example": name, **run_example(name, Path(workdir))})
            print(f"{name:<12} {row['before']:.3f} -> {row['after']:.3f} ({row['seconds']:.0f} s)", flush=True)
    print(table(args.out))


if __name__ == "__main__":
    main()
