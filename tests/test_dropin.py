"""Drop-in with `GKDTrainer` and `DPOTrainer` inputs: every dataset form they accept trains and evaluates in our
trainers (a `Dataset`, an `IterableDataset` with and without known columns, `DatasetDict`, `IterableDatasetDict` and a
dict of named evaluation sets; standard and conversational rows), with the row checks of validation.py applied to
iterable datasets as each row is read. Also the cases of TRL's own GKD trainer tests that apply to `KDTrainer`
(train with evaluation and a checkpoint, the generation config, a loss over every completion token), GKD's
"migrate to DistillationTrainer" notice silenced for our classes only, and `use_liger_kernel` refused by name."""

import logging
import os

import pytest
import torch
from conftest import CPU_TRAINING
from datasets import Dataset, DatasetDict, IterableDataset, IterableDatasetDict
from test_cotd_po_trainer import TOY_FORMAT, group_rows

from trl_reasoning_distill._trl import GKDConfig, GKDTrainer
from trl_reasoning_distill.cotd_po import CoTDPOConfig, CoTDPOTrainer
from trl_reasoning_distill.kd_config import KDConfig
from trl_reasoning_distill.kd_trainer import KDTrainer
from trl_reasoning_distill.toy.models import build_student, build_teacher
from trl_reasoning_distill.toy.task import sample_problems, solution
from trl_reasoning_distill.tsd_kd import TSDKDConfig, TSDKDTrainer

STEPS = dict(max_steps=1, per_device_train_batch_size=4, per_device_eval_batch_size=4, max_new_tokens=8,
             max_length=128)


def kd_rows(n=8, conversational=False) -> list[dict]:
    problems = sample_problems("train", n, seed=1)
    if conversational:
        return [{"prompt": [{"role": "user", "content": p.prompt}],
                 "completion": [{"role": "assistant", "content": solution(p, "ltr")}]} for p in problems]
    return [{"prompt": p.prompt, "completion": solution(p, "ltr")} for p in problems]


def stream(rows: list[dict]) -> IterableDataset:
    """A streaming dataset whose `column_names` is None (a generator, as from `load_dataset(..., streaming=True)` of
    JSON files without a schema)."""

    def generate():
        yield from rows

    dataset = IterableDataset.from_generator(generate)
    assert dataset.column_names is None
    return dataset


def forms(rows: list[dict]) -> dict:
    """`(train_dataset, eval_dataset)` of every form GKD and DPO accept, by name."""
    ds = Dataset.from_list(rows)
    return {
        "dataset": (ds, ds),
        "iterable": (ds.to_iterable_dataset(), ds.to_iterable_dataset()),
        "streaming_unknown_columns": (stream(rows), stream(rows)),
        "dataset_dict": (ds, DatasetDict(small=ds.select(range(4)), full=ds)),
        "iterable_dataset_dict": (ds, IterableDatasetDict(small=ds.select(range(4)).to_iterable_dataset())),
        "dict_of_named_sets": (ds, {"mapped": ds, "streamed": stream(rows)}),
    }


FORMS = list(forms(kd_rows()))


def eval_names(eval_dataset) -> list[str]:
    return [f"eval_{name}_loss" for name in eval_dataset] if isinstance(eval_dataset, dict) else ["eval_loss"]


def kd_trainer(tmp_path, train, eval_dataset, tokenizer, config_cls=KDConfig, trainer_cls=KDTrainer, **overrides):
    args = config_cls(output_dir=str(tmp_path), **{**CPU_TRAINING, **STEPS, **overrides})
    return trainer_cls(model=build_student(tokenizer, seed=1), teacher_model=build_teacher(tokenizer, seed=2),
                       args=args, train_dataset=train, eval_dataset=eval_dataset, processing_class=tokenizer)


@pytest.mark.parametrize("conversational", [False, True], ids=["standard", "conversational"])
@pytest.mark.parametrize("form", FORMS)
def test_kd_trainer_accepts_every_dataset_form(tmp_path, tokenizer, form, conversational):
    train, eval_dataset = forms(kd_rows(conversational=conversational))[form]
    trainer = kd_trainer(tmp_path, train, eval_dataset, tokenizer, lmbda=0.0)
    trainer.train()
    metrics = trainer.evaluate()
    assert all(torch.isfinite(torch.tensor(metrics[name])) for name in eval_names(eval_dataset)), metrics
    if isinstance(eval_dataset, dict):  # the container's type is kept, each set converted
        assert type(trainer.eval_dataset) is type(eval_dataset)


@pytest.mark.parametrize("form", ["streaming_unknown_columns", "iterable_dataset_dict", "dict_of_named_sets"])
def test_a_subclass_accepts_the_forms_through_the_shared_path(tmp_path, tokenizer, form):
    train, eval_dataset = forms(kd_rows())[form]
    trainer = kd_trainer(tmp_path, train, eval_dataset, tokenizer, TSDKDConfig, TSDKDTrainer, top_k=4, lmbda=0.0)
    trainer.train()
    metrics = trainer.evaluate()
    assert set(eval_names(eval_dataset)) <= set(metrics)
    assert any(key.startswith("tsd_kd/") for key in trainer.state.log_history[0])


@pytest.mark.parametrize("method", ["vcrd", "brts", "gen_ssd"])
def test_the_other_subclasses_accept_streams_and_named_eval_sets(tmp_path, method):
    """VCRD converts its own columns first (`to_vcrd_dataset`), BRTS and Gen-SSD read gold answers: a stream with
    unknown columns trains, and named sets (one of them streamed) evaluate, also when given to `evaluate`."""
    from test_model_cards import answer_rows, make_trainer
    from test_vcrd_trainer import vcrd_rows

    from trl_reasoning_distill.toy import load_toy_student, load_toy_teacher, load_toy_tokenizer

    tokenizer = load_toy_tokenizer()
    rows = vcrd_rows(4) if method == "vcrd" else answer_rows(4)
    built = make_trainer(method, tmp_path, tokenizer)  # the method's test settings, then the same on every form
    trainer = type(built)(model=load_toy_student(), teacher_model=load_toy_teacher(), args=built.args,
                          train_dataset=stream(rows.to_list()),
                          eval_dataset=DatasetDict(mapped=rows, streamed=rows.to_iterable_dataset()),
                          processing_class=tokenizer)
    trainer.train()
    assert {"eval_mapped_loss", "eval_streamed_loss"} <= set(trainer.evaluate())
    assert {"eval_a_loss", "eval_b_loss"} <= set(trainer.evaluate({"a": stream(rows.to_list()), "b": rows}))


def test_evaluate_accepts_a_dict_of_new_sets(tmp_path, tokenizer):
    rows = kd_rows()
    trainer = kd_trainer(tmp_path, Dataset.from_list(rows), None, tokenizer, lmbda=0.0)
    metrics = trainer.evaluate({"a": Dataset.from_list(rows[:4]), "b": stream(kd_rows(conversational=True))})
    assert {"eval_a_loss", "eval_b_loss"} <= set(metrics)


@pytest.mark.parametrize("form", FORMS)
def test_cotd_po_trainer_accepts_every_dataset_form(tmp_path, tokenizer, form):
    train, eval_dataset = forms(group_rows(n=4))[form]
    args = CoTDPOConfig(output_dir=str(tmp_path), max_steps=1, per_device_train_batch_size=2,
                        per_device_eval_batch_size=2, gradient_accumulation_steps=1, warmup_steps=0, max_length=128,
                        **{**CPU_TRAINING, **TOY_FORMAT})
    trainer = CoTDPOTrainer(model=build_student(tokenizer, seed=1), args=args, train_dataset=train,
                            eval_dataset=eval_dataset, processing_class=tokenizer)
    trainer.train()
    metrics = trainer.evaluate()
    assert all(torch.isfinite(torch.tensor(metrics[name])) for name in eval_names(eval_dataset)), metrics


# --- iterable datasets: the first row at construction, every other row as it is read ----------------------------


@pytest.mark.parametrize("known_columns", [True, False])
def test_a_bad_first_streamed_row_is_refused_at_construction(tmp_path, tokenizer, known_columns):
    rows = kd_rows()
    rows[0]["prompt"] = "  "
    train = Dataset.from_list(rows).to_iterable_dataset() if known_columns else stream(rows)
    with pytest.raises(ValueError, match="the training dataset: row 0 has an empty prompt"):
        kd_trainer(tmp_path, train, None, tokenizer)


@pytest.mark.parametrize("known_columns", [True, False])
def test_a_bad_later_streamed_row_stops_training_when_read(tmp_path, tokenizer, known_columns):
    rows = kd_rows()
    rows[5]["prompt"] = ""
    train = Dataset.from_list(rows).to_iterable_dataset() if known_columns else stream(rows)
    trainer = kd_trainer(tmp_path, train, None, tokenizer, max_steps=2)  # built: only the first row is read
    with pytest.raises(ValueError, match="the training dataset: row 5 has an empty prompt"):
        trainer.train()


def test_a_streamed_row_over_max_length_is_named_when_read(tmp_path, tokenizer):
    rows = kd_rows()
    rows[6]["completion"] = "1+" * 200
    trainer = kd_trainer(tmp_path, stream(rows), None, tokenizer, max_steps=2)
    with pytest.raises(ValueError, match=r"row 6's prompt \+ completion has \d+ tokens, over max_length=128"):
        trainer.train()


def test_streamed_rows_without_a_prompt_or_a_completion_are_named(tmp_path, tokenizer):
    rows = [{"question": "1+2=?"}]
    with pytest.raises(ValueError, match="needs a 'messages' or a 'prompt' column; row 0 has"):
        kd_trainer(tmp_path, stream(rows), None, tokenizer)
    with pytest.raises(ValueError, match="row 0 has no completion.*lmbda=1.0 or seq_kd=True"):
        kd_trainer(tmp_path, stream([{"prompt": "1+2=?"}]), None, tokenizer, lmbda=0.5)


def test_an_empty_stream_and_a_bad_named_eval_set_are_refused(tmp_path, tokenizer):
    with pytest.raises(ValueError, match="the training dataset is empty"):
        kd_trainer(tmp_path, stream([]), None, tokenizer)
    rows = kd_rows()
    bad = [dict(rows[0], prompt=None)]
    with pytest.raises(ValueError, match="the evaluation dataset 'bad': row 0 has no prompt"):
        kd_trainer(tmp_path, Dataset.from_list(rows), DatasetDict(good=Dataset.from_list(rows),
                                                                   bad=Dataset.from_list(bad)), tokenizer)


@pytest.mark.parametrize("method", ["brts", "gen_ssd"])
def test_a_streamed_row_without_a_gold_answer_stops_grading_trainers_when_read(tmp_path, method):
    """BRTS and Gen-SSD (`keep_only_correct`) grade against `answer`: a None answer would be graded as "None"."""
    from test_model_cards import answer_rows, make_trainer

    from trl_reasoning_distill.toy import load_toy_student, load_toy_teacher, load_toy_tokenizer

    tokenizer = load_toy_tokenizer()
    rows = answer_rows(4).to_list()
    rows[3]["answer"] = None
    built = make_trainer(method, tmp_path, tokenizer)
    args = built.args
    args.max_steps = 2
    if method == "gen_ssd":
        args.keep_only_correct = True
    trainer = type(built)(model=load_toy_student(), teacher_model=load_toy_teacher(), args=args,
                          train_dataset=stream(rows), processing_class=tokenizer)
    with pytest.raises(ValueError, match="the training dataset: row 3 has no gold answer"):
        trainer.train()


def test_cotd_po_checks_streamed_groups_when_read(tmp_path, tokenizer):
    rows = group_rows(n=4)
    rows[3]["rewards"] = rows[3]["rewards"][:-1]
    args = CoTDPOConfig(output_dir=str(tmp_path), max_steps=2, per_device_train_batch_size=2,
                        gradient_accumulation_steps=1, max_length=128, **{**CPU_TRAINING, **TOY_FORMAT})
    trainer = CoTDPOTrainer(model=build_student(tokenizer, seed=1), args=args, train_dataset=stream(rows),
                            processing_class=tokenizer)
    with pytest.raises(ValueError, match="row 3: 3 completions but 2 rewards"):
        trainer.train()


# --- TRL's GKD trainer tests, on KDTrainer --------------------------------------------------------------------


def test_train_with_evaluation_and_checkpoints_as_gkd(tmp_path, tokenizer):
    """TRL's `test_gkd_trainer`: conversational data, evaluation every 2 steps, a checkpoint at step 2."""
    ds = Dataset.from_list([{"messages": r["prompt"] + r["completion"]} for r in kd_rows(conversational=True)])
    trainer = kd_trainer(tmp_path, ds, ds.select(range(4)), tokenizer, max_steps=4, per_device_train_batch_size=2,
                         per_device_eval_batch_size=2, eval_strategy="steps", eval_steps=2, save_strategy="steps",
                         save_steps=2, dataloader_drop_last=True)
    trainer.train()
    assert trainer.state.log_history[-1]["train_loss"] is not None
    assert [h["step"] for h in trainer.state.log_history if "eval_loss" in h] == [2, 4]
    assert "model.safetensors" in os.listdir(tmp_path / "checkpoint-2")


def test_generation_config_as_gkd(tmp_path, tokenizer):
    """TRL's `test_generation_config_init`."""
    rows = Dataset.from_list(kd_rows())
    trainer = kd_trainer(tmp_path, rows, rows, tokenizer)
    args = trainer.args
    assert trainer.generation_config.pad_token_id == tokenizer.pad_token_id
    assert trainer.generation_config.eos_token_id == trainer.model.generation_config.eos_token_id
    assert trainer.generation_config.max_new_tokens == args.max_new_tokens
    assert trainer.generation_config.temperature == args.temperature
    assert trainer.generation_config.top_k == 0


def test_loss_covers_every_completion_token_with_prompts_of_different_lengths(tmp_path, tokenizer):
    """TRL's `test_loss_covers_all_completion_tokens_with_variable_length_prompts` and
    `test_loss_normalizes_by_num_items_in_batch`: the mean over the batch's loss tokens equals the sum over the
    global count when that count is this batch's, and halves when it doubles."""
    rows = [{"prompt": "1+2=?", "completion": "<think>1+2=3</think>\\boxed{3}"},
            {"prompt": "11+22-3+14-5+6=?", "completion": "\\boxed{45}"}]
    trainer = kd_trainer(tmp_path, Dataset.from_list(rows), None, tokenizer)
    batch = trainer._prepare_inputs(trainer.data_collator([trainer.train_dataset[i] for i in range(2)]))
    first_loss_token = (batch["labels"][0] != -100).nonzero()[0].item()
    assert batch["prompts"].shape[1] > first_loss_token - (batch["attention_mask"][0] == 0).sum().item()
    count = (batch["labels"][:, 1:] != -100).sum()
    with torch.no_grad():
        mean = trainer.compute_loss(trainer.model, batch)
        share = trainer.compute_loss(trainer.model, batch, num_items_in_batch=count)
        half = trainer.compute_loss(trainer.model, batch, num_items_in_batch=2 * count)
    torch.testing.assert_close(share, mean, rtol=1e-5, atol=1e-7)
    torch.testing.assert_close(half, mean / 2, rtol=1e-5, atol=1e-7)


# --- TRL integration details ---------------------------------------------------------------------------------


def notices(caplog) -> list[str]:
    return [r.getMessage() for r in caplog.records if "fully covered by `DistillationTrainer`" in r.getMessage()]


def test_distillation_notice_is_silenced_for_our_trainers_only(tmp_path, tokenizer, caplog):
    rows = Dataset.from_list(kd_rows())
    gkd_logger = GKDTrainer.__module__  # its level may have been raised by an earlier quiet_cpu_run in this process
    with caplog.at_level(logging.WARNING, logger=gkd_logger):
        kd_trainer(tmp_path / "kd", rows, None, tokenizer, lmbda=1.0, temperature=1.0)
    assert notices(caplog) == []
    with caplog.at_level(logging.WARNING, logger=gkd_logger):  # GKD itself still warns, after ours was built
        args = GKDConfig(output_dir=str(tmp_path / "gkd"), lmbda=1.0, temperature=1.0, **CPU_TRAINING)
        GKDTrainer(model=build_student(tokenizer, seed=1), teacher_model=build_student(tokenizer, seed=2), args=args,
                   train_dataset=Dataset.from_list([{"messages": r["prompt"] + r["completion"]}
                                                    for r in kd_rows(2, conversational=True)]),
                   processing_class=tokenizer)
    assert len(notices(caplog)) == 1


@pytest.mark.parametrize("config_cls", [KDConfig, TSDKDConfig])
def test_use_liger_kernel_is_refused_naming_the_chunked_loss(tmp_path, config_cls):
    with pytest.raises(ValueError, match=r"use_liger_kernel=True is not supported.*loss_chunk_size"):
        config_cls(output_dir=str(tmp_path), use_liger_kernel=True, **CPU_TRAINING)
