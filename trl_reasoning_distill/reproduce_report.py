"""Reports of the toy reproduction (`reproduce.py`): the learning rate each method trains at (chosen on validation),
the table over seeds, each method's paired difference to its paper's baseline with a 95 % bootstrap interval, and
the bar chart. Pure functions of the CSV rows and the per-problem results beside them.
"""

import json
import statistics
from collections import defaultdict
from pathlib import Path

from .results import mean_std

COLD_START, TEACHER = "student (cold start)", "teacher"
STANDARD_KD, GKD, GEN_SSD, TSD_KD, VCRD, COTD_PO, BRTS = (
    "Standard KD", "GKD", "Gen-SSD", "TSD-KD", "VCRD", "CoTD-PO", "BRTS")
METHODS = [STANDARD_KD, GKD, GEN_SSD, TSD_KD, VCRD, COTD_PO, BRTS]
BASELINE = {  # the baselines are measured against the cold start; each method against its paper's baseline
    STANDARD_KD: COLD_START, GKD: COLD_START,
    GEN_SSD: STANDARD_KD, TSD_KD: GKD, VCRD: GKD, COTD_PO: STANDARD_KD, BRTS: GKD,
}
PAPER_GAIN = {  # the paper's headline gain over that baseline (Table 1; BRTS: Table 2); a different task and scale
    GEN_SSD: "+5.9, mean of 5 math benchmarks (QwQ-32B -> Qwen2.5-Math-1.5B)",
    TSD_KD: "+8.0 MATH, GKD beta 0.9 (Qwen2.5-14B -> 1.5B)",
    VCRD: "+2.2 / +3.1 mean pass@1 (Qwen2-Math / Qwen2.5-Math 7B -> 1.5B)",
    COTD_PO: "+35.2 AlpacaEval 2 LC over CoT fine-tuning (Llama-3.1-8B)",
    BRTS: "+3.3 AIME25 (N = 2 + Tier 2; R1-Distill-1.5B)",
}
SPLITS = {"easy": (2, 3), "hard": (4, 6)}  # operands per held-out test problem (BRTS study's split)
VALIDATION = (2, 6)  # operands of the validation problems that choose the learning rate: the training prompts' range
METRICS = ["val_greedy", *(f"{split}_greedy" for split in SPLITS)]
BOOTSTRAP_SAMPLES = 2000


def problems_path(out: Path) -> Path:
    """The per-problem results beside a reproduction CSV: one JSON line per run, a 0/1 string per split."""
    return Path(out).with_suffix(".problems.jsonl")


def rate(row: dict) -> float:
    return float(row["learning_rate"] or 0.0)


def chosen_rates(rows: list[dict]) -> dict[str, float]:
    """Each method's learning rate: with one rate in `rows`, that one; with several, the one of best mean validation
    greedy accuracy over the seeds that ran every rate (the sweep's seed); a tie keeps the first rate run."""
    by_method: dict[str, dict[float, dict[int, float]]] = defaultdict(dict)
    for row in rows:
        by_method[row["method"]].setdefault(rate(row), {})[int(row["seed"])] = float(row["val_greedy"] or "nan")
    chosen = {}
    for method, by_rate in by_method.items():
        shared = set.intersection(*(set(seeds) for seeds in by_rate.values()))
        chosen[method] = max(by_rate, key=lambda lr: statistics.mean(by_rate[lr][s] for s in shared) if shared
                             else -1.0)
    return chosen


def final_rows(rows: list[dict]) -> list[dict]:
    """The rows of each method at its chosen learning rate (the sweep's other rates left out)."""
    chosen = chosen_rates(rows)
    return [r for r in rows if rate(r) == chosen[r["method"]]]


def values(rows: list[dict], method: str, metric: str) -> list[float]:
    return [float(r[metric]) for r in rows if r["method"] == method and r[metric] != ""]


def table(rows: list[dict]) -> str:
    """Markdown: per method at its chosen learning rate, each accuracy as mean ± sample std over seeds."""
    rows, chosen = final_rows(rows), chosen_rates(rows)
    lines = ["| method | learning rate | seeds | validation pass@1 | easy pass@1 | hard pass@1 | optimizer steps | "
             "teacher tokens generated | examples | training s |", "|" + " --- |" * 10]
    for method in [COLD_START, *METHODS, TEACHER]:
        group = [r for r in rows if r["method"] == method]
        if not group:
            continue
        cells = [mean_std(values(rows, method, m)) for m in METRICS]
        extra = [group[0]["steps"], f"{statistics.mean(float(r['teacher_tokens'] or 0) for r in group):,.0f}",
                 f"{statistics.mean(float(r['examples']) for r in group):,.0f}",
                 f"{statistics.mean(float(r['train_seconds']) for r in group):.0f}"]
        lr = f"{chosen[method]:g}" if chosen[method] else "-"
        lines.append(f"| {method} | {lr} | {len(group)} | " + " | ".join(cells + extra) + " |")
    return "\n".join(lines)


def sweep_table(rows: list[dict]) -> str:
    """Markdown: validation greedy accuracy of every learning rate tried, per method (the sweep's seed)."""
    chosen = chosen_rates(rows)
    lines = ["| method | learning rate | seed | validation pass@1 | chosen |", "| --- | --- | --- | --- | --- |"]
    for method in METHODS:
        tried = sorted({rate(r) for r in rows if r["method"] == method})
        if len(tried) < 2:
            continue
        seed = min(int(r["seed"]) for r in rows if r["method"] == method and rate(r) != chosen[method])
        for lr in tried:
            row = next(r for r in rows if r["method"] == method and rate(r) == lr and int(r["seed"]) == seed)
            lines.append(f"| {method} | {lr:g} | {seed} | {float(row['val_greedy']):.3f} | "
                         f"{'yes' if lr == chosen[method] else ''} |")
    return "\n".join(lines)


def read_problems(out: Path) -> dict[tuple[str, int, float], dict[str, str]]:
    """(method, seed, learning rate) -> split -> 0/1 string, from the file beside the CSV `out`."""
    path = problems_path(out)
    if not path.exists():
        return {}
    records = [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
    return {(r["method"], int(r["seed"]), float(r["learning_rate"])): r["correct"] for r in records}


def paired_bootstrap(method_SN, baseline_SN, samples: int = BOOTSTRAP_SAMPLES, seed: int = 0):
    """Mean paired difference of two 0/1 arrays `[seeds, problems]` (row s of both: the same seed's run; the same
    problems in the same order) and its 95 % percentile interval, resampling seeds, then problems within each
    drawn seed, with replacement."""
    import numpy as np

    diff_SN = np.asarray(method_SN, dtype=np.float64) - np.asarray(baseline_SN, dtype=np.float64)
    n_seeds, n_problems = diff_SN.shape
    rng = np.random.default_rng(seed)
    seeds_BS = rng.integers(0, n_seeds, size=(samples, n_seeds))
    problems_BSN = rng.integers(0, n_problems, size=(samples, n_seeds, n_problems))
    means_B = diff_SN[seeds_BS[..., None], problems_BSN].mean(axis=(1, 2))
    low, high = np.percentile(means_B, [2.5, 97.5])
    return float(diff_SN.mean()), float(low), float(high)


def differences(rows: list[dict], problems: dict) -> list[dict]:
    """Per method with a baseline (both at their chosen learning rates): the seeds paired, and per split the mean
    paired difference in greedy pass@1 with its 95 % interval. The cold start (one model) pairs with every seed."""
    chosen = chosen_rates(rows)
    out = []
    for method, base in BASELINE.items():
        if method not in chosen or base not in chosen:
            continue
        seeds = sorted(int(r["seed"]) for r in final_rows(rows) if r["method"] == method)
        base_seed = {s: (s if base != COLD_START else 0) for s in seeds}
        keys = [((method, s, chosen[method]), (base, base_seed[s], chosen[base])) for s in seeds]
        keys = [(m, b) for m, b in keys if m in problems and b in problems]
        if not keys:
            continue
        entry = {"method": method, "baseline": base, "seeds": [m[1] for m, _ in keys]}
        for split in SPLITS:
            method_SN = [[int(c) for c in problems[m][split]] for m, _ in keys]
            base_SN = [[int(c) for c in problems[b][split]] for _, b in keys]
            entry[split] = paired_bootstrap(method_SN, base_SN)
        out.append(entry)
    return out


def _cell(mean: float, low: float, high: float) -> str:
    return f"{100 * mean:+.1f} [{100 * low:+.1f}, {100 * high:+.1f}]"


def verdict(low: float, high: float) -> str:
    """`ahead` or `behind` when the 95 % interval excludes zero (resolved), else `level` (not resolved)."""
    return "ahead" if low > 0 else "behind" if high < 0 else "level"


def gains(rows: list[dict], problems: dict) -> str:
    """Markdown: each method's paired difference to its baseline in points of greedy pass@1, 95 % interval in
    brackets, the verdict per split, beside the paper's reported gain."""
    lines = ["| method | baseline | seeds | easy: difference [95 % CI] | hard: difference [95 % CI] | verdict "
             "(easy / hard) | paper's gain (paper scale) |", "| --- | --- | --- | --- | --- | --- | --- |"]
    for d in differences(rows, problems):
        verdicts = " / ".join(verdict(*d[split][1:]) for split in SPLITS)
        lines.append(f"| {d['method']} | {d['baseline']} | {len(d['seeds'])} | {_cell(*d['easy'])} | "
                     f"{_cell(*d['hard'])} | {verdicts} | {PAPER_GAIN.get(d['method'], '-')} |")
    return "\n".join(lines)


def plot(rows: list[dict], path: Path) -> None:
    """Bar chart: greedy pass@1 per method on each test split, mean over seeds; error bars (sample std over seeds)
    only where a method ran more than one seed."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = final_rows(rows)
    methods = [m for m in [COLD_START, *METHODS] if any(r["method"] == m for r in rows)]
    fig, axes = plt.subplots(1, len(SPLITS), figsize=(11, 3.8), sharey=False)
    for ax, split in zip(axes, SPLITS):
        for i, method in enumerate(methods):
            vals = values(rows, method, f"{split}_greedy")
            ax.bar(i, statistics.mean(vals), yerr=statistics.stdev(vals) if len(vals) > 1 else None, capsize=3,
                   color="0.6" if method in (COLD_START, STANDARD_KD, GKD) else "tab:blue")
        lo, hi = SPLITS[split]
        ax.set_title(f"{split}: {lo}-{hi} operands")
        ax.set_xticks(range(len(methods)), methods, rotation=35, ha="right")
        ax.set_ylabel("greedy pass@1 (held out)")
    seeds = max(len({r["seed"] for r in rows if r["method"] == m}) for m in methods)
    spread = "mean ± std over seeds" if seeds > 1 else "one seed"
    fig.suptitle(f"Toy reproduction: same student, same budget per family ({spread}; grey = baselines)")
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
