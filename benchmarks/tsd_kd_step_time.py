"""Loss step time of TSD-KD against GKD on one shared batch: `compute_loss` + backward of each trainer.

Both trainers get the same student, teacher and batch (prompt + completion tokens, as after on-policy sampling), so
only the loss differs: `KDTrainer` with GKD's generalized JSD (beta 0.9) against `TSDKDTrainer` with the paper's
settings (gate, top-10 Plackett-Luce on the opener, top-10 % entropy). The models are random Qwen2 models with the
real vocabulary (151,936 rows, padded to 152,064 for the teacher) and small bodies, built from their config classes,
so that the LM-head work, which is what TSD-KD adds to, has its real size. Each loss path is timed: the default
chunked loss from hidden states, and full logits (`loss_chunk_size=0`). Rollout generation, the same for both
methods, is left out: the ratio below is the upper bound of the ratio of whole training steps.

Three rows per loss path: GKD; TSD-KD with one micro-batch per step (its selections chosen in the loss); and TSD-KD
"accumulated", the per-micro-batch cost when a step has several micro-batches or processes, where the opener is chosen
by a no-grad student pass before the loss so that it can be counted over the global batch. The machine is shared, so
the runs are interleaved (GKD, TSD-KD, TSD-KD accumulated, GKD, ...) and timed in CPU time (`time.process_time`) as
well as wall time; each round gives one ratio to that round's GKD run, and the CSV reports their median, minimum and
maximum.

    python benchmarks/tsd_kd_step_time.py                # CPU, B=2, T=512, 1 thread: about 15 minutes
    python benchmarks/tsd_kd_step_time.py --loss-paths chunked --repeats 3   # the default loss path only
    python benchmarks/tsd_kd_step_time.py --vocab 512 --hidden 32 --seq 32 --repeats 1   # smoke run

Writes `<out-dir>/tsd_kd_step_time.csv` (one row per method and loss path, with the CPU-time ratios to GKD's).
"""

import argparse
import csv
import statistics
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
METHODS = ("GKD", "TSD-KD", "TSD-KD accumulated")
LOSS_PATHS = ("chunked", "full")  # loss_chunk_size -1 (default) and 0
FIELDS = ("method", "loss_path", "batch", "seq", "vocab", "student_hidden", "teacher_hidden", "cpu_ms", "wall_ms",
          "ratio_to_gkd", "ratio_min", "ratio_max", "repeats", "threads", "device", "git_commit")  # fmt: skip


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--batch", type=int, default=2)
    parser.add_argument("--seq", type=int, default=512, help="tokens per row; the last 3/4 are the completion")
    parser.add_argument("--vocab", type=int, default=151936, help="student vocabulary (Qwen2.5's by default)")
    parser.add_argument("--hidden", type=int, default=256, help="student hidden size; the teacher's is twice it")
    parser.add_argument("--layers", type=int, default=2)
    parser.add_argument("--repeats", type=int, default=5, help="interleaved rounds after one warm-up round")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--device", default="cpu", choices=["cpu", "cuda"])
    parser.add_argument("--loss-paths", default=",".join(LOSS_PATHS), help=f"comma-separated subset of {LOSS_PATHS}")
    parser.add_argument("--out-dir", default=str(REPO / "benchmarks" / "results"))
    args = parser.parse_args(argv)
    args.loss_paths = args.loss_paths.split(",")
    if not set(args.loss_paths) <= set(LOSS_PATHS):
        parser.error(f"--loss-paths must name some of {LOSS_PATHS}, got {args.loss_paths}")
    return args


def qwen2(vocab: int, hidden: int, layers: int):
    import torch
    from transformers import Qwen2Config, Qwen2ForCausalLM

    config = Qwen2Config(vocab_size=vocab, hidden_size=hidden, intermediate_size=2 * hidden, num_hidden_layers=layers,
                         num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=4096,
                         tie_word_embeddings=False, attn_implementation="sdpa")
    torch.manual_seed(hidden)
    return Qwen2ForCausalLM(config)


def shared_batch(args, device):
    """Token ids, attention mask and labels of `batch` rows: a 1/4 prompt (label -100) and a 3/4 completion."""
    import torch

    generator = torch.Generator().manual_seed(0)
    input_ids = torch.randint(0, args.vocab, (args.batch, args.seq), generator=generator)
    labels = input_ids.clone()
    labels[:, : args.seq // 4] = -100
    return {"input_ids": input_ids.to(device), "attention_mask": torch.ones_like(input_ids).to(device),
            "labels": labels.to(device)}


def build_trainer(method: str, chunk: int, student, teacher, tokenizer, out: str, device: str):
    from datasets import Dataset

    from trl_reasoning_distill import KDConfig, KDTrainer, TSDKDConfig, TSDKDTrainer

    config_cls, trainer_cls = (KDConfig, KDTrainer) if method == "GKD" else (TSDKDConfig, TSDKDTrainer)
    args = config_cls(output_dir=out, beta=0.9, lmbda=1.0, loss_chunk_size=chunk, use_cpu=device == "cpu",
                      bf16=False, report_to="none", save_strategy="no", activation_checkpointing=False)
    data = Dataset.from_list([{"prompt": [{"role": "user", "content": "1+1"}]}])
    return trainer_cls(model=student, teacher_model=teacher, args=args, train_dataset=data, processing_class=tokenizer)


def time_loss(trainer, batch, device: str, accumulated: bool = False) -> tuple[float, float]:
    """(CPU ms, wall ms) of one `compute_loss` + backward; `accumulated`: after choosing and counting the selections
    as a step with several micro-batches does (`_choose_selections`, then the loss with them)."""
    import torch

    trainer.model.zero_grad(set_to_none=True)
    if device == "cuda":
        torch.cuda.synchronize()
    cpu, wall = time.process_time(), time.perf_counter()
    inputs = batch
    if accumulated:
        mask_BT = batch["labels"][:, 1:] != -100
        opener_BT, selected_BT = trainer._choose_selections([batch], [mask_BT])[0]
        counts = {"num_opener_tokens": opener_BT.sum(), "num_entropy_units": selected_BT.any(dim=-1).sum()}
        inputs = {**batch, "tsd_kd_selections": (opener_BT, selected_BT), "tsd_kd_counts": counts}
    loss = trainer.compute_loss(trainer.model, inputs, num_items_in_batch=(batch["labels"][:, 1:] != -100).sum())
    loss.backward()
    if device == "cuda":
        torch.cuda.synchronize()
    return 1000 * (time.process_time() - cpu), 1000 * (time.perf_counter() - wall)


def interleaved(trainers: dict, batch, repeats: int, device: str) -> dict[str, list[tuple[float, float]]]:
    """One warm-up round, then `repeats` rounds of every method in turn (A B C A B C ...): per method, the (CPU ms,
    wall ms) of each round."""
    times = {method: [] for method in trainers}
    for step in range(repeats + 1):
        for method, trainer in trainers.items():
            measured = time_loss(trainer, batch, device, accumulated=method.endswith("accumulated"))
            if step > 0:
                times[method].append(measured)
    return times


def git_commit() -> str:
    import subprocess

    try:
        head = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True, cwd=REPO)
    except OSError:
        return ""
    return head.stdout.strip()


def main(argv=None):
    args = parse_args(argv)
    import torch
    import transformers

    from trl_reasoning_distill.toy import load_toy_tokenizer
    from trl_reasoning_distill.utils import tune_cpu_allocator

    tune_cpu_allocator()
    torch.set_num_threads(args.threads)
    transformers.logging.set_verbosity_error()
    tokenizer = load_toy_tokenizer()  # only for the trainers' collators; the batch below is built directly
    student = qwen2(args.vocab, args.hidden, args.layers).to(args.device)
    teacher = qwen2(args.vocab + 128, 2 * args.hidden, args.layers).to(args.device)
    batch = shared_batch(args, args.device)
    rows, commit = [], git_commit()
    paths = {"chunked": ("chunked (default)", -1), "full": ("full logits", 0)}
    for loss_path, chunk in (paths[name] for name in args.loss_paths):
        with tempfile.TemporaryDirectory() as out:
            trainers = {}
            for method in METHODS:
                trainers[method] = build_trainer(method.split()[0], chunk, student, teacher, tokenizer, out,
                                                 args.device)
                trainers[method].vocab_size = args.vocab  # the random models' shared rows, not the toy tokenizer's
            times = interleaved(trainers, batch, args.repeats, args.device)
        for method, measured in times.items():
            ratios = [cpu / gkd_cpu for (cpu, _), (gkd_cpu, _) in zip(measured, times["GKD"], strict=True)]
            cpu_ms, wall_ms = (statistics.median(column) for column in zip(*measured, strict=True))
            rows.append({"method": method, "loss_path": loss_path, "batch": args.batch, "seq": args.seq,
                         "vocab": args.vocab, "student_hidden": args.hidden, "teacher_hidden": 2 * args.hidden,
                         "cpu_ms": round(cpu_ms, 1), "wall_ms": round(wall_ms, 1),
                         "ratio_to_gkd": round(statistics.median(ratios), 3), "ratio_min": round(min(ratios), 3),
                         "ratio_max": round(max(ratios), 3), "repeats": args.repeats, "threads": args.threads,
                         "device": args.device, "git_commit": commit})
            print(f"{method:<19} {loss_path:<18} CPU {cpu_ms:9.1f} ms  wall {wall_ms:9.1f} ms  "
                  f"{statistics.median(ratios):.3f}x GKD ({min(ratios):.3f}-{max(ratios):.3f})", flush=True)
    out_dir = Path(args.out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    with (out_dir / "tsd_kd_step_time.csv").open("w", newline="") as handle:
        writer = csv.DictWriter(handle, FIELDS)
        writer.writeheader()
        writer.writerows(rows)
    return rows


if __name__ == "__main__":
    main()
