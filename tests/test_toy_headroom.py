"""The toy student has headroom: plain SFT on verified teacher samples lifts it by >= 0.20 greedy pass@1 in 500 steps
of batch 16 at lr 1e-3 (issue 16's target for toy world v2). Only the public API is used: the toy loaders and
datasets, the tokenizer's chat template, `verify` and `evaluate`, with a plain AdamW loop, as a user would write it."""

import random

import pytest
import torch

from trl_reasoning_distill import evaluate, load_toy_student, load_toy_teacher, load_toy_tokenizer, toy_dataset
from trl_reasoning_distill.verify import extract_boxed, grade

STEPS, BATCH, LR = 500, 16, 1e-3  # issue 16
HELD_OUT = 300  # 2-4 operand test problems
MAX_NEW_TOKENS = 192


def teacher_samples(teacher, tokenizer, rows, batch: int = 64) -> list[tuple[list[int], int]]:
    """(prompt + completion + EOS ids, prompt length) of teacher samples at temperature 1, kept when correct."""
    kept = []
    for start in range(0, len(rows), batch):
        chunk = rows[start : start + batch]
        texts = [tokenizer.apply_chat_template(r["prompt"], tokenize=False, add_generation_prompt=True) for r in chunk]
        enc = tokenizer(texts, add_special_tokens=False, padding=True, return_tensors="pt")
        with torch.no_grad():
            out = teacher.generate(**enc, do_sample=True, temperature=1.0, top_k=0, max_new_tokens=MAX_NEW_TOKENS,
                                   pad_token_id=tokenizer.pad_token_id, eos_token_id=tokenizer.eos_token_id)
        for row, prompt, ids in zip(chunk, texts, out[:, enc["input_ids"].shape[1] :].tolist()):
            completion = tokenizer.decode(ids, skip_special_tokens=True)
            if tokenizer.eos_token_id in ids and grade(extract_boxed(completion), row["answer"]):
                prompt_ids = tokenizer(prompt, add_special_tokens=False)["input_ids"]
                completion_ids = ids[: ids.index(tokenizer.eos_token_id) + 1]
                kept.append((prompt_ids + completion_ids, len(prompt_ids)))
    return kept


def sft(model, examples, pad_id: int, seed: int = 0):
    """AdamW at LR, linear warm-up over 10 % of the steps then cosine decay; loss on the completion only."""
    rng = random.Random(seed)
    optimizer = torch.optim.AdamW(model.parameters(), lr=LR)
    warmup = STEPS // 10
    schedule = torch.optim.lr_scheduler.LambdaLR(
        optimizer, lambda s: (s + 1) / warmup if s < warmup else 0.5 * (1 + torch.cos(torch.tensor(
            torch.pi * (s - warmup) / (STEPS - warmup))).item()))
    order: list[int] = []
    model.train()
    for _ in range(STEPS):
        if len(order) < BATCH:
            order = rng.sample(range(len(examples)), len(examples))
        batch = [examples[order.pop()] for _ in range(BATCH)]
        width = max(len(ids) for ids, _ in batch)
        ids_BL = torch.full((BATCH, width), pad_id)
        labels_BL = torch.full((BATCH, width), -100)
        for i, (ids, prompt_len) in enumerate(batch):
            ids_BL[i, : len(ids)] = torch.tensor(ids)
            labels_BL[i, prompt_len : len(ids)] = torch.tensor(ids[prompt_len:])
        mask_BL = torch.zeros_like(ids_BL)
        for i, (ids, _) in enumerate(batch):
            mask_BL[i, : len(ids)] = 1
        model(input_ids=ids_BL, attention_mask=mask_BL, labels=labels_BL).loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        optimizer.step(), schedule.step(), optimizer.zero_grad(set_to_none=True)
    return model.eval()


@pytest.mark.slow
def test_sft_on_verified_teacher_samples_lifts_the_student_by_020():
    torch.manual_seed(0)
    tokenizer, teacher, student = load_toy_tokenizer(), load_toy_teacher(), load_toy_student()
    train = toy_dataset("train", STEPS * BATCH // 2, seed=7, min_ops=2, max_ops=4).to_list()
    examples = teacher_samples(teacher, tokenizer, train)
    assert len(examples) > STEPS * BATCH // 4, len(examples)  # thousands of fresh verified samples
    held_out = toy_dataset("test", HELD_OUT, seed=0, min_ops=2, max_ops=4)
    before = evaluate(student, tokenizer, held_out, max_new_tokens=MAX_NEW_TOKENS, progress=False).greedy_accuracy
    sft(student, examples, tokenizer.pad_token_id)
    after = evaluate(student, tokenizer, held_out, max_new_tokens=MAX_NEW_TOKENS, progress=False).greedy_accuracy
    assert 0.15 <= before <= 0.40, before
    assert after >= before + 0.20, (before, after)
