"""Train the toy teacher and the cold-started student deterministically on CPU and save them under `toy/assets/`.

    python -m trl_reasoning_distill.toy.build            # about 15 minutes on 2 cores

1. Teacher (4 layers, hidden 128): trained from scratch on gold solutions of every style, 2-6 operands, until its
   greedy accuracy on validation problems (2-4 operands) reaches `teacher_target` or `teacher_max_steps` pass.
2. Student (3 layers, hidden 96, intermediate 256): cold-started on a little verified *teacher* data (teacher
   samples at temperature 1, kept when correct), stopped as soon as its validation accuracy enters the target band,
   so methods have room to improve it (plain SFT on verified teacher samples lifts it by > 0.20 in 500 steps).
   Validation problems never appear in the test split that evaluations use.
"""

import argparse
import json
import logging
import math
import random
import time
from pathlib import Path

import torch

from ..evaluation import evaluate, sample_completions
from ..utils import tune_cpu_allocator
from . import problem_rows
from .models import build_student, build_teacher
from .task import Problem, sample_problems, solution
from .tokenizer import build_tokenizer

logger = logging.getLogger(__name__)
ASSETS = Path(__file__).parent / "assets"


def encode_example(tokenizer, problem: Problem, completion: str) -> tuple[list[int], int]:
    """Token ids of prompt + completion + EOS, and the prompt length (the loss covers what follows it)."""
    prompt = tokenizer.apply_chat_template(
        [{"role": "user", "content": problem.prompt}], tokenize=False, add_generation_prompt=True
    )
    prompt_ids = tokenizer(prompt, add_special_tokens=False)["input_ids"]
    completion_ids = tokenizer(completion, add_special_tokens=False)["input_ids"] + [tokenizer.eos_token_id]
    return prompt_ids + completion_ids, len(prompt_ids)


def collate(examples: list[tuple[list[int], int]], pad_id: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Right-padded `(input_ids_BL, attention_mask_BL, labels_BL)`; labels are -100 on prompt and padding."""
    width = max(len(ids) for ids, _ in examples)
    ids_BL = torch.full((len(examples), width), pad_id)
    labels_BL = torch.full((len(examples), width), -100)
    for i, (ids, prompt_len) in enumerate(examples):
        ids_BL[i, : len(ids)] = torch.tensor(ids)
        labels_BL[i, prompt_len : len(ids)] = torch.tensor(ids[prompt_len:])
    return ids_BL, (ids_BL != pad_id).long(), labels_BL


def train_lm(model, batches, steps: int, lr: float, evaluate, eval_every: int, stop_when) -> dict:
    """AdamW with warm-up and linear decay over `steps`; evaluates every `eval_every` steps and stops early when
    `stop_when(accuracy)` holds. Returns a log of (step, loss, accuracy, seconds)."""
    opt = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=0.01, betas=(0.9, 0.98))
    warmup = min(100, steps // 10)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: min((s + 1) / warmup, max(0.05, (steps - s) / steps)))
    log, start, running = [], time.time(), math.nan
    model.train()
    for step in range(1, steps + 1):
        ids_BL, mask_BL, labels_BL = next(batches)
        loss = model(input_ids=ids_BL, attention_mask=mask_BL, labels=labels_BL).loss
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step(), sched.step(), opt.zero_grad(set_to_none=True)
        running = loss.item() if math.isnan(running) else 0.98 * running + 0.02 * loss.item()
        if step % 50 == 0:
            logger.info("step %d loss %.4f (%.0f s)", step, running, time.time() - start)
        if step % eval_every == 0 or step == steps:
            acc = evaluate(model)
            log.append({"step": step, "loss": round(running, 4), "accuracy": acc, "seconds": time.time() - start})
            logger.info("step %d loss %.4f val accuracy %.3f (%.0f s)", step, running, acc, time.time() - start)
            if stop_when(acc):
                break
            model.train()
    return {"log": log, "steps": log[-1]["step"]}


STYLE_WEIGHTS = {"ltr": 0.4, "grouped": 0.2, "verbose": 0.2, "split": 0.2}  # greedy decoding mostly follows ltr


def gold_batches(tokenizer, seed: int, batch_size: int, min_ops: int, max_ops: int):
    """Endless batches of fresh training problems, each solved in a style drawn from `STYLE_WEIGHTS`."""
    rng, round_, bucket = random.Random(seed), 0, 8
    styles, weights = list(STYLE_WEIGHTS), list(STYLE_WEIGHTS.values())
    while True:  # draw `bucket` batches at once and group similar lengths: less padding to compute
        problems = sample_problems("train", batch_size * bucket, seed=seed * 100_000 + round_, min_ops=min_ops,
                                   max_ops=max_ops)
        examples = [encode_example(tokenizer, p, solution(p, rng.choices(styles, weights)[0])) for p in problems]
        examples.sort(key=lambda e: len(e[0]))
        chunks = [examples[i : i + batch_size] for i in range(0, len(examples), batch_size)]
        rng.shuffle(chunks)
        yield from (collate(chunk, tokenizer.pad_token_id) for chunk in chunks)
        round_ += 1


def teacher_data(teacher, tokenizer, n_problems: int, seed: int) -> list[tuple[list[int], int]]:
    """Teacher samples at temperature 1 on training problems, kept when their boxed answer is correct."""
    problems = sample_problems("train", n_problems, seed=seed, min_ops=2, max_ops=4)
    texts = sample_completions(teacher, tokenizer, [p.prompt for p in problems], temperature=1.0, max_new_tokens=160)
    from ..verify import extract_boxed, grade

    return [encode_example(tokenizer, p, text) for p, text in zip(problems, texts)
            if grade(extract_boxed(text), str(p.answer))]


def replay_batches(examples, pad_id: int, batch_size: int, seed: int):
    rng = random.Random(seed)
    while True:
        order = list(range(len(examples)))
        rng.shuffle(order)
        for i in range(0, len(order) - batch_size + 1, batch_size):
            yield collate([examples[j] for j in order[i : i + batch_size]], pad_id)


def train_teacher(teacher, tokenizer, args, val_accuracy, state: dict, save) -> None:
    """Rounds of training until the validation target: round 0 at lr 3e-3, later rounds half as long at 1e-3 on
    fresh data. The teacher is saved after every round, so `--resume` continues a build that was stopped."""
    rounds = state.setdefault("teacher_rounds", [])
    def reached(log: dict) -> bool:
        return log["log"][-1]["accuracy"] >= args.teacher_target

    while len(rounds) < args.teacher_rounds and not (rounds and reached(rounds[-1])):
        r = len(rounds)
        steps, lr = (args.teacher_max_steps, 3e-3) if r == 0 else (args.teacher_max_steps // 2, 1e-3)
        batches = gold_batches(tokenizer, args.seed + 1000 * r, 32, 2, 5)
        rounds.append(train_lm(teacher, batches, steps, lr, val_accuracy, 250, lambda a: a >= args.teacher_target))
        save(teacher, "teacher")


def main(argv: list[str] | None = None) -> None:
    class Formatter(argparse.RawDescriptionHelpFormatter, argparse.ArgumentDefaultsHelpFormatter):
        """The docstring as written, and each option's default."""

    parser = argparse.ArgumentParser(prog="trl-distill build-toy", description=__doc__, formatter_class=Formatter)
    parser.add_argument("--out", type=Path, default=ASSETS, help="folder of the teacher, student and tokenizer")
    parser.add_argument("--seed", type=int, default=0, help="seed of data, initialisation and training")
    parser.add_argument("--teacher_max_steps", type=int, default=2500, help="most teacher steps per round")
    parser.add_argument("--teacher_rounds", type=int, default=3, help="most training rounds of the teacher")
    parser.add_argument("--teacher_target", type=float, default=0.95, help="greedy accuracy the teacher must reach")
    parser.add_argument("--student_max_steps", type=int, default=1500, help="most cold-start steps of the student")
    parser.add_argument("--student_band", type=float, nargs=2, default=(0.25, 0.40),
                        help="greedy accuracy band the cold-started student must land in")
    parser.add_argument("--cold_start_problems", type=int, default=2000, help="problems of the cold start")
    parser.add_argument("--threads", type=int, default=1, help="1 was fastest here: tiny matrices, 2 small cores")
    parser.add_argument("--resume", action="store_true", help="continue from the teacher rounds saved in --out")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s", force=True)
    tune_cpu_allocator()
    torch.set_num_threads(args.threads)
    torch.use_deterministic_algorithms(True)
    tokenizer = build_tokenizer()
    val = sample_problems("validation", 300, seed=args.seed, min_ops=2, max_ops=4)
    args.out.mkdir(parents=True, exist_ok=True)
    state_path = args.out / "build_log.json"
    state = json.loads(state_path.read_text()) if args.resume and state_path.exists() else {"seed": args.seed}
    tokenizer.save_pretrained(args.out / "tokenizer")

    def val_accuracy(model):
        rows = problem_rows(val, "validation")
        return evaluate(model, tokenizer, rows, max_new_tokens=160, progress=False).greedy_accuracy

    def save(model, name):
        model.save_pretrained(args.out / name, safe_serialization=True)
        state_path.write_text(json.dumps(state, indent=1))

    resumed = args.resume and (args.out / "teacher").exists() and state.get("teacher_rounds")
    teacher = load_model(args.out / "teacher") if resumed else build_teacher(tokenizer, seed=args.seed)
    train_teacher(teacher, tokenizer, args, val_accuracy, state, save)
    cold = teacher_data(teacher, tokenizer, args.cold_start_problems, args.seed + 1)
    logger.info("cold-start data: %d verified teacher samples", len(cold))
    student = build_student(tokenizer, seed=args.seed)
    low, high = args.student_band
    state["student"] = train_lm(student, replay_batches(cold, tokenizer.pad_token_id, 32, args.seed),
                                args.student_max_steps, 2e-3, val_accuracy, 50, lambda acc: low <= acc <= high)
    state["cold_start_examples"] = len(cold)
    save(student, "student")


def load_model(path: Path):
    from transformers import AutoModelForCausalLM

    return AutoModelForCausalLM.from_pretrained(path, dtype="float32")


if __name__ == "__main__":
    main()
