"""Progress bars of the long phases: the throughput bar, the training bar, and the loops that show them (rejection
sampling and VCRD rollouts called batch by batch draw what one call draws; CoTD-PO rounds keep their logs)."""

import io
import json
from types import SimpleNamespace

import pytest
import torch
import tqdm
from conftest import CPU_TRAINING
from datasets import Dataset
from transformers import Trainer, TrainingArguments

from trl_reasoning_distill.baselines import rejection_sample
from trl_reasoning_distill.evaluation import encode_prompts
from trl_reasoning_distill.generation import HFGenerator
from trl_reasoning_distill.progress import ThroughputBar, TrainingBar, show_training_progress, tqdm_class
from trl_reasoning_distill.toy import toy_dataset
from trl_reasoning_distill.vcrd.data import sample_vcrd_rollouts

SHOWN = {"disable": False, "mininterval": 0}  # tests run with TQDM_DISABLE=1 (conftest)


def test_throughput_bar_counts_items_and_tokens():
    out = io.StringIO()
    with ThroughputBar(10, "sampling", unit="prompt", initial=2, file=out, **SHOWN) as bar:
        bar.update(4, tokens=120)
        bar.update(2, tokens=30, kept=5)
        assert bar.bar.n == bar.count == 8 and bar.tokens == 150 and bar.tokens_per_second() > 0
    text = out.getvalue()
    assert "sampling" in text and "8/10" in text and "prompt/s" in text
    assert "tok/s=" in text and "kept=5" in text


def test_throughput_bar_without_tokens_has_no_rate_and_disabled_bar_is_silent():
    out = io.StringIO()
    with ThroughputBar(3, "runs", unit="run", file=out, **SHOWN) as bar:
        bar.update(1)
    assert "tok/s" not in out.getvalue()
    silent = io.StringIO()
    with ThroughputBar(3, "off", enabled=False, file=silent) as bar:
        bar.update(2, tokens=10)
    assert silent.getvalue() == "" and bar.count == 2 and bar.tokens == 10


def test_text_bar_outside_a_notebook():
    assert tqdm_class() is tqdm.tqdm


def test_training_bar_shows_loss_and_metrics():
    out = io.StringIO()
    bar = TrainingBar("tsd_kd/gate_mean", desc="round 1/2: train", file=out, **SHOWN)
    state = SimpleNamespace(is_world_process_zero=True, max_steps=4, global_step=0)
    bar.on_train_begin(None, state, None)
    for step in (1, 2):
        state.global_step = step
        bar.on_step_end(None, state, None)
        bar.on_log(None, state, None, logs={"loss": 1.0 / step, "tsd_kd/gate_mean": 0.5, "epoch": 0.1})
    bar.on_train_end(None, state, None)
    text = out.getvalue()
    assert "round 1/2: train" in text and "2/4" in text and "loss=0.5" in text and "gate_mean=0.5" in text


def test_show_training_progress_replaces_printed_logs(tiny_student, tokenizer, tmp_path, capsys):
    ids = tokenizer("12+3=15", add_special_tokens=False)["input_ids"]
    data = Dataset.from_list([{"input_ids": ids, "labels": ids}] * 4)
    args = TrainingArguments(output_dir=str(tmp_path), max_steps=2, per_device_train_batch_size=2,
                             **CPU_TRAINING)  # disable_tqdm=True: the Trainer would print each log
    trainer = Trainer(model=tiny_student, args=args, train_dataset=data)
    bar = show_training_progress(trainer, "grad_norm")
    trainer.train()
    callbacks = trainer.callback_handler.callbacks
    assert bar in callbacks and not {"PrinterCallback", "ProgressCallback"} & {type(cb).__name__ for cb in callbacks}
    assert "'loss'" not in capsys.readouterr().out
    assert [log["step"] for log in trainer.state.log_history if "loss" in log] == [1, 2]


class RecordingGenerator(HFGenerator):
    """An HFGenerator that records how many prompts each call got and what it returned."""

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.calls, self.groups = [], []

    def generate(self, prompt_ids, **kwargs):
        groups = super().generate(prompt_ids, **kwargs)
        self.calls.append(len(prompt_ids))
        self.groups += groups
        return groups


def token_ids(groups):
    return [[sample.token_ids for sample in group] for group in groups]


def test_unseeded_rejection_sampling_in_whole_batches_draws_what_one_call_draws(tiny_teacher, tokenizer):
    data = toy_dataset("train", 5, seed=4).select_columns(["prompt", "answer"])
    settings = dict(n=2, max_new_tokens=6, temperature=1.0)
    generator = RecordingGenerator(tiny_teacher, tokenizer, batch_size=4)
    torch.manual_seed(11)
    rejection_sample(generator, tokenizer, data, progress=False, **settings)
    torch.manual_seed(11)
    whole = HFGenerator(tiny_teacher, tokenizer, batch_size=4).generate(encode_prompts(tokenizer, data["prompt"]),
                                                                         **settings)
    assert generator.calls == [2, 2, 1]  # lcm(batch 4, n 2) / n prompts per call: whole generate batches
    assert token_ids(generator.groups) == token_ids(whole)


def test_unseeded_vcrd_rollouts_batch_by_batch_match_one_call_per_model(tiny_teacher, tiny_student, tokenizer):
    data = toy_dataset("train", 5, seed=5)
    torch.manual_seed(12)
    rollouts = sample_vcrd_rollouts(tiny_teacher, tiny_student, tokenizer, data, max_new_tokens=6, batch_size=2,
                                    progress=False)
    torch.manual_seed(12)
    prompt_ids = encode_prompts(tokenizer, data["prompt"])
    expected = {column: [group[0].text for group in HFGenerator(model, tokenizer, batch_size=2).generate(
        prompt_ids, n=1, max_new_tokens=6, temperature=0.8, top_p=0.95)]
        for column, model in (("teacher_completion", tiny_teacher), ("student_completion", tiny_student))}
    assert rollouts["teacher_completion"] == expected["teacher_completion"]
    assert rollouts["student_completion"] == expected["student_completion"]


@pytest.mark.parametrize("seed", [None, 3])
def test_rejection_sampling_bar_reaches_every_prompt(tiny_teacher, tokenizer, seed, monkeypatch):
    bars = []

    class Recorded(ThroughputBar):
        def __init__(self, *args, **kwargs):
            super().__init__(*args, **kwargs)
            bars.append(self)

    monkeypatch.setattr("trl_reasoning_distill.baselines.ThroughputBar", Recorded)
    data = toy_dataset("train", 5, seed=4).select_columns(["prompt", "answer"])
    rejection_sample(tiny_teacher, tokenizer, data, n=2, max_new_tokens=5, batch_size=2, seed=seed)
    (bar,) = bars
    assert bar.bar.total == 5 and bar.count == 5 and 5 * 2 <= bar.tokens <= 5 * 2 * 5  # 2 samples of 1-5 tokens


def test_cotd_po_rounds_keep_their_training_logs(tokenizer, tmp_path, capsys):
    from trl_reasoning_distill.cotd_po import CoTDPOConfig, CoTDPORoundsConfig, ToyCorrectnessScorer, run_rounds
    from trl_reasoning_distill.cotd_po.rounds import round_dir
    from trl_reasoning_distill.toy.models import build_student

    pool = Dataset.from_list([{**row, "rationale": "1+1=2"} for row in toy_dataset("train", 4, seed=3)
                              .select_columns(["id", "prompt"])])
    args = CoTDPOConfig(output_dir=str(tmp_path), **{**CPU_TRAINING, "max_steps": 2, "per_device_train_batch_size": 2,
                        "learning_rate": 1e-3, "max_length": 128, "instruction_template": "{prompt}",
                        "thought_prefix": "<think>", "answer_prefix": "</think>"})
    rounds = CoTDPORoundsConfig(num_rounds=1, prompts_per_round=4, num_candidates=2, max_new_tokens=4)
    run_rounds(build_student(tokenizer, seed=1), tokenizer, pool, ToyCorrectnessScorer(), args, rounds)
    summary = json.loads((round_dir(tmp_path, 1) / "round.json").read_text())
    assert [log["step"] for log in summary["log_history"] if "loss" in log] == [1, 2]
    assert "'loss'" not in capsys.readouterr().out  # the round's bar, not a printed dict per log
