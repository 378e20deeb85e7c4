"""Peak memory and forward+backward time of a distillation loss computed from hidden states, side by side:

    ours          `trl_reasoning_distill.chunked.chunked_distill_loss` (fused weighted sum, gradient in forward)
    gkd           TRL GKD: full logits `hidden @ W.T`, then `GKDTrainer.generalized_jsd_loss`, backward through both
    trl_chunked   TRL's own kernel `trl.kernels.chunked_divergence.ChunkedDivergenceFunction` (sum of its output)

All three compute the generalized JSD (beta = 0.5) between a student and a teacher from random hidden states
`[N, H]` and LM heads `[V, H]`; the gradient reaches the student's hidden states and head. Each (implementation, N, V)
runs in a fresh subprocess, so that its peak memory is its own: on CPU the increase of the peak resident set
(VmHWM, reset once the inputs exist) over the RSS at that point, on CUDA `torch.cuda.max_memory_allocated` over the
inputs. Time is the median wall time of the forward+backward calls after the warm-up. A case whose estimated peak
exceeds `--max-gib` is recorded as skipped; where GKD is skipped for some N, the largest N at which it fits is added.

    python benchmarks/losses.py            # CPU, float32, the issue's grid (about 1 h on 2 cores)
    python benchmarks/losses.py --quick    # a small grid, for a try
    python benchmarks/losses.py --device cuda --dtype bfloat16 --sizes 1024,4096,8192,16384,32768 --max-gib 70
    python benchmarks/losses.py --sizes 1024,1536 --vocabs 152064 --merge   # re-measure rows, keep the others

Writes `<out-dir>/losses.csv` and `<out-dir>/losses.png`, and prints the markdown table of benchmarks/README.md.
"""

import argparse
import csv
import json
import math
import os
import platform
import resource
import statistics
import subprocess
import sys
import time
from datetime import UTC, datetime
from importlib.metadata import version
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
IMPLS = ("ours", "gkd", "trl_chunked")
GKD_LOGIT_COPIES = 16  # [N, V] tensors alive at GKD's peak (measured on CPU, float32: 15.3 to 16.0)
OURS_BUFFER_BYTES = 4 * 2**26 * 4  # at most four [chunk, V] float32 buffers of 2**26 elements (fewer for small N)
TRL_SCRATCH_BYTES = 2 * 4096 * 32768 * 4  # two [4096, 32768] float32 tiles
FIELDS = ("impl", "N", "V", "H", "dtype", "device", "peak_mem_mib", "time_ms", "cpu_time_ms", "repeats", "loss",
          "status", "device_name", "threads", "torch", "trl", "git_commit", "timestamp")  # fmt: skip


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cpu", choices=["cpu", "cuda"])
    parser.add_argument("--dtype", default="float32", choices=["float32", "bfloat16"])
    parser.add_argument("--sizes", default=None, help="comma-separated N (tokens); default 1024,4096,8192")
    parser.add_argument("--vocabs", default=None, help="comma-separated V; default 32768,152064")
    parser.add_argument("--hidden", type=int, default=1024, help="H of student and teacher")
    parser.add_argument("--impls", default=",".join(IMPLS), help=f"comma-separated subset of {IMPLS}")
    parser.add_argument("--repeats", type=int, default=3, help="timed calls after the warm-up (median reported)")
    parser.add_argument("--warmup", type=int, default=1)
    parser.add_argument("--time-budget", type=float, default=300.0, help="s per case: fewer repeats if slower")
    parser.add_argument("--max-gib", type=float, default=18.0, help="skip cases whose estimated peak is larger")
    parser.add_argument("--quick", action="store_true", help="small grid: N 256,1024 and V 32768")
    parser.add_argument("--out-dir", default=str(REPO / "benchmarks" / "results"))
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--merge", action="store_true",
                        help="keep the rows of the existing CSV that this run does not re-measure")
    parser.add_argument("--case", default=None, help=argparse.SUPPRESS)  # worker mode: "impl,N,V"
    args = parser.parse_args(argv)
    args.sizes = [int(n) for n in (args.sizes or ("256,1024" if args.quick else "1024,4096,8192")).split(",")]
    args.vocabs = [int(v) for v in (args.vocabs or ("32768" if args.quick else "32768,152064")).split(",")]
    args.impls = args.impls.split(",")
    return args


# ---------------------------------------------------------------------------------------------------------------------
# Worker: one case in this process.
# ---------------------------------------------------------------------------------------------------------------------


def make_step(impl: str, beta: float = 0.5):
    """The forward+backward of `impl` as `step(student_hidden, student_head, teacher_hidden, teacher_head) -> loss`."""
    import torch

    if impl == "ours":
        sys.path.insert(0, str(REPO))
        from trl_reasoning_distill.chunked import chunked_distill_loss

        def step(hs, ws, ht, wt):
            loss = chunked_distill_loss(hs, ws, ht, wt, divergence="generalized_jsd", beta=beta)
            loss.backward()
            return loss

    elif impl == "gkd":
        from trl.experimental.gkd import GKDTrainer

        def step(hs, ws, ht, wt):
            student_logits = hs @ ws.T
            with torch.no_grad():
                teacher_logits = ht @ wt.T
            loss = GKDTrainer.generalized_jsd_loss(
                student_logits[None], teacher_logits[None], beta=beta, reduction="sum"
            )
            loss.backward()
            return loss

    elif impl == "trl_chunked":
        from trl.kernels.chunked_divergence import ChunkedDivergenceFunction

        def step(hs, ws, ht, wt):
            divergence, _ = ChunkedDivergenceFunction.apply(hs, ws, None, ht, wt, None, beta, 1.0)
            loss = divergence.sum()
            loss.backward()
            return loss

    else:
        raise ValueError(f"unknown implementation {impl!r}")
    return step


def make_inputs(n: int, vocab: int, hidden: int, dtype, device, seed: int):
    """Student and teacher hidden states and heads, logits of unit scale, made without large temporaries."""
    import torch

    generator = torch.Generator(device=device).manual_seed(seed)

    def randn(*shape, scale=1.0):
        return torch.randn(*shape, generator=generator, device=device, dtype=dtype).mul_(scale)

    student_hidden = randn(n, hidden).requires_grad_()
    student_head = randn(vocab, hidden, scale=2.0 / math.sqrt(hidden)).requires_grad_()
    return student_hidden, student_head, randn(n, hidden), randn(vocab, hidden, scale=2.0 / math.sqrt(hidden))


def _status_kib(field: str) -> int:
    """A `VmRSS` / `VmHWM` line of /proc/self/status, in KiB."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1])
    raise KeyError(field)


class PeakMemory:
    """
    Peak memory above the level when created. CUDA: `max_memory_allocated`. CPU (Linux): the peak resident set
    `VmHWM`, reset to the current RSS through /proc/self/clear_refs, so that nothing before (imports, input creation)
    counts; where that reset is refused, `ru_maxrss`, whose baseline is then the high-water mark so far.
    """

    def __init__(self, device: str):
        import torch

        self.torch, self.device = torch, device
        if device == "cuda":
            torch.cuda.synchronize()
            torch.cuda.reset_peak_memory_stats()
            self.base = torch.cuda.memory_allocated()
            return
        try:
            Path("/proc/self/clear_refs").write_text("5")
            self.base, self.read = _status_kib("VmRSS") * 1024, lambda: _status_kib("VmHWM") * 1024
        except OSError:
            self.read = lambda: resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
            self.base = self.read()

    def mib(self) -> float:
        if self.device == "cuda":
            return (self.torch.cuda.max_memory_allocated() - self.base) / 2**20
        return (self.read() - self.base) / 2**20


def timed_call(step, inputs, device: str) -> tuple[float, float, float]:
    """One forward+backward from fresh gradients: `(wall seconds, CPU seconds of this process, loss)`."""
    import torch

    for tensor in inputs[:2]:
        tensor.grad = None
    if device == "cuda":
        torch.cuda.synchronize()
    start, cpu_start = time.perf_counter(), time.process_time()
    loss = step(*inputs)
    if device == "cuda":
        torch.cuda.synchronize()
    return time.perf_counter() - start, time.process_time() - cpu_start, float(loss)


def run_case(args) -> dict:
    """Measure one case in this process (worker mode) and return its result."""
    import torch

    impl, n, vocab = args.case.split(",")
    dtype = getattr(torch, args.dtype)
    step = make_step(impl)
    inputs = make_inputs(int(n), int(vocab), args.hidden, dtype, args.device, args.seed)
    peak = PeakMemory(args.device)
    warmup = [timed_call(step, inputs, args.device)[0] for _ in range(args.warmup)]
    per_call = warmup[-1] if warmup else 0.0
    repeats = max(1, min(args.repeats, int(args.time_budget // per_call) if per_call > 0 else args.repeats))
    results = [timed_call(step, inputs, args.device) for _ in range(repeats)]
    return {
        "peak_mem_mib": round(peak.mib(), 1),
        "time_ms": round(1000 * statistics.median(wall for wall, _, _ in results), 1),
        "cpu_time_ms": round(1000 * statistics.median(cpu for _, cpu, _ in results), 1),
        "repeats": repeats,
        "loss": results[-1][2],
    }


# ---------------------------------------------------------------------------------------------------------------------
# Driver: the grid, in subprocesses.
# ---------------------------------------------------------------------------------------------------------------------


def estimated_gib(impl: str, n: int, vocab: int, hidden: int, dtype: str) -> float:
    """Rough peak estimate (inputs included) used to skip cases that cannot fit."""
    item = 4 if dtype == "float32" else 2
    inputs = 2 * vocab * hidden * item + 4 * vocab * hidden  # both heads, plus the float32 gradient of one
    extra = {
        "ours": min(OURS_BUFFER_BYTES, n * vocab * 4),  # the buffers hold at most one [N, V] float32 tensor
        "gkd": GKD_LOGIT_COPIES * n * vocab * item,
        "trl_chunked": 2 * TRL_SCRATCH_BYTES,
    }[impl]
    return (inputs + extra) / 2**30


def largest_fitting_n(vocab: int, args) -> int:
    """The largest N, a multiple of 512, at which GKD fits in `--max-gib` (0 if none)."""
    n = 0
    while estimated_gib("gkd", n + 512, vocab, args.hidden, args.dtype) <= args.max_gib:
        n += 512
    return n


def grid(args) -> list[tuple[int, int]]:
    """(N, V) pairs: the requested grid, plus for each V the largest N where GKD fits if it does not fit everywhere."""
    pairs = []
    for vocab in args.vocabs:
        sizes = set(args.sizes)
        fitting = largest_fitting_n(vocab, args)
        if "gkd" in args.impls and fitting and any(n > fitting for n in sizes) and fitting > min(sizes):
            sizes.add(fitting)
        pairs += [(n, vocab) for n in sorted(sizes)]
    return pairs


def run_subprocess(impl: str, n: int, vocab: int, args) -> dict:
    """Run one case in a fresh interpreter and parse its result; failures become a status."""
    command = [sys.executable, __file__, "--case", f"{impl},{n},{vocab}", "--device", args.device, "--dtype",
               args.dtype, "--hidden", str(args.hidden), "--repeats", str(args.repeats), "--warmup", str(args.warmup),
               "--time-budget", str(args.time_budget), "--seed", str(args.seed)]  # fmt: skip
    env = {**os.environ, "TRL_EXPERIMENTAL_SILENCE": "1", "HF_HUB_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false"}
    process = subprocess.run(command, capture_output=True, text=True, env=env, cwd=REPO)
    lines = [line for line in process.stdout.splitlines() if line.startswith("RESULT ")]
    if process.returncode == 0 and lines:
        return {**json.loads(lines[-1][len("RESULT ") :]), "status": "ok"}
    reason = "killed (out of memory?)" if process.returncode in (-9, 137) else process.stderr.strip()[-300:]
    return {"status": f"failed: {reason}".replace("\n", " ")}


def git_commit() -> str:
    """HEAD, with "-dirty" if the measured code has uncommitted changes; "uncommitted" without a commit."""
    try:
        head = subprocess.run(["git", "rev-parse", "HEAD"], capture_output=True, text=True, cwd=REPO, check=True)
        paths = ["trl_reasoning_distill/chunked.py", "benchmarks/losses.py"]
        changes = subprocess.run(
            ["git", "status", "--porcelain", "--", *paths], capture_output=True, text=True, cwd=REPO
        )
    except (OSError, subprocess.CalledProcessError):
        return "uncommitted"
    return head.stdout.strip() + ("-dirty" if changes.stdout.strip() else "")


def device_name(device: str) -> str:
    import torch

    if device == "cuda":
        return torch.cuda.get_device_name()
    models = [line.split(":", 1)[1].strip() for line in open("/proc/cpuinfo") if line.startswith("model name")]
    return f"{models[0] if models else platform.machine()}, {os.cpu_count()} cores"


def environment(args) -> dict:
    """Columns shared by every row: device, versions, commit, time."""
    import torch

    return {
        "dtype": args.dtype, "device": args.device, "device_name": device_name(args.device),
        "threads": torch.get_num_threads(), "torch": torch.__version__, "trl": version("trl"),
        "git_commit": git_commit(), "timestamp": datetime.now(UTC).isoformat(timespec="seconds"),
    }  # fmt: skip


def measure(args) -> list[dict]:
    """Every case of the grid, each in its own subprocess."""
    shared, rows = environment(args), []
    for n, vocab in grid(args):
        for impl in args.impls:
            need = estimated_gib(impl, n, vocab, args.hidden, args.dtype)
            if need > args.max_gib:
                result = {"status": f"skipped: needs ~{need:.0f} GiB > {args.max_gib:g} GiB"}
            else:
                result = run_subprocess(impl, n, vocab, args)
            rows.append({"impl": impl, "N": n, "V": vocab, "H": args.hidden, **shared, **result})
            print(f"{impl:12s} N={n:6d} V={vocab:6d}  " + json.dumps(result), flush=True)
    return rows


def _case_key(row: dict) -> tuple:
    return tuple(str(row[field]) for field in ("impl", "N", "V", "H", "dtype", "device"))


def merged_rows(path: Path, new_rows: list[dict]) -> list[dict]:
    """The rows of the CSV at `path` (if any), each replaced by the new row of the same case, then the new cases;
    old rows come back with numeric N, V, H and measurements."""
    if not path.exists():
        return new_rows
    with path.open(newline="") as handle:
        old_rows = [_typed(row) for row in csv.DictReader(handle)]
    fresh = {_case_key(row): row for row in new_rows}
    merged = [fresh.pop(_case_key(row), row) for row in old_rows]
    return merged + [row for row in new_rows if _case_key(row) in fresh]


def _typed(row: dict) -> dict:
    """A CSV row with its numeric columns as numbers (empty stays empty)."""
    ints, floats = ("N", "V", "H", "repeats", "threads"), ("peak_mem_mib", "time_ms", "cpu_time_ms", "loss")
    return {key: (int(value) if key in ints else float(value)) if value != "" and key in ints + floats else value
            for key, value in row.items()}


def write_csv(rows: list[dict], path: Path) -> None:
    with path.open("w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=FIELDS)
        writer.writeheader()
        writer.writerows({field: row.get(field, "") for field in FIELDS} for row in rows)


def plot(rows: list[dict], path: Path, title: str) -> None:
    """Peak memory and time against N, one line per implementation and vocabulary (measured cases only)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    figure, axes = plt.subplots(1, 2, figsize=(12, 4.5))
    for (key, label), axis in zip((("peak_mem_mib", "peak memory (MiB)"), ("time_ms", "fwd+bwd time (ms)")), axes):
        for impl, color in zip(IMPLS, ("tab:green", "tab:red", "tab:blue")):
            for vocab, style in zip(sorted({row["V"] for row in rows}), ("-o", "--s", ":^")):
                points = [
                    (r["N"], r[key]) for r in rows if r["impl"] == impl and r["V"] == vocab and r["status"] == "ok"
                ]
                if points:
                    axis.plot(*zip(*sorted(points)), style, color=color, label=f"{impl}, V={vocab}")
        axis.set(xscale="log", yscale="log", xlabel="N (tokens)", ylabel=label)
        axis.grid(True, which="both", alpha=0.3)
    axes[0].legend(fontsize=8)
    figure.suptitle(title)
    figure.tight_layout()
    figure.savefig(path, dpi=120)


def markdown_table(rows: list[dict]) -> str:
    """One line per (V, N): each implementation's peak memory, wall time and CPU time, and our ratios to the others."""

    def cell(row, key):
        return f"{row[key]:,.0f}" if row and row["status"] == "ok" else ("skipped" if row else "")

    def ratio(ours, other, key):
        ok = ours and other and ours["status"] == other["status"] == "ok"
        return f"{ours[key] / other[key]:.2f}" if ok else ""

    metrics = (("peak_mem_mib", "peak MiB"), ("time_ms", "wall ms"), ("cpu_time_ms", "CPU ms"))
    header = ["V", "N"] + [f"{label} {impl}" for _, label in metrics for impl in ("ours", "GKD", "TRL")]
    header += [f"{label} ours/{impl}" for _, label in metrics for impl in ("GKD", "TRL")]
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for vocab, n in sorted({(row["V"], row["N"]) for row in rows}):
        case = {row["impl"]: row for row in rows if row["V"] == vocab and row["N"] == n}
        ours, gkd, trl = case.get("ours"), case.get("gkd"), case.get("trl_chunked")
        cells = [f"{vocab:,}", f"{n:,}"] + [cell(row, key) for key, _ in metrics for row in (ours, gkd, trl)]
        cells += [ratio(ours, other, key) for key, _ in metrics for other in (gkd, trl)]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def check_losses_agree(rows: list[dict]) -> None:
    """The three implementations compute the same loss: warn loudly if they do not."""
    for vocab, n in sorted({(row["V"], row["N"]) for row in rows}):
        losses = [row["loss"] for row in rows if row["V"] == vocab and row["N"] == n and row["status"] == "ok"]
        if losses and max(losses) - min(losses) > 1e-3 * max(abs(x) for x in losses) + 1e-3:
            print(f"WARNING: the losses disagree at N={n}, V={vocab}: {losses}", flush=True)


def main(argv=None) -> list[dict]:
    args = parse_args(argv)
    if args.case is not None:
        print("RESULT " + json.dumps(run_case(args)), flush=True)
        return []
    out_dir = Path(args.out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    rows = measure(args)
    check_losses_agree(rows)
    if args.merge:
        rows = merged_rows(out_dir / "losses.csv", rows)
    write_csv(rows, out_dir / "losses.csv")
    title = f"GJSD loss from hidden states, H={args.hidden}, {args.dtype}, {rows[0]['device_name'] if rows else ''}"
    plot(rows, out_dir / "losses.png", title)
    print(markdown_table(rows))
    return rows


if __name__ == "__main__":
    main()
