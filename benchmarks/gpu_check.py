r"""One GPU check in under 8 minutes on one H100, written to one CSV:

    tests        the `gpu`-marked tests (pytest -m gpu on the test files that have them)
    losses       benchmarks/losses.py in bf16 (ours vs GKD full logits vs TRL's chunked kernel), V = 152,064, N up to
                 32K, one losses.py run per N, so a run cut short by the budget loses one N only
    throughput   training tokens/s of our `KDTrainer` and of TRL's `DistillationTrainer` on a randomly initialised
                 Qwen2.5-1.5B-shaped student (fp32 weights, bf16 autocast) and Qwen2.5-7B-shaped teacher (bf16),
                 configs written below (no download), both with the student's 151,936 vocabulary rows (TRL refuses
                 unequal rows) and a word-level tokenizer of that size, sdpa (flash-attn when installed), the same
                 data, seeds and settings for both: off-policy (KDTrainer `lmbda=0`; DistillationTrainer, which
                 always samples, is handed each row's completion in place of a sample), then on-policy with short
                 samples (`--max-new-tokens`)

Each part runs in subprocesses under its own time budget (`--tests-budget`, `--losses-budget`,
`--throughput-budget`; the throughput cases also under `--case-timeout` each); a part or case that fails or runs out
of time is a row with that status, never a crash. The CSV is rewritten after every part, so a run killed from outside
keeps what was done. Columns: part, case, setting, metric, value, status, then device, python, torch, transformers,
trl, git_commit, timestamp (the same in every row).

On the GPU machine (CPython 3.12, torch/transformers/accelerate/peft installed, no internet), with the wheels of
`bash benchmarks/gpu_wheels.sh` in .whl/ carried along (add `--git-commit <sha>` where the tree travels without .git):

    pip install -q --no-index --no-deps --target /tmp/site .whl/*.whl && \
        PYTHONPATH=/tmp/site python benchmarks/gpu_check.py --out $OUT/gpu_check.csv --logs $OUT/logs

`--dry-run` runs every part at toy size on the CPU (tiny Qwen2 configs, a tiny loss grid): what tests/test_gpu_check.py
runs. `make gpu-check` runs the full check with the virtualenv's Python.
"""

import argparse
import csv
import gc
import json
import os
import platform
import signal
import statistics
import subprocess
import sys
import tempfile
import time
import xml.etree.ElementTree as ET
from dataclasses import asdict, dataclass
from datetime import UTC, datetime
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:  # the package is imported from the working tree
    sys.path.insert(0, str(REPO))

FIELDS = ("part", "case", "setting", "metric", "value", "status", "device", "python", "torch", "transformers", "trl",
          "git_commit", "timestamp")  # fmt: skip
THROUGHPUT_CASES = (("kd_trainer", "off_policy"), ("trl_distillation", "off_policy"),
                    ("kd_trainer", "on_policy"), ("trl_distillation", "on_policy"))  # fmt: skip
SPECIAL_TOKENS = ("<|endoftext|>", "<|im_end|>", "<|im_start|>")
CHAT_TEMPLATE = (
    "{% for message in messages %}<|im_start|>{{ message['role'] }} {{ message['content'] }}<|im_end|>{% endfor %}"
    "{% if add_generation_prompt %}<|im_start|>assistant {% endif %}"
)
ENV = {"TRL_EXPERIMENTAL_SILENCE": "1", "HF_HUB_OFFLINE": "1", "HF_HUB_DISABLE_TELEMETRY": "1",
       "TOKENIZERS_PARALLELISM": "false", "PYTHONUNBUFFERED": "1"}  # fmt: skip


# ---------------------------------------------------------------------------------------------------------------------
# Model shapes: Qwen2.5-1.5B and Qwen2.5-7B (their config.json), and the toy shapes of the dry run.
# ---------------------------------------------------------------------------------------------------------------------


def qwen_config(size: str, vocab_size: int | None = None):
    """The `Qwen2Config` of Qwen2.5-1.5B (`"1.5b"`), Qwen2.5-7B (`"7b"`), or a tiny one (`"tiny-student"`,
    `"tiny-teacher"`) for the dry run; `vocab_size` overrides the vocabulary rows."""
    from transformers import Qwen2Config

    shapes = {  # hidden, intermediate, layers, heads, kv heads, vocab, tied embeddings
        "1.5b": (1536, 8960, 28, 12, 2, 151936, True),
        "7b": (3584, 18944, 28, 28, 4, 152064, False),
        "tiny-student": (64, 128, 2, 4, 2, 512, True),
        "tiny-teacher": (96, 192, 2, 4, 2, 512, False),
    }
    hidden, intermediate, layers, heads, kv_heads, vocab, tied = shapes[size]
    return Qwen2Config(
        hidden_size=hidden, intermediate_size=intermediate, num_hidden_layers=layers, num_attention_heads=heads,
        num_key_value_heads=kv_heads, vocab_size=vocab_size or vocab, tie_word_embeddings=tied,
        max_position_embeddings=32768, rope_theta=1000000.0, rms_norm_eps=1e-6, hidden_act="silu",
        bos_token_id=None, eos_token_id=1, pad_token_id=0,
    )  # fmt: skip


def parameter_count(config) -> int:
    """Parameters of a `Qwen2ForCausalLM` built from `config` on the meta device (nothing allocated); tied
    embeddings count once."""
    import torch
    from transformers import Qwen2ForCausalLM

    with torch.device("meta"):
        model = Qwen2ForCausalLM(config)
    return sum(parameter.numel() for parameter in model.parameters())


# ---------------------------------------------------------------------------------------------------------------------
# Settings of a run: the full check, or the toy dry run.
# ---------------------------------------------------------------------------------------------------------------------


@dataclass
class ThroughputSettings:
    device: str
    student: str
    teacher: str
    vocab_size: int  # tokenizer length = rows of both models (DistillationTrainer needs equal rows)
    batch_size: int
    prompt_tokens: int
    completion_tokens: int
    max_new_tokens: int
    warmup_steps: int
    timed_steps: int
    on_policy_warmup_steps: int
    on_policy_timed_steps: int
    learning_rate: float = 1e-5
    beta: float = 0.5
    seed: int = 0


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", default=str(REPO / "benchmarks" / "results" / "gpu_check.csv"))
    parser.add_argument("--dry-run", action="store_true", help="every part at toy size on the CPU")
    parser.add_argument("--parts", default="tests,losses,throughput")
    parser.add_argument("--tests-budget", type=float, default=50.0, help="seconds")
    parser.add_argument("--losses-budget", type=float, default=190.0, help="seconds")
    parser.add_argument("--throughput-budget", type=float, default=200.0, help="seconds")
    parser.add_argument("--total-budget", type=float, default=460.0, help="seconds for all parts together")
    parser.add_argument("--attn", default="auto", choices=["auto", "sdpa", "flash_attention_2"],
                        help="attention of the throughput models; auto: flash-attn when installed, else sdpa")
    parser.add_argument("--case-timeout", type=float, default=110.0, help="seconds per throughput case")
    parser.add_argument("--loss-sizes", default=None, help="N of losses.py, one run each (default 4096..32768)")
    parser.add_argument("--loss-vocab", type=int, default=None, help="V of losses.py (default 152064)")
    parser.add_argument("--loss-max-gib", type=float, default=70.0)
    parser.add_argument("--batch-size", type=int, default=None, help="throughput rows per step (default 4)")
    parser.add_argument("--prompt-tokens", type=int, default=None, help="default 256")
    parser.add_argument("--completion-tokens", type=int, default=None, help="default 768")
    parser.add_argument("--max-new-tokens", type=int, default=None, help="on-policy sample length (default 64)")
    parser.add_argument("--logs", default=None, help="folder for the logs and losses.py's CSVs (default: temporary)")
    parser.add_argument("--git-commit", default=None, help="commit to record where the tree has no .git")
    parser.add_argument("--throughput-worker", default=None, help=argparse.SUPPRESS)  # worker mode: a JSON spec file
    args = parser.parse_args(argv)
    args.parts = [part for part in args.parts.split(",") if part]
    unknown = set(args.parts) - {"tests", "losses", "throughput"}
    if unknown:
        parser.error(f"unknown parts {sorted(unknown)}")
    return args


def loss_settings(args) -> dict:
    if args.dry_run:
        base = {"device": "cpu", "sizes": [64], "vocab": 512, "hidden": 32, "repeats": 1, "warmup": 0}
    else:
        base = {"device": "cuda", "sizes": [4096, 8192, 16384, 32768], "vocab": 152064, "hidden": 1024,
                "repeats": 3, "warmup": 1}  # fmt: skip
    if args.loss_sizes:
        base["sizes"] = [int(n) for n in args.loss_sizes.split(",")]
    base["vocab"] = args.loss_vocab or base["vocab"]
    return base


def throughput_settings(args) -> ThroughputSettings:
    if args.dry_run:
        settings = ThroughputSettings("cpu", "tiny-student", "tiny-teacher", 512, 2, 8, 16, 4, 1, 2, 1, 1)
    else:
        settings = ThroughputSettings("cuda", "1.5b", "7b", 151936, 4, 256, 768, 64, 2, 6, 1, 3)
    for field in ("batch_size", "prompt_tokens", "completion_tokens", "max_new_tokens"):
        if getattr(args, field) is not None:
            setattr(settings, field, getattr(args, field))
    return settings


# ---------------------------------------------------------------------------------------------------------------------
# Subprocesses under a deadline.
# ---------------------------------------------------------------------------------------------------------------------


def run_with_timeout(command: list[str], timeout: float, log_path: Path, env: dict | None = None):
    """Run `command` in its own process group with stdout+stderr to `log_path`; kill the whole group (the
    subprocesses it started included) after `timeout` seconds. Returns (exit code or None on timeout, log tail)."""
    with log_path.open("w") as log:
        process = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT, cwd=REPO, start_new_session=True,
                                   env={**os.environ, **ENV, **(env or {})})  # fmt: skip
        try:
            code = process.wait(timeout=max(timeout, 0.1))
        except subprocess.TimeoutExpired:
            kill_group(process)
            code = None
    return code, log_path.read_text(errors="replace")[-2000:]


def kill_group(process: subprocess.Popen) -> None:
    try:
        os.killpg(process.pid, signal.SIGKILL)
    except ProcessLookupError:
        pass
    process.wait()


def one_line(text: str, limit: int = 300) -> str:
    return " ".join(text.split())[-limit:]


# ---------------------------------------------------------------------------------------------------------------------
# Part (a): the gpu tests.
# ---------------------------------------------------------------------------------------------------------------------


def gpu_test_files() -> list[str]:
    """Test files that hold a `gpu`-marked test (so that files needing packages the GPU machine lacks stay out)."""
    return sorted(str(path.relative_to(REPO)) for path in (REPO / "tests").glob("test_*.py")
                  if "mark.gpu" in path.read_text())  # fmt: skip


def part_tests(args, budget: float, work: Path) -> list[dict]:
    files = gpu_test_files()
    if not files:
        return [row("tests", "pytest -m gpu", "", "files", 0, "skipped: no gpu-marked tests")]
    report = work / "gpu_tests.xml"
    command = [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "-m", "gpu", f"--junitxml={report}",
               *files]  # fmt: skip
    hide_gpu = {"CUDA_VISIBLE_DEVICES": ""} if args.dry_run else None  # the rehearsal collects and skips them
    code, tail = run_with_timeout(command, budget, work / "gpu_tests.log", env=hide_gpu)
    setting = " ".join(files)
    if code is None:
        return [row("tests", "pytest -m gpu", setting, "seconds", round(budget, 1), f"timeout after {budget:.0f} s")]
    if not report.exists():
        return [row("tests", "pytest -m gpu", setting, "exit_code", code, f"failed: {one_line(tail)}")]
    suite = ET.parse(report).getroot()
    suite = suite if suite.tag == "testsuite" else suite.find("testsuite")
    counts = {key: int(suite.get(key, 0)) for key in ("tests", "failures", "errors", "skipped")}
    counts["passed"] = counts["tests"] - counts["failures"] - counts["errors"] - counts["skipped"]
    status = "ok" if code in (0, 5) else f"failed: exit {code}: {one_line(tail)}"
    rows = [row("tests", "pytest -m gpu", setting, key, counts[key], status)
            for key in ("passed", "failures", "errors", "skipped")]  # fmt: skip
    for case in suite.iter("testcase"):
        outcome = next((child.tag for child in case if child.tag in ("failure", "error", "skipped")), "passed")
        rows.append(row("tests", f"{case.get('classname')}::{case.get('name')}", "", "outcome", outcome,
                        "ok" if outcome in ("passed", "skipped") else outcome))  # fmt: skip
    return rows


# ---------------------------------------------------------------------------------------------------------------------
# Part (b): the loss benchmark, through losses.py's command line.
# ---------------------------------------------------------------------------------------------------------------------


def part_losses(args, budget: float, work: Path) -> list[dict]:
    settings, rows, deadline = loss_settings(args), [], time.monotonic() + budget
    for n in settings["sizes"]:
        setting = f"N={n} V={settings['vocab']} H={settings['hidden']} bfloat16"
        left = deadline - time.monotonic()
        if left < 5:
            rows += [row("losses", impl, setting, "time_ms", "", "not run: part budget spent")
                     for impl in ("ours", "gkd", "trl_chunked")]  # fmt: skip
            continue
        out_dir = work / f"losses_N{n}"
        command = [sys.executable, str(REPO / "benchmarks" / "losses.py"), "--device", settings["device"], "--dtype",
                   "bfloat16", "--sizes", str(n), "--vocabs", str(settings["vocab"]), "--hidden",
                   str(settings["hidden"]), "--repeats", str(settings["repeats"]), "--warmup",
                   str(settings["warmup"]), "--time-budget", "20", "--max-gib", str(args.loss_max_gib),
                   "--out-dir", str(out_dir)]  # fmt: skip
        code, tail = run_with_timeout(command, left, work / f"losses_N{n}.log")
        table = out_dir / "losses.csv"  # written before the plot, so it exists even where matplotlib is missing
        if table.exists():
            rows += loss_rows(list(csv.DictReader(table.open())))
        elif code is None:
            rows.append(row("losses", "all", setting, "seconds", round(left, 1), f"timeout after {left:.0f} s"))
        else:
            rows.append(row("losses", "all", setting, "exit_code", code, f"failed: {one_line(tail)}"))
    return rows


def loss_rows(cases: list[dict]) -> list[dict]:
    """Peak memory, time and loss of each implementation, then ours / theirs of memory and time."""
    rows, by_impl = [], {case["impl"]: case for case in cases}
    for case in cases:
        setting = f"N={case['N']} V={case['V']} H={case['H']} {case['dtype']}"
        status = case["status"]
        for metric in ("peak_mem_mib", "time_ms", "loss"):
            rows.append(row("losses", case["impl"], setting, metric, case[metric] if status == "ok" else "", status))
    ours = by_impl.get("ours")
    for other in ("gkd", "trl_chunked"):
        theirs = by_impl.get(other)
        if not (ours and theirs):
            continue
        setting = f"N={ours['N']} V={ours['V']} H={ours['H']} {ours['dtype']}"
        ok = ours["status"] == theirs["status"] == "ok"
        for metric in ("peak_mem_mib", "time_ms"):
            value = round(float(ours[metric]) / float(theirs[metric]), 4) if ok and float(theirs[metric]) else ""
            rows.append(row("losses", f"ours/{other}", setting, f"{metric}_ratio", value,
                            "ok" if value != "" else "not compared: a case did not run"))  # fmt: skip
    return rows


# ---------------------------------------------------------------------------------------------------------------------
# Part (c): training throughput, KDTrainer vs DistillationTrainer, in a worker process.
# ---------------------------------------------------------------------------------------------------------------------


def part_throughput(args, budget: float, work: Path) -> list[dict]:
    """Run the cases in a worker that builds the teacher once; a case that crashes the worker or exceeds
    `--case-timeout` is recorded as such and the worker restarts on the remaining cases while budget is left."""
    settings, deadline = throughput_settings(args), time.monotonic() + budget
    pending, rows = list(THROUGHPUT_CASES), []
    attempt = 0
    while pending:
        left = deadline - time.monotonic()
        if left < 10:
            rows += [throughput_row(c, s, settings, "tokens_per_s", "", "not run: part budget spent")
                     for c, s in pending]  # fmt: skip
            break
        attempt += 1
        results, spec_path = work / f"throughput_{attempt}.jsonl", work / f"throughput_{attempt}.json"
        spec_path.write_text(json.dumps({"settings": asdict(settings), "cases": pending, "results": str(results),
                                         "attn": args.attn}))  # fmt: skip
        log_path = work / f"throughput_{attempt}.log"
        done, status, ready = watch_worker([sys.executable, __file__, "--throughput-worker", str(spec_path)],
                                           results, log_path, left, args.case_timeout)  # fmt: skip
        for result in done:
            rows += result["rows"]
        pending = pending[len(done):]
        if pending and status is None:
            status = "failed: the worker ended before this case's result"
        if pending and not ready:  # the worker never got its models up: no case can run
            status = status.replace("failed: ", "failed: worker setup: ", 1)
            rows += [throughput_row(c, s, settings, "tokens_per_s", "", status) for c, s in pending]
            break
        if pending:  # the case in flight failed or timed out: record it, go on after it
            rows.append(throughput_row(*pending[0], settings, "tokens_per_s", "", status))
            pending = pending[1:]
    return rows


def watch_worker(command, results: Path, log_path: Path, budget: float, case_timeout: float):
    """Run the worker until it finishes, dies, exceeds `budget`, or spends more than `case_timeout` on one case
    (counted from its `ready` line or its previous result). Returns (finished case results, status of the case in
    flight or None, whether the worker got ready)."""
    start = time.monotonic()
    with log_path.open("w") as log:
        process = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT, cwd=REPO, start_new_session=True,
                                   env={**os.environ, **ENV})  # fmt: skip
        case_start, done, status = None, [], None
        while True:
            code = process.poll()
            lines = [json.loads(line) for line in results.read_text().splitlines()] if results.exists() else []
            if any(line.get("event") == "ready" for line in lines) and case_start is None:
                case_start = time.monotonic()
            finished = [line for line in lines if line.get("event") == "case"]
            if len(finished) > len(done):
                done, case_start = finished, time.monotonic()
            now = time.monotonic()
            if code is not None:
                if code != 0:
                    status = f"failed: worker exit {code}: {one_line(log_path.read_text(errors='replace'))}"
                break
            if now - start > budget:
                status = f"timeout: part budget ({budget:.0f} s left) spent"
            elif case_start is not None and now - case_start > case_timeout:
                status = f"timeout after {case_timeout:.0f} s"
            if status:
                kill_group(process)
                break
            time.sleep(0.5)
    return done, status, case_start is not None


def throughput_row(trainer: str, setting: str, settings: ThroughputSettings, metric: str, value, status: str) -> dict:
    describe = (f"{setting} student={settings.student} teacher={settings.teacher} batch={settings.batch_size} "
                f"prompt={settings.prompt_tokens} completion="
                f"{settings.max_new_tokens if setting == 'on_policy' else settings.completion_tokens} bf16")
    return row("throughput", trainer, describe, metric, value, status)


def throughput_worker(spec_path: str) -> None:
    """Worker mode: build tokenizer and teacher once, run each case, append one JSON line per case."""
    import torch

    spec = json.loads(Path(spec_path).read_text())
    settings, results = ThroughputSettings(**spec["settings"]), Path(spec["results"])
    from trl_reasoning_distill.kd_config import default_attn_implementation

    attn = spec["attn"] if spec["attn"] != "auto" else "sdpa"
    if spec["attn"] == "auto" and settings.device == "cuda":
        attn = default_attn_implementation()  # flash-attn where installed
    tokenizer = build_word_tokenizer(settings.vocab_size)
    teacher = build_random_model(settings.teacher, settings, torch.bfloat16, attn, seed=settings.seed + 1)
    teacher.requires_grad_(False)
    append_line(results, {"event": "ready", "attn_implementation": attn})
    for trainer_name, setting in spec["cases"]:
        try:
            metrics = run_case(trainer_name, setting, settings, tokenizer, teacher, attn)
            status = "ok"
        except Exception as error:  # recorded as the case's status; the next case still runs
            metrics, status = {}, f"failed: {type(error).__name__}: {one_line(str(error))}"
            print(f"{trainer_name} {setting}: {status}", flush=True)
        case_rows = [throughput_row(trainer_name, setting, settings, metric, value, status)
                     for metric, value in metrics.items()] or [
            throughput_row(trainer_name, setting, settings, "tokens_per_s", "", status)]  # fmt: skip
        append_line(results, {"event": "case", "rows": case_rows})
        gc.collect()
        if torch.cuda.is_available():
            torch.cuda.empty_cache()


def append_line(path: Path, record: dict) -> None:
    with path.open("a") as handle:
        handle.write(json.dumps(record) + "\n")
        handle.flush()
        os.fsync(handle.fileno())


def build_word_tokenizer(size: int):
    """A word-level tokenizer of exactly `size` tokens: the chat specials, the two roles, then `w5`, `w6`, ... one
    token each, so a text of k words is k tokens and student and teacher share it."""
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    words = [*SPECIAL_TOKENS, "user", "assistant"]
    vocab = {word: i for i, word in enumerate(words)}
    vocab.update({f"w{i}": i for i in range(len(words), size)})
    backend = Tokenizer(models.WordLevel(vocab=vocab, unk_token="<|endoftext|>"))
    backend.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    backend.add_special_tokens(list(SPECIAL_TOKENS))
    tokenizer = PreTrainedTokenizerFast(tokenizer_object=backend, eos_token="<|im_end|>", pad_token="<|endoftext|>",
                                        padding_side="left", model_max_length=32768)  # fmt: skip
    tokenizer.chat_template = CHAT_TEMPLATE
    return tokenizer


def build_random_model(size: str, settings: ThroughputSettings, dtype, attn: str, seed: int):
    """A randomly initialised Qwen2 model of shape `size`, made directly on the device; the vocabulary rows are the
    tokenizer's (TRL's DistillationTrainer refuses a student and teacher with different rows)."""
    import torch
    from transformers import AutoModelForCausalLM

    config = qwen_config(size, vocab_size=settings.vocab_size)
    config.eos_token_id, config.pad_token_id = SPECIAL_TOKENS.index("<|im_end|>"), 0
    torch.manual_seed(seed)
    with torch.device(settings.device):
        model = AutoModelForCausalLM.from_config(config, dtype=dtype, attn_implementation=attn)
    model.generation_config.eos_token_id, model.generation_config.pad_token_id = config.eos_token_id, 0
    return model


def make_rows(settings: ThroughputSettings, tokenizer, rows: int) -> list[dict]:
    """Random prompt and completion words of fixed lengths; `completion_ids` is the completion as tokens plus the
    end-of-turn token, the tokens KDTrainer's chat collator trains on."""
    import torch

    generator = torch.Generator().manual_seed(settings.seed)
    first = len(SPECIAL_TOKENS) + 2
    data = []
    for _ in range(rows):
        prompt_ids = torch.randint(first, settings.vocab_size, (settings.prompt_tokens,), generator=generator)
        completion_ids = torch.randint(first, settings.vocab_size, (settings.completion_tokens,), generator=generator)
        data.append({
            "prompt": [{"role": "user", "content": " ".join(f"w{i}" for i in prompt_ids.tolist())}],
            "completion": [{"role": "assistant", "content": " ".join(f"w{i}" for i in completion_ids.tolist())}],
            "completion_ids": completion_ids.tolist() + [tokenizer.eos_token_id],
        })  # fmt: skip
    return data


def run_case(trainer_name: str, setting: str, settings: ThroughputSettings, tokenizer, teacher, attn: str) -> dict:
    """Train a fresh student (same seed every case) for warm-up + timed steps; tokens/s over the timed steps."""
    import torch

    on_policy = setting == "on_policy"
    warmup = settings.on_policy_warmup_steps if on_policy else settings.warmup_steps
    steps = warmup + (settings.on_policy_timed_steps if on_policy else settings.timed_steps)
    data = make_rows(settings, tokenizer, steps * settings.batch_size)
    student = build_random_model(settings.student, settings, torch.float32, attn, seed=settings.seed)
    if settings.device == "cuda":
        torch.cuda.reset_peak_memory_stats()
    clock = StepClock(settings.device)
    common = dict(
        output_dir=tempfile.mkdtemp(prefix="gpu_check_"), max_steps=steps,
        per_device_train_batch_size=settings.batch_size, gradient_accumulation_steps=1,
        learning_rate=settings.learning_rate, lr_scheduler_type="constant", bf16=True,
        use_cpu=settings.device == "cpu", report_to="none", logging_steps=steps, save_strategy="no",
        disable_tqdm=True, dataloader_num_workers=0, seed=settings.seed, beta=settings.beta, temperature=1.0,
    )  # fmt: skip
    if trainer_name == "kd_trainer":
        trainer = make_kd_trainer(common, settings, on_policy, student, teacher, tokenizer, data, clock)
    else:
        trainer = make_trl_trainer(common, settings, on_policy, student, teacher, tokenizer, data, clock)
    trainer.train()
    metrics = clock.metrics(warmup, [float(count) for count in trainer.bench_tokens])
    metrics["first_loss"] = round(float(trainer.bench_losses[0]), 6)
    if settings.device == "cuda":
        metrics["peak_mem_gib"] = round(torch.cuda.max_memory_allocated() / 2**30, 2)
    metrics["attn_implementation"] = attn
    trainer.accelerator.free_memory()
    del trainer, student
    return metrics


class StepClock:
    """A `TrainerCallback` noting the time at each optimizer step's end (after a device synchronise)."""

    def __init__(self, device: str):
        from transformers import TrainerCallback

        clock = self

        class Callback(TrainerCallback):
            def on_step_end(self, args, state, control, **kwargs):
                clock.tick()

        self.device, self.callback, self.times = device, Callback(), []

    def tick(self) -> None:
        import torch

        if self.device == "cuda":
            torch.cuda.synchronize()
        self.times.append(time.perf_counter())

    def metrics(self, warmup: int, tokens_per_step: list[float]) -> dict:
        """Step times are the gaps between step ends after `warmup` steps (generation, forward, backward and the
        optimizer included); tokens are those of the trained sequences (prompt + completion, padding excluded)."""
        gaps = [later - earlier for earlier, later in zip(self.times[warmup - 1 :], self.times[warmup:])]
        if not gaps or len(tokens_per_step) != len(self.times):
            raise RuntimeError(f"{len(self.times)} steps timed, {len(tokens_per_step)} counted, {warmup} warm-up")
        tokens = sum(tokens_per_step[warmup:])
        return {"tokens_per_s": round(tokens / sum(gaps), 1), "step_time_s": round(statistics.median(gaps), 4),
                "tokens_per_step": round(tokens / len(gaps), 1), "timed_steps": len(gaps)}  # fmt: skip


def counting(trainer_class, count_tokens):
    """`trainer_class` noting, per training `compute_loss` call, the tokens trained on and the loss (kept as
    tensors: no synchronisation inside the timed steps)."""

    class Counting(trainer_class):
        bench_tokens: list
        bench_losses: list

        def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
            loss = super().compute_loss(model, inputs, return_outputs, num_items_in_batch)
            if self.model.training:
                self.bench_tokens.append(count_tokens(inputs))
                self.bench_losses.append((loss[0] if return_outputs else loss).detach())
            return loss

    Counting.__name__ = f"Counting{trainer_class.__name__}"
    return Counting


def make_kd_trainer(common, settings, on_policy, student, teacher, tokenizer, data, clock):
    from datasets import Dataset

    from trl_reasoning_distill.kd_config import KDConfig
    from trl_reasoning_distill.kd_trainer import KDTrainer

    args = KDConfig(**common, lmbda=1.0 if on_policy else 0.0, max_new_tokens=settings.max_new_tokens,
                    max_length=settings.prompt_tokens + settings.completion_tokens + 8)  # fmt: skip
    dataset = Dataset.from_list([{"prompt": row["prompt"], "completion": row["completion"]} for row in data])
    trainer = counting(KDTrainer, lambda inputs: inputs["attention_mask"].sum())(
        model=student, teacher_model=teacher, args=args, train_dataset=dataset, processing_class=tokenizer,
        callbacks=[clock.callback],
    )
    trainer.bench_tokens, trainer.bench_losses = [], []
    return trainer


def make_trl_trainer(common, settings, on_policy, student, teacher, tokenizer, data, clock):
    from datasets import Dataset
    from trl import DistillationConfig, DistillationTrainer

    class GivenCompletions(DistillationTrainer):
        """Off-policy DistillationTrainer: each row's `completion_ids` stand in for the student's sample."""

        def _generate_and_score_completions(self, inputs):
            self._given = [list(example["completion_ids"]) for example in inputs]
            return super()._generate_and_score_completions(inputs)

        def _generate_single_turn(self, prompt_ids, images, multimodal_fields, has_tool_images=False):
            return self._given

    length = settings.max_new_tokens if on_policy else settings.completion_tokens + 1
    args = DistillationConfig(**common, max_completion_length=length)
    dataset = Dataset.from_list([{"prompt": row["prompt"], "completion_ids": row["completion_ids"]} for row in data])
    trainer_class = DistillationTrainer if on_policy else GivenCompletions
    trainer = counting(trainer_class, lambda inputs: inputs["prompt_mask"].sum() + inputs["completion_mask"].sum())(
        model=student, teacher_model=teacher, args=args, train_dataset=dataset, processing_class=tokenizer,
        callbacks=[clock.callback],
    )
    trainer.bench_tokens, trainer.bench_losses = [], []
    return trainer


# ---------------------------------------------------------------------------------------------------------------------
# The run: environment columns, parts under budgets, the CSV.
# ---------------------------------------------------------------------------------------------------------------------


def row(part: str, case: str, setting: str, metric: str, value, status: str) -> dict:
    return {"part": part, "case": case, "setting": setting, "metric": metric, "value": value, "status": status}


def package_version(name: str) -> str:
    try:
        return version(name)
    except PackageNotFoundError:
        return "not installed"


def git_commit() -> str:
    """HEAD, with "-dirty" if tracked files changed; "unknown" where the tree has no git metadata."""
    try:
        head = subprocess.run(["git", "rev-parse", "HEAD"], capture_output=True, text=True, cwd=REPO, check=True)
        changes = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], capture_output=True,
                                 text=True, cwd=REPO)  # fmt: skip
    except (OSError, subprocess.CalledProcessError):
        return "unknown"
    return head.stdout.strip() + ("-dirty" if changes.stdout.strip() else "")


def environment() -> dict:
    import torch

    if torch.cuda.is_available():
        device = torch.cuda.get_device_name()
    else:
        models = [line.split(":", 1)[1].strip() for line in open("/proc/cpuinfo") if line.startswith("model name")]
        device = f"CPU: {models[0] if models else platform.machine()}, {os.cpu_count()} cores"
    return {"device": device, "python": platform.python_version(), "torch": torch.__version__,
            "transformers": package_version("transformers"), "trl": package_version("trl"), "git_commit": git_commit(),
            "timestamp": datetime.now(UTC).isoformat(timespec="seconds")}  # fmt: skip


def write_csv(rows: list[dict], shared: dict, path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    temporary = path.with_suffix(".tmp")
    with temporary.open("w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=FIELDS)
        writer.writeheader()
        writer.writerows({**shared, **r} for r in rows)
    temporary.replace(path)


PARTS = {"tests": (part_tests, "tests_budget"), "losses": (part_losses, "losses_budget"),
         "throughput": (part_throughput, "throughput_budget")}  # fmt: skip


def main(argv=None) -> list[dict]:
    args = parse_args(argv)
    if args.throughput_worker:
        throughput_worker(args.throughput_worker)
        return []
    if not args.dry_run:
        import torch

        if not torch.cuda.is_available():
            sys.exit("no CUDA device: run with --dry-run for the CPU rehearsal")
    shared, rows, out = environment(), [], Path(args.out)
    if args.git_commit:
        shared["git_commit"] = args.git_commit
    deadline = time.monotonic() + args.total_budget
    with tempfile.TemporaryDirectory(prefix="gpu_check_") as temporary:
        folder = Path(args.logs or temporary)
        folder.mkdir(parents=True, exist_ok=True)
        for name in ("tests", "losses", "throughput"):
            function, budget_field = PARTS[name]
            if name not in args.parts:
                continue
            start = time.monotonic()
            budget = max(0.0, min(getattr(args, budget_field), deadline - start))
            print(f"== {name} (budget {budget:.0f} s)", flush=True)
            try:
                part_rows = function(args, budget, folder)
            except Exception as error:  # a part that breaks is a row, the next part still runs
                part_rows = [row(name, "all", "", "seconds", "", f"failed: {type(error).__name__}: {error}")]
            rows += part_rows
            rows.append(row(name, "part", "", "seconds", round(time.monotonic() - start, 1), "ok"))
            write_csv(rows, shared, out)
            for r in part_rows:
                print(f"  {r['case']:40s} {r['metric']:22s} {r['value']!s:>14s}  {r['status'][:80]}", flush=True)
    print(f"wrote {out}")
    return rows


if __name__ == "__main__":
    main()
