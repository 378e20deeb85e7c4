"""Checkpoints are complete or absent: written under a staging folder and renamed when complete, removed on a failed
(disk-full) save with an error naming them; resume takes the newest complete checkpoint and never one without a
readable `trainer_state.json`. For `KDTrainer` (the base of four methods), `CoTDPOTrainer` and CoTD-PO's rounds."""

import errno
import json
import logging

import pytest
import torch
from conftest import CPU_TRAINING
from datasets import Dataset
from test_cotd_po_trainer import TOY_FORMAT, group_rows
from test_kd_trainer import toy_rows

from trl_reasoning_distill.cotd_po import CoTDPOConfig, CoTDPOTrainer
from trl_reasoning_distill.cotd_po.rounds import _train_round
from trl_reasoning_distill.kd_config import KDConfig
from trl_reasoning_distill.kd_trainer import KDTrainer
from trl_reasoning_distill.toy import load_toy_tokenizer
from trl_reasoning_distill.toy.models import build_student, build_teacher

SAVING = dict(save_strategy="steps", save_steps=1, per_device_train_batch_size=2, learning_rate=1e-3)


def kd(output_dir, max_steps=2, **overrides):
    tokenizer = load_toy_tokenizer()
    args = KDConfig(output_dir=str(output_dir), lmbda=0.0, max_new_tokens=8, max_length=128,
                    **{**CPU_TRAINING, **SAVING, "max_steps": max_steps, **overrides})
    return KDTrainer(model=build_student(tokenizer, seed=1), teacher_model=build_teacher(tokenizer, seed=2),
                     args=args, train_dataset=toy_rows(8), processing_class=tokenizer)


def cotd_po_args(output_dir, max_steps=2, **overrides) -> CoTDPOConfig:
    return CoTDPOConfig(output_dir=str(output_dir), warmup_steps=0, max_length=128,
                        **{**CPU_TRAINING, **SAVING, "max_steps": max_steps, **TOY_FORMAT, **overrides})


def cotd_po(output_dir, max_steps=2, eval_dataset=None, **overrides):
    tokenizer = load_toy_tokenizer()
    return CoTDPOTrainer(model=build_student(tokenizer, seed=1), args=cotd_po_args(output_dir, max_steps, **overrides),
                         train_dataset=Dataset.from_list(group_rows(n=8)), eval_dataset=eval_dataset,
                         processing_class=tokenizer)


BUILDERS = {"kd": kd, "cotd_po": cotd_po}


def steps_trained(trainer) -> list[int]:
    """Make `trainer` record the optimizer step of every micro-batch it trains on."""
    steps, step = [], trainer.training_step

    def training_step(model, inputs, num_items_in_batch=None):
        steps.append(trainer.state.global_step)
        return step(model, inputs, num_items_in_batch)

    trainer.training_step = training_step
    return steps


def fail_at_step(trainer, step: int, error: OSError):
    """Make saving the optimizer of the checkpoint at `step` raise `error`, as a full disk does."""
    save = trainer._save_optimizer_and_scheduler

    def failing(output_dir):
        if trainer.state.global_step == step:
            raise error
        save(output_dir)

    trainer._save_optimizer_and_scheduler = failing


@pytest.mark.parametrize("method", sorted(BUILDERS))
def test_a_disk_full_save_says_so_and_leaves_no_checkpoint(tmp_path, method):
    trainer = BUILDERS[method](tmp_path)
    fail_at_step(trainer, 2, OSError(errno.ENOSPC, "No space left on device"))
    with pytest.raises(OSError, match="disk is full") as error:
        trainer.train()
    assert error.value.errno == errno.ENOSPC and str(tmp_path / "checkpoint-2") in str(error.value)
    assert sorted(p.name for p in tmp_path.iterdir() if "checkpoint" in p.name) == ["checkpoint-1"]
    assert (tmp_path / "checkpoint-1" / "trainer_state.json").is_file()


def test_another_save_error_is_raised_as_is_and_leaves_no_checkpoint(tmp_path):
    trainer = kd(tmp_path, max_steps=1)
    fail_at_step(trainer, 1, PermissionError(errno.EACCES, "Permission denied"))
    with pytest.raises(PermissionError, match="Permission denied"):
        trainer.train()
    assert not any("checkpoint" in p.name for p in tmp_path.iterdir())


@pytest.mark.parametrize("method", sorted(BUILDERS))
def test_checkpoint_appears_only_when_complete(tmp_path, method):
    trainer = BUILDERS[method](tmp_path, max_steps=1)
    seen = []
    save = trainer._save_optimizer_and_scheduler

    def watching(output_dir):
        seen.append((tmp_path / "checkpoint-1").exists())
        save(output_dir)

    trainer._save_optimizer_and_scheduler = watching
    trainer.train()
    assert seen == [False]  # being written elsewhere
    assert (tmp_path / "checkpoint-1" / "trainer_state.json").is_file()
    assert sorted(p.name for p in tmp_path.iterdir() if "checkpoint" in p.name) == ["checkpoint-1"]


@pytest.mark.parametrize("damage", ["missing", "truncated"])
@pytest.mark.parametrize("method", sorted(BUILDERS))
def test_resume_skips_a_checkpoint_cut_short(tmp_path, method, damage, caplog):
    BUILDERS[method](tmp_path, max_steps=2).train()
    state = tmp_path / "checkpoint-2" / "trainer_state.json"
    if damage == "missing":
        state.unlink()
    else:
        state.write_text(state.read_text()[:40])
    (tmp_path / "checkpoint-2" / "stale.bin").write_bytes(b"x")
    trainer = BUILDERS[method](tmp_path, max_steps=2)
    steps = steps_trained(trainer)
    with caplog.at_level(logging.WARNING, logger="trl_reasoning_distill.checkpointing"):
        trainer.train(resume_from_checkpoint=True)
    assert f"Skipping the checkpoint {tmp_path / 'checkpoint-2'}" in caplog.text
    assert set(steps) == {1} and trainer.state.global_step == 2  # resumed from checkpoint-1
    # the step-2 checkpoint is written again, whole, in place of the damaged one
    assert state.is_file() and not (tmp_path / "checkpoint-2" / "stale.bin").exists()


def test_resume_errors_name_the_folder(tmp_path):
    trainer = kd(tmp_path)
    with pytest.raises(ValueError, match="no complete checkpoint .* in " + str(tmp_path)):
        trainer.train(resume_from_checkpoint=True)
    (tmp_path / "checkpoint-3").mkdir()
    with pytest.raises(ValueError, match="no complete checkpoint"):
        trainer.train(resume_from_checkpoint=True)
    with pytest.raises(ValueError, match=f"cannot resume from {tmp_path / 'checkpoint-3'}: it has no trainer_state"):
        trainer.train(resume_from_checkpoint=str(tmp_path / "checkpoint-3"))


def test_rotation_and_the_best_checkpoint_name_published_folders(tmp_path):
    """The best checkpoint (the first: the loss falls, and here higher is better) is kept by the rotation and named by
    its published path in the trainer and in the last checkpoint's state."""
    trainer = cotd_po(tmp_path, max_steps=3, eval_dataset=Dataset.from_list(group_rows(n=2, seed=5)),
                      save_total_limit=2, eval_strategy="steps", eval_steps=1, metric_for_best_model="loss",
                      greater_is_better=True)
    trainer.train()
    best = str(tmp_path / "checkpoint-1")
    assert trainer.state.best_model_checkpoint == best
    assert json.loads((tmp_path / "checkpoint-3" / "trainer_state.json").read_text())["best_model_checkpoint"] == best
    assert sorted(p.name for p in tmp_path.iterdir() if "checkpoint" in p.name) == ["checkpoint-1", "checkpoint-3"]


def test_cotd_po_round_resumes_from_its_newest_complete_checkpoint(tmp_path, caplog):
    trainer_dir = tmp_path / "round_01" / "trainer"
    cotd_po(trainer_dir, max_steps=2).train()
    (trainer_dir / "checkpoint-2" / "trainer_state.json").unlink()
    tokenizer = load_toy_tokenizer()
    args = cotd_po_args(tmp_path, max_steps=2)
    with caplog.at_level(logging.WARNING, logger="trl_reasoning_distill.checkpointing"):
        model = _train_round(build_student(tokenizer, seed=1), tokenizer, Dataset.from_list(group_rows(n=8)), args,
                             tmp_path / "round_01")
    assert "checkpoint-2" in caplog.text
    assert (tmp_path / "round_01" / "model" / "config.json").is_file()
    assert (trainer_dir / "checkpoint-2" / "trainer_state.json").is_file()
    assert all(torch.isfinite(p).all() for p in model.parameters())


def test_forked_rng_is_seeded_and_leaves_the_outer_stream_alone():
    from trl_reasoning_distill.checkpointing import derived_seed, forked_rng

    torch.manual_seed(0)
    expected = torch.rand(3)
    torch.manual_seed(0)
    with forked_rng(derived_seed(0, "sampling", 1, 0)):
        inner = torch.rand(3)
    assert torch.equal(torch.rand(3), expected)
    with forked_rng(derived_seed(0, "sampling", 1, 0)):
        assert torch.equal(torch.rand(3), inner)
    assert derived_seed(0, "sampling", 1, 0) != derived_seed(0, "sampling", 1, 1)
