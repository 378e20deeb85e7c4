"""Exact resume of every trainer: k steps, a checkpoint, a fresh trainer resumed from it and k more steps give the
weights of 2k steps straight, on-policy sampling included, and the resumed steps see the same batches and samples.

Each run has 3 optimizer steps per epoch (12 rows, 2 per micro-batch, 2 micro-batches per step), so the checkpoint at
step 2 is mid-epoch (where transformers restores the RNG only after the first resumed `get_batch_samples`) and the
resumed steps cross into the next epoch."""

import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from conftest import CPU_TRAINING
from datasets import Dataset
from test_cotd_po_trainer import TOY_FORMAT, group_rows
from test_kd_trainer import toy_rows
from transformers import TrainerCallback

from trl_reasoning_distill.brts import BRTSConfig, BRTSTrainer
from trl_reasoning_distill.cotd_po import CoTDPOConfig, CoTDPOTrainer
from trl_reasoning_distill.gen_ssd import GenSSDConfig, GenSSDTrainer
from trl_reasoning_distill.kd_config import KDConfig
from trl_reasoning_distill.kd_trainer import KDTrainer
from trl_reasoning_distill.toy import (
    load_toy_student,
    load_toy_teacher,
    load_toy_tokenizer,
    problem_rows,
    sample_problems,
)
from trl_reasoning_distill.toy.models import build_student, build_teacher
from trl_reasoning_distill.tsd_kd import TSDKDConfig, TSDKDTrainer
from trl_reasoning_distill.vcrd import VCRDConfig, VCRDTrainer

K = 2  # steps before the checkpoint, and after it
STEPS = dict(max_steps=2 * K, per_device_train_batch_size=2, gradient_accumulation_steps=2, learning_rate=1e-3)


class StopAt(TrainerCallback):
    """Save a checkpoint at `step` and stop there (the schedule still spans `max_steps`)."""

    def __init__(self, step: int):
        self.step = step

    def on_step_end(self, args, state, control, **kwargs):
        if state.global_step == self.step:
            control.should_save = control.should_training_stop = True


def record_batches(trainer) -> list:
    """Make `trainer` record `(step, {key: ids})` of every micro-batch it trains on, for every `*input_ids` key
    (samples included)."""
    seen, step = [], trainer.training_step

    def training_step(model, inputs, num_items_in_batch=None):
        ids = {key: value.tolist() for key, value in inputs.items() if key.endswith("input_ids")}
        seen.append((trainer.state.global_step, ids))
        return step(model, inputs, num_items_in_batch)

    trainer.training_step = training_step
    return seen


def assert_exact_resume(tmp_path, make, check_state=None):
    """`make(output_dir)` builds a fresh trainer on fresh models; 2K straight steps == K + resume + K."""
    straight = make(tmp_path / "straight")
    straight_batches = record_batches(straight)
    straight.train()
    first = make(tmp_path / "resumed")
    first.add_callback(StopAt(K))
    first.train()
    assert first.state.global_step == K and (tmp_path / "resumed" / f"checkpoint-{K}").is_dir()
    resumed = make(tmp_path / "resumed")
    resumed_batches = record_batches(resumed)
    resumed.train(resume_from_checkpoint=True)
    assert resumed.state.global_step == 2 * K
    # the resumed steps skip the trained batches and draw the same samples
    assert resumed_batches == [(step, ids) for step, ids in straight_batches if step >= K]
    for name, param in straight.model.named_parameters():
        if param.requires_grad:
            torch.testing.assert_close(resumed.model.get_parameter(name), param, atol=1e-6, rtol=0, msg=name)
    if check_state is not None:
        check_state(straight, resumed)


def kd_trainer(config_cls=KDConfig, trainer_cls=KDTrainer, dataset=None, **overrides):
    def make(output_dir):
        tokenizer = load_toy_tokenizer()
        args = config_cls(output_dir=str(output_dir), max_new_tokens=8, max_length=128,
                          **{**CPU_TRAINING, **STEPS, **overrides})
        return trainer_cls(model=build_student(tokenizer, seed=1), teacher_model=build_teacher(tokenizer, seed=2),
                           args=args, train_dataset=dataset if dataset is not None else toy_rows(12),
                           processing_class=tokenizer)

    return make


def answer_rows(n: int = 12) -> Dataset:
    return Dataset.from_list(problem_rows(sample_problems("train", n, seed=1), "train")).select_columns(
        ["prompt", "answer"])


@pytest.mark.parametrize("lmbda", [0.0, 0.5, 1.0])
def test_kd_resumes_exactly(tmp_path, lmbda):
    """lmbda=0 trains on the dataset (a guard: it resumed exactly before); 0.5 and 1 sample the student."""
    assert_exact_resume(tmp_path, kd_trainer(lmbda=lmbda))


def test_tsd_kd_resumes_exactly_with_its_entropy_gap_history(tmp_path):
    def same_history(straight, resumed):
        assert len(resumed.gap_history) == len(straight.gap_history) > 0
        assert list(resumed.gap_history) == pytest.approx(list(straight.gap_history), abs=1e-6)

    make = kd_trainer(TSDKDConfig, TSDKDTrainer, adaptive_opener=True, top_k=4)
    assert_exact_resume(tmp_path, make, check_state=same_history)


def test_brts_resumes_exactly(tmp_path):
    assert_exact_resume(tmp_path, kd_trainer(BRTSConfig, BRTSTrainer, dataset=answer_rows(), top_k=4))


def vcrd_trainer(**overrides):
    from test_vcrd_trainer import tiny_prm, vcrd_rows

    def make(output_dir):
        tokenizer = load_toy_tokenizer()
        kwargs = {}
        if overrides.get("validity_judge") == "prm":
            torch.manual_seed(7)
            kwargs["prm_model"] = tiny_prm(tokenizer)
        args = VCRDConfig(output_dir=str(output_dir), max_new_tokens=12, max_length=160, max_prompt_length=32,
                          line_proposal_max_new_tokens=8, **{**CPU_TRAINING, **STEPS, **overrides})
        return VCRDTrainer(model=load_toy_student(), teacher_model=load_toy_teacher(), args=args,
                           train_dataset=vcrd_rows(12), processing_class=tokenizer, **kwargs)

    return make


def test_vcrd_offline_resumes_exactly(tmp_path):
    """Offline rollouts, nothing sampled: a guard (it resumed exactly before)."""
    assert_exact_resume(tmp_path, vcrd_trainer(validity_judge="teacher_prob"))


@pytest.mark.parametrize("judge", ["step_checker", "prm"])
def test_vcrd_online_resumes_exactly(tmp_path, judge):
    """Online student rollouts, sampled per micro-batch, with the line judge's same-prefix proposals (sampled with
    them) or the PRM judge's token proposals (sampled in the loss, under the RNG transformers restores)."""
    assert_exact_resume(tmp_path, vcrd_trainer(validity_judge=judge, student_rollout="online"))


def test_gen_ssd_resumes_exactly(tmp_path):
    def make(output_dir):
        tokenizer = load_toy_tokenizer()
        args = GenSSDConfig(output_dir=str(output_dir), max_length=128, chunk_size=6, max_new_tokens=12,
                            num_candidates=[2, 2], teacher_temperature=1.0, selection_rule="random",
                            keep_only_correct=False, **{**CPU_TRAINING, **STEPS})
        return GenSSDTrainer(model=load_toy_student(), teacher_model=load_toy_teacher(), args=args,
                             train_dataset=answer_rows(), processing_class=tokenizer)

    assert_exact_resume(tmp_path, make)


def test_cotd_po_resumes_exactly(tmp_path):
    """Offline groups, nothing sampled: a guard (it resumed exactly before)."""

    def make(output_dir):
        tokenizer = load_toy_tokenizer()
        args = CoTDPOConfig(output_dir=str(output_dir), warmup_steps=0, max_length=128,
                            **{**CPU_TRAINING, **STEPS, **TOY_FORMAT})
        return CoTDPOTrainer(model=build_student(tokenizer, seed=1), args=args,
                             train_dataset=Dataset.from_list(group_rows(n=12)), processing_class=tokenizer)

    assert_exact_resume(tmp_path, make)


def tsd_kd_ddp_run(output_dir: str, mode: str) -> None:
    """One run of `test_resume_is_exact_under_ddp` in each of 2 processes: `straight` (4 steps), `first` (2 steps and
    a checkpoint) or `resume` (2 more); each process writes its weights and entropy-gap history."""
    make = kd_trainer(TSDKDConfig, TSDKDTrainer, dataset=toy_rows(24), adaptive_opener=True, top_k=4)
    trainer = make(output_dir)
    if mode == "first":
        trainer.add_callback(StopAt(K))
    trainer.train(resume_from_checkpoint=True if mode == "resume" else None)
    weights = {name: param.detach().clone() for name, param in trainer.model.named_parameters()}
    torch.save({"weights": weights, "gap_history": list(trainer.gap_history)},
               os.path.join(output_dir, f"{mode}_{trainer.accelerator.process_index}.pt"))


@pytest.mark.slow
def test_resume_is_exact_under_ddp(tmp_path):
    """2 processes (gloo, CPU): per-process samples and state files, the shared lmbda coin, and a checkpoint published
    once every process has written its part."""
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).parents[1]), "OMP_NUM_THREADS": "1"}
    for mode, folder in (("straight", "a"), ("first", "b"), ("resume", "b")):
        subprocess.run([sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_port",
                        "29523", __file__, str(tmp_path / folder), mode], check=True, timeout=300, env=env)
    assert sorted(p.name for p in (tmp_path / "b").iterdir() if "checkpoint" in p.name) == [f"checkpoint-{K}"]
    for rank in (0, 1):
        straight = torch.load(tmp_path / "a" / f"straight_{rank}.pt")
        resumed = torch.load(tmp_path / "b" / f"resume_{rank}.pt")
        assert resumed["gap_history"] == straight["gap_history"] and straight["gap_history"]
        for name, weight in straight["weights"].items():
            torch.testing.assert_close(resumed["weights"][name], weight, atol=1e-6, rtol=0, msg=name)


if __name__ == "__main__":
    tsd_kd_ddp_run(sys.argv[1], sys.argv[2])
    if torch.distributed.is_initialized():  # gloo's threads may abort the process at exit otherwise
        torch.distributed.destroy_process_group()
