"""TSDKDTrainer and TSDKDConfig: training on the toy models, metrics, GKD equivalence, paper defaults, validation."""

import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from conftest import CPU_TRAINING
from test_kd_trainer import toy_rows

from trl_reasoning_distill.kd_config import KDConfig
from trl_reasoning_distill.kd_trainer import KDTrainer
from trl_reasoning_distill.tsd_kd import TSDKDConfig, TSDKDTrainer

METRICS = ("direct", "indirect", "entropy", "gate_mean", "opener_len")


def make_trainer(tmp_path, student, teacher, tokenizer, config_cls=TSDKDConfig, trainer_cls=TSDKDTrainer, **overrides):
    args = config_cls(output_dir=str(tmp_path), max_new_tokens=12, max_length=128,
                      **{**CPU_TRAINING, "max_steps": 2, "per_device_train_batch_size": 4, **overrides})
    return trainer_cls(model=student, teacher_model=teacher, args=args, train_dataset=toy_rows(),
                       processing_class=tokenizer)


def train_and_check(trainer):
    before = {n: p.clone() for n, p in trainer.model.named_parameters()}
    teacher_before = {n: p.clone() for n, p in trainer.teacher_model.named_parameters()}
    trainer.train()
    assert all(not torch.equal(p, trainer.model.get_parameter(n)) for n, p in before.items())
    assert all(torch.equal(p, trainer.teacher_model.get_parameter(n)) for n, p in teacher_before.items())
    logs = trainer.state.log_history[0]
    for name in METRICS:
        assert f"tsd_kd/{name}" in logs
    assert 0.0 < logs["tsd_kd/gate_mean"] < 1.0 and logs["tsd_kd/opener_len"] >= 1.0
    return logs


@pytest.mark.parametrize("lmbda", [0.0, 1.0])
def test_trains_two_steps_and_logs(tmp_path, tiny_student, tiny_teacher, tokenizer, lmbda):
    logs = train_and_check(make_trainer(tmp_path, tiny_student, tiny_teacher, tokenizer, lmbda=lmbda))
    assert logs["tsd_kd/on_policy"] == lmbda


def test_reference_code_compat_trains(tmp_path, tiny_student, tiny_teacher, tokenizer):
    train_and_check(make_trainer(tmp_path, tiny_student, tiny_teacher, tokenizer, lmbda=0.0,
                                 reference_code_compat=True))


def test_adaptive_opener_trains_with_a_bounded_history(tmp_path, tiny_student, tiny_teacher, tokenizer):
    trainer = make_trainer(tmp_path, tiny_student, tiny_teacher, tokenizer, lmbda=0.0, adaptive_opener=True,
                           adaptive_history=6, max_steps=3)
    logs = train_and_check(trainer)
    assert len(trainer.gap_history) == 6  # 3 steps x 4 rows, capped
    assert 0.0 <= logs["tsd_kd/opener_ratio"] <= 1.0


@pytest.mark.parametrize("given_count", [False, True])
def test_ablated_loss_equals_kd_trainer(tmp_path, tiny_student, tiny_teacher, tokenizer, given_count):
    """Table 3 row 1: no gate, α = γ = 0 is GKD's generalized JSD, with the same normalisation as KDTrainer."""
    common = dict(lmbda=0.0, beta=0.7, temperature=1.5)
    tsd = make_trainer(tmp_path, tiny_student, tiny_teacher, tokenizer, use_gate=False, indirect_coef=0.0,
                       entropy_coef=0.0, loss_chunk_size=0, **common)
    kd = make_trainer(tmp_path, tiny_student, tiny_teacher, tokenizer, config_cls=KDConfig, trainer_cls=KDTrainer,
                      loss_chunk_size=0, divergence="generalized_jsd", **common)
    batch = tsd._prepare_inputs(tsd.data_collator([tsd.train_dataset[i] for i in range(4)]))
    count = {"num_items_in_batch": torch.tensor(3 * (batch["labels"][:, 1:] != -100).sum().item())}
    kwargs = count if given_count else {}
    expected = kd.compute_loss(kd.model, batch, **kwargs)
    loss, outputs = tsd.compute_loss(tsd.model, batch, return_outputs=True, **kwargs)
    assert outputs == {}
    torch.testing.assert_close(loss, expected, rtol=0, atol=1e-6)
    # the logged direct term is this micro-batch's mean whether or not the global count is given
    direct = tsd._metrics["train"]["tsd_kd/direct"][-1]
    assert direct == pytest.approx(expected.item() * (3 if given_count else 1), rel=1e-5)


@pytest.mark.parametrize("adaptive_opener", [False, True])
def test_chunked_path_equals_full_logits(tmp_path, tiny_student, tiny_teacher, tokenizer, adaptive_opener):
    """The default chunked loss (from hidden states) gives the full-logits loss, its gradient and its metrics."""
    options = dict(lmbda=0.0, top_k=3, temperature=1.3, adaptive_opener=adaptive_opener)
    chunked = make_trainer(tmp_path, tiny_student, tiny_teacher, tokenizer, loss_chunk_size=5, **options)
    dense = make_trainer(tmp_path, tiny_student, tiny_teacher, tokenizer, loss_chunk_size=0, **options)
    batch = dense._prepare_inputs(dense.data_collator([dense.train_dataset[i] for i in range(4)]))
    losses, grads = [], []
    for trainer in (chunked, dense):
        trainer.model.zero_grad()
        losses.append(trainer.compute_loss(trainer.model, batch, num_items_in_batch=torch.tensor(50)))
        losses[-1].backward()
        grads.append([p.grad.clone() for p in trainer.model.parameters()])
    torch.testing.assert_close(losses[0], losses[1], rtol=1e-5, atol=1e-6)
    for actual, expected in zip(*grads):
        torch.testing.assert_close(actual, expected, rtol=1e-4, atol=1e-6)
    for name in METRICS:
        key = f"tsd_kd/{name}"
        assert chunked._metrics["train"][key][-1] == pytest.approx(dense._metrics["train"][key][-1], rel=1e-4)


INVARIANCE_TERMS = {
    "indirect": {"indirect_coef": 1.0, "entropy_coef": 0.0},
    "entropy": {"indirect_coef": 0.0, "entropy_coef": 1.0},
    "all-adaptive-logits": {"adaptive_opener": True, "loss_chunk_size": 0},
}


def one_sgd_step(output_dir, tokenizer, batch: int, accumulation: int, terms: dict):
    """One SGD step (lr 1, no clipping) on the toy models from the 8 rows of `toy_rows()`: (this process's summed
    micro-batch losses, the student's weights after the step)."""
    from trl_reasoning_distill.toy.models import build_student, build_teacher

    student = build_student(tokenizer, seed=1)
    trainer = make_trainer(output_dir, student, build_teacher(tokenizer, seed=2), tokenizer, lmbda=0.0, top_k=3,
                           per_device_train_batch_size=batch, gradient_accumulation_steps=accumulation, max_steps=1,
                           optim="sgd", learning_rate=1.0, max_grad_norm=0.0, **terms)
    losses = []

    def recorded(*args, _compute_loss=trainer.compute_loss, **kwargs):
        losses.append(_compute_loss(*args, **kwargs))
        return losses[-1]

    trainer.compute_loss = recorded
    trainer.train()
    return sum(loss.item() for loss in losses), [p.detach().clone() for p in student.parameters()]


def assert_same_step(actual, expected):
    assert actual[0] == pytest.approx(expected[0], abs=1e-6)
    for weight, reference in zip(actual[1], expected[1], strict=True):
        torch.testing.assert_close(weight, reference, rtol=0, atol=1e-6)


@pytest.mark.parametrize("terms", list(INVARIANCE_TERMS))
def test_loss_and_update_do_not_depend_on_the_per_device_batch(tmp_path, tokenizer, terms):
    """Items 4 and 7 of the scale issue: 8 x 1, 4 x 2 and 2 x 4 (batch x accumulation) on one process give the same
    loss and the same SGD update: each term is normalised over the whole global batch, not per micro-batch."""
    results = [one_sgd_step(tmp_path / f"{b}x{a}", tokenizer, b, a, INVARIANCE_TERMS[terms])
               for b, a in ((8, 1), (4, 2), (2, 4))]
    for other in results[1:]:
        assert_same_step(other, results[0])


def ddp_step(output_dir: str, terms: str) -> None:
    """Run by `test_two_processes_give_the_one_process_update` in each of 2 processes (4 rows each)."""
    from trl_reasoning_distill.toy import load_toy_tokenizer

    loss, weights = one_sgd_step(Path(output_dir), load_toy_tokenizer(), 4, 1, INVARIANCE_TERMS[terms])
    rank = int(os.environ["RANK"])
    torch.save({"loss": loss, "weights": weights}, Path(output_dir) / f"ddp_{rank}.pt")


@pytest.mark.slow
def test_two_processes_give_the_one_process_update(tmp_path, tokenizer):
    """DDP (2 processes, gloo, 4 rows each) against one process with the 8 rows: the mean of the processes' losses
    and the updated weights match (the counts are gathered over processes)."""
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).parents[1]), "OMP_NUM_THREADS": "1"}
    subprocess.run([sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_port", "29531",
                    __file__, str(tmp_path), "indirect"], check=True, timeout=600, env=env)
    ranks = [torch.load(tmp_path / f"ddp_{rank}.pt") for rank in (0, 1)]
    single = one_sgd_step(tmp_path / "single", tokenizer, 8, 1, INVARIANCE_TERMS["indirect"])
    assert_same_step(((ranks[0]["loss"] + ranks[1]["loss"]) / 2, ranks[0]["weights"]), single)


def test_paper_defaults(tmp_path):
    args = TSDKDConfig(output_dir=str(tmp_path))
    paper = dict(lmbda=1.0, beta=0.9, temperature=1.0, top_k=10, opener_ratio=0.1, entropy_ratio=0.1,
                 indirect_coef=0.1, entropy_coef=1.0, tau=1.0, use_gate=True, entropy_scope="sequence",
                 reference_code_compat=False, adaptive_opener=False, adaptive_window=5, max_new_tokens=128)
    assert {k: getattr(args, k) for k in paper} == paper


@pytest.mark.parametrize("field, value", [
    ("opener_ratio", 1.5), ("entropy_ratio", -0.1), ("top_k", 0), ("indirect_coef", -1.0), ("entropy_coef", -1.0),
    ("tau", 0.0), ("entropy_scope", "token"), ("adaptive_window", 0), ("adaptive_history", 0), ("beta", 2.0),
])
def test_bad_values_raise(tmp_path, field, value):
    with pytest.raises(ValueError, match=field) as error:
        TSDKDConfig(output_dir=str(tmp_path), **{field: value})
    assert field == "beta" or str(value) in str(error.value)  # GKDConfig's own beta message omits the value


def test_reference_code_compat_needs_one_ratio(tmp_path):
    with pytest.raises(ValueError, match="reference_code_compat"):
        TSDKDConfig(output_dir=str(tmp_path), reference_code_compat=True, entropy_ratio=0.2)


def test_needs_a_tsd_kd_config(tmp_path, tiny_student, tiny_teacher, tokenizer):
    with pytest.raises(ValueError, match="TSDKDConfig"):
        make_trainer(tmp_path, tiny_student, tiny_teacher, tokenizer, config_cls=KDConfig)


if __name__ == "__main__":
    ddp_step(sys.argv[1], sys.argv[2])
    if torch.distributed.is_initialized():  # gloo's threads may abort the process at exit otherwise
        torch.distributed.destroy_process_group()
