"""Every example script and notebook run as a newcomer runs it: the toy world at its defaults (a script with no flag,
a notebook top to bottom), greedy pass@1 of the student on its held-out problems before and after training (what it
prints), and the wall time. No example may leave the student worse than it found it.

    python benchmarks/examples_defaults.py               # 7 scripts and 5 notebooks, one after another (~1 h, 2 cores)
    python benchmarks/examples_defaults.py --examples gkd tsd_kd notebooks/vcrd
    python benchmarks/examples_defaults.py --table       # the markdown table of the CSV

Rows are appended as each example ends, the scripts' to `results/examples_defaults.csv` and the notebooks' to
`results/notebooks_defaults.csv`; each CSV is fingerprinted (the sources that set the defaults and the toy models), so
a rerun after a change of them refuses to mix rows (`--overwrite` starts afresh).
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
SCRIPTS = ["standard_kd", "gkd", "gen_ssd", "tsd_kd", "vcrd", "cotd_po", "brts"]
NOTEBOOKS = [f"notebooks/{name}" for name in ("gen_ssd", "tsd_kd", "vcrd", "cotd_po", "brts")]
EXAMPLES = SCRIPTS + NOTEBOOKS
FIELDS = ["example", "before", "after", "change", "eval_n", "seconds", "toy_settings"]
SCORE = re.compile(r"student (before|after)[^:]*: greedy pass@1 ([0-9.]+) on (\d+) problems")
NOTEBOOK_SCORE = re.compile(r"student before: ([0-9.]+)\s+after[^:]*: ([0-9.]+)")


def sources_digest() -> str:
    """Hash of the code that sets the examples' defaults: the scripts, the configs, the toy budgets."""
    package = ROOT / "trl_reasoning_distill"
    files = sorted([*package.glob("scripts/*.py"), *package.glob("**/config.py"), package / "kd_config.py",
                    package / "toy_recipes.py", *ROOT.glob("examples/notebooks/*.ipynb")])
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


def run_notebook(name: str, workdir: Path) -> dict:
    """Execute `examples/<name>.ipynb` top to bottom as committed; returns before, after and the seconds it took."""
    import nbclient
    import nbformat

    began = time.time()
    notebook = nbformat.read(ROOT / "examples" / f"{name}.ipynb", as_version=4)
    nbclient.NotebookClient(notebook, timeout=3600, kernel_name="python3",
                            resources={"metadata": {"path": str(workdir)}}).execute()
    printed = "".join(out.get("text", "") for cell in notebook.cells if cell.cell_type == "code"
                      for out in cell.outputs if out.get("output_type") == "stream")
    before, after = map(float, NOTEBOOK_SCORE.findall(printed)[-1])
    eval_n = re.search(r"^n_test = (\d+)", "".join(c.source for c in notebook.cells), re.MULTILINE).group(1)
    toy = next((line for line in printed.splitlines() if "paper" in line and "default" in line), "")
    return {"before": before, "after": after, "change": after - before, "eval_n": int(eval_n),
            "seconds": time.time() - began, "toy_settings": toy}


def table(paths: list[Path]) -> str:
    rows = [row for path in paths if path.exists() for row in csv.DictReader(path.open())]
    lines = ["| example (defaults) | before | after | change | held-out problems | wall s |",
             "| --- | --- | --- | --- | --- | --- |"]
    for row in rows:
        path = f"examples/{row['example']}" + (".ipynb" if row["example"].startswith("notebooks/") else ".py")
        lines.append(f"| `{path}` | {float(row['before']):.3f} | {float(row['after']):.3f} | "
                     f"{100 * float(row['change']):+.1f} pts | {row['eval_n']} | {float(row['seconds']):.0f} |")
    return "\n".join(lines)


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--examples", nargs="+", default=EXAMPLES, choices=EXAMPLES)
    parser.add_argument("--out", type=Path, default=None, help="one CSV for every row (default: the two above)")
    parser.add_argument("--table", action="store_true", help="print the table of --out and exit")
    parser.add_argument("--overwrite", action="store_true", help="delete --out and start afresh")
    args = parser.parse_args(argv)
    outs = [args.out] if args.out else [RESULTS / "examples_defaults.csv", RESULTS / "notebooks_defaults.csv"]
    if not args.table:
        settings, done = {"sources": sources_digest(), **toy_identity()}, {}
        for name in args.examples:
            out = args.out or outs[name in NOTEBOOKS]
            if out not in done:
                done[out] = {row["example"] for row in finished_rows(out, FIELDS, settings, args.overwrite)}
            if name in done[out]:
                continue
            with tempfile.TemporaryDirectory() as workdir:
                run = run_notebook if name in NOTEBOOKS else run_example
                row = append_row(out, FIELDS, {"example": name, **run(name, Path(workdir))})
            print(f"{name:<12} {row['before']:.3f} -> {row['after']:.3f} ({row['seconds']:.0f} s)", flush=True)
    print(table(outs))


if __name__ == "__main__":
    main()
