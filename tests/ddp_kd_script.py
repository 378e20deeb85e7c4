"""One KDTrainer optimizer step on a fixed global batch of 8 rows; run alone or under torchrun (gloo, CPU).

    python tests/ddp_kd_script.py OUT_DIR PER_DEVICE_BATCH GRAD_ACCUM

Rank 0 writes OUT_DIR/result.pt: the logged loss and the updated student weights.
"""

import os
import sys

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRL_EXPERIMENTAL_SILENCE", "1")

import torch
from datasets import Dataset

from trl_reasoning_distill.kd_config import KDConfig
from trl_reasoning_distill.kd_trainer import KDTrainer
from trl_reasoning_distill.toy.models import build_student, build_teacher
from trl_reasoning_distill.toy.task import sample_problems, solution
from trl_reasoning_distill.toy.tokenizer import build_tokenizer


def rows() -> Dataset:
    """8 rows whose completions differ a lot in length, so processes hold very different token counts."""
    problems = sample_problems("train", 8, seed=5, min_ops=2, max_ops=6)
    styles = ["ltr", "verbose", "split", "grouped"] * 2
    return Dataset.from_list([{"prompt": p.prompt, "completion": solution(p, s)} for p, s in zip(problems, styles)])


def main(out_dir: str, per_device: int, grad_accum: int) -> None:
    torch.set_num_threads(1)
    tokenizer = build_tokenizer()
    student, teacher = build_student(tokenizer, seed=1), build_teacher(tokenizer, seed=2)
    args = KDConfig(
        output_dir=out_dir, max_steps=1, per_device_train_batch_size=per_device,
        gradient_accumulation_steps=grad_accum,
        optim="sgd", learning_rate=0.5, lr_scheduler_type="constant", lmbda=0.0, beta=0.5, temperature=1.0,
        max_length=256, use_cpu=True, bf16=False, report_to="none", save_strategy="no", logging_steps=1, seed=0,
        disable_tqdm=True, activation_checkpointing=False, dataloader_num_workers=0,
    )
    trainer = KDTrainer(model=student, teacher_model=teacher, args=args, train_dataset=rows(),
                        processing_class=tokenizer)
    trainer.train()
    if trainer.accelerator.is_main_process:
        weights = {n: p.detach().clone() for n, p in trainer.model.named_parameters()}
        torch.save({"loss": trainer.state.log_history[0]["loss"], "weights": weights},
                   os.path.join(out_dir, "result.pt"))


if __name__ == "__main__":
    main(sys.argv[1], int(sys.argv[2]), int(sys.argv[3]))
