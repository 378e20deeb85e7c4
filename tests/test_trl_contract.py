"""Contract of the TRL / transformers surface our trainers depend on (shared/TRL_NOTES.md section 5).

Names, `inspect.signature` parameters and a few output keys, so that a TRL release that moves or reshapes a hook
fails here, by name, instead of silently mis-training.
"""

import dataclasses
import inspect

import pytest
import torch
import transformers

from trl_reasoning_distill._trl import (
    DPOConfig,
    DPOTrainer,
    GKDConfig,
    GKDTrainer,
    SFTConfig,
    SFTTrainer,
    unwrap_model_for_generation,
)


def params(function) -> list[str]:
    return list(inspect.signature(function).parameters)


def test_trl_version_is_the_pinned_one():
    import trl

    assert trl.__version__.startswith("1.16"), f"contract written for trl 1.16, found {trl.__version__}"


def test_gkd_trainer_is_an_sft_trainer():
    # KDTrainer borrows `SFTTrainer.training_step`, whose zero-argument `super()` needs this
    assert issubclass(GKDTrainer, SFTTrainer)
    assert issubclass(GKDConfig, SFTConfig)
    assert issubclass(SFTTrainer, transformers.Trainer)


def test_gkd_compute_loss_signature():
    assert params(GKDTrainer.compute_loss) == ["self", "model", "inputs", "return_outputs", "num_items_in_batch"]
    defaults = inspect.signature(GKDTrainer.compute_loss).parameters
    assert defaults["return_outputs"].default is False
    assert defaults["num_items_in_batch"].default is None


def test_training_step_signatures():
    assert params(GKDTrainer.training_step) == ["self", "model", "inputs", "num_items_in_batch"]
    # GKD draws on-policy samples in its own training_step; KDTrainer skips that with SFT's
    assert "training_step" in vars(GKDTrainer)
    assert "training_step" in vars(SFTTrainer)
    assert GKDTrainer.training_step is not SFTTrainer.training_step
    # SFT's forwards whatever it gets to transformers' Trainer.training_step(model, inputs, num_items_in_batch)
    inspect.signature(SFTTrainer.training_step).bind("self", "model", "inputs", None)
    inspect.signature(SFTTrainer.training_step).bind("self", "model", "inputs", num_items_in_batch=None)
    assert params(transformers.Trainer.training_step) == ["self", "model", "inputs", "num_items_in_batch"]


def test_generate_on_policy_outputs_is_a_static_method_with_three_arguments():
    assert isinstance(inspect.getattr_static(GKDTrainer, "generate_on_policy_outputs"), staticmethod)
    assert params(GKDTrainer.generate_on_policy_outputs) == ["model", "inputs", "generation_config"]


def test_generate_on_policy_outputs_returns_ids_mask_labels(tokenizer, tiny_student):
    prompts = [tokenizer.encode("1+2=?"), tokenizer.encode("10-3+4=?")]
    width = max(map(len, prompts))
    ids = torch.tensor([[tokenizer.pad_token_id] * (width - len(p)) + p for p in prompts])
    mask = torch.tensor([[0] * (width - len(p)) + [1] * len(p) for p in prompts])
    config = transformers.GenerationConfig(max_new_tokens=4, do_sample=False, eos_token_id=tokenizer.eos_token_id,
                                           pad_token_id=tokenizer.pad_token_id)
    out = GKDTrainer.generate_on_policy_outputs(tiny_student.eval(), {"prompts": ids, "prompt_attention_mask": mask},
                                                config)
    assert len(out) == 3
    sequences, attention_mask, labels = out
    assert sequences.shape == attention_mask.shape == labels.shape
    assert sequences.shape[0] == 2 and width < sequences.shape[1] <= width + 4
    assert torch.equal(sequences[:, :width], ids)
    assert torch.equal(attention_mask[:, :width], mask)
    assert (labels[:, :width] == -100).all()  # loss on the completion only


def test_generalized_jsd_loss_signature():
    assert isinstance(inspect.getattr_static(GKDTrainer, "generalized_jsd_loss"), staticmethod)
    assert params(GKDTrainer.generalized_jsd_loss) == [
        "student_logits", "teacher_logits", "labels", "beta", "temperature", "reduction", "num_items_in_batch"
    ]
    logits = torch.randn(2, 3, 5)
    loss = GKDTrainer.generalized_jsd_loss(logits, logits.clone(), beta=0.5)
    assert loss.ndim == 0 and loss.abs().item() < 1e-5


def test_get_batch_samples_signature():
    assert params(transformers.Trainer.get_batch_samples) == ["self", "epoch_iterator", "num_batches", "device"]


def test_trainer_honours_loss_is_scaled_for_ga():
    # KDTrainer divides by the global-batch token count itself and says so with this class attribute
    assert "loss_is_scaled_for_ga" in vars(transformers.Trainer)
    assert "loss_is_scaled_for_ga" in inspect.getsource(transformers.Trainer.training_step)


def test_gkd_init_sets_the_attributes_kd_trainer_reads():
    source = inspect.getsource(GKDTrainer.__init__)
    for attribute in ("lmbda", "beta", "temperature", "seq_kd", "generation_config", "generation_kwargs",
                      "teacher_model"):
        assert f"self.{attribute} =" in source, attribute
    assert "self._metrics =" in inspect.getsource(SFTTrainer.__init__)


def test_gkd_config_fields():
    assert dataclasses.is_dataclass(GKDConfig)
    names = {f.name for f in dataclasses.fields(GKDConfig)}
    expected = {"lmbda", "beta", "temperature", "max_new_tokens", "seq_kd", "teacher_model_init_kwargs",
                "teacher_model_name_or_path"}
    assert expected <= names, sorted(expected - names)


def test_unwrap_model_for_generation_signature():
    assert params(unwrap_model_for_generation)[:2] == ["model", "accelerator"]
    assert "generation_kwargs" in params(unwrap_model_for_generation)


def test_dpo_private_hooks():
    assert params(DPOTrainer._compute_loss) == ["self", "model", "inputs", "return_outputs"]
    assert params(DPOTrainer._prepare_dataset) == ["self", "dataset", "processing_class", "args", "dataset_name"]
    assert dataclasses.is_dataclass(DPOConfig)


@pytest.mark.filterwarnings("ignore")
def test_chatml_collator_output_keys(tokenizer):
    from trl.experimental.utils import DataCollatorForChatML

    rows = [
        {"messages": [{"role": "user", "content": "1+2=?"}, {"role": "assistant", "content": "\\boxed{3}"}]},
        {"messages": [{"role": "user", "content": "10-3+4=?"}, {"role": "assistant", "content": "\\boxed{11}"}]},
    ]
    batch = DataCollatorForChatML(tokenizer=tokenizer)(rows)
    assert {"input_ids", "attention_mask", "labels", "prompts", "prompt_attention_mask"} <= set(batch)
    assert batch["input_ids"].shape == batch["attention_mask"].shape == batch["labels"].shape
    assert batch["prompts"].shape == batch["prompt_attention_mask"].shape
    # labels: the completion only; the prompt is the chat-templated user turn with the generation prompt
    prompt = tokenizer.apply_chat_template(rows[0]["messages"][:1], tokenize=False, add_generation_prompt=True)
    n_prompt = len(tokenizer(prompt, add_special_tokens=False)["input_ids"])
    row = batch["labels"][0][batch["attention_mask"][0].bool()]
    assert (row[:n_prompt] == -100).all() and (row[n_prompt:] != -100).all()
    assert tokenizer.decode(row[n_prompt:]).startswith("\\boxed{3}")


def test_model_card_takes_the_name_and_citation_from_the_class():
    # every trainer cites its paper by setting `_name` and `_paper["citation"]` (tests/test_model_cards.py)
    from trl.trainer.base_trainer import _BaseTrainer

    source = inspect.getsource(_BaseTrainer.create_model_card)
    assert "trainer_name=self._name" in source
    assert 'trainer_citation=self._paper.get("citation")' in source
    assert isinstance(GKDTrainer._paper.get("citation"), str)  # KDTrainer's card cites GKD's paper, inherited


def test_gkd_distillation_notice_is_logged_by_its_module_logger():
    # KDTrainer filters this one message from this logger while it is built (kd_trainer.without_distillation_notice)
    import trl.experimental.gkd.gkd_trainer as gkd_module

    assert GKDTrainer.__module__ == gkd_module.__name__
    assert gkd_module.logger.logger.name == gkd_module.__name__
    assert "fully covered by `DistillationTrainer`" in inspect.getsource(GKDTrainer.__init__)


@pytest.mark.parametrize("trainer_cls", [SFTTrainer, DPOTrainer])
def test_trl_trainers_accept_iterable_and_named_eval_datasets(trainer_cls):
    # the dataset forms our trainers accept too (tests/test_dropin.py)
    parameters = inspect.signature(trainer_cls.__init__).parameters
    assert "IterableDataset" in str(parameters["train_dataset"].annotation)
    for form in ("IterableDataset", "DatasetDict", "IterableDatasetDict", "dict[str"):
        assert form in str(parameters["eval_dataset"].annotation), form
