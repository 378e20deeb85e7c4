"""KDTrainer: normalisation under accumulation and DDP, vocabulary alignment, data formats, configs."""

import pytest
import torch
from conftest import CPU_TRAINING
from datasets import Dataset

from trl_reasoning_distill.divergence import generalized_jsd
from trl_reasoning_distill.kd_config import KDConfig
from trl_reasoning_distill.kd_trainer import KDTrainer, to_messages_dataset
from trl_reasoning_distill.toy.task import sample_problems, solution


def toy_rows(n=8, with_completion=True):
    problems = sample_problems("train", n, seed=1)
    rows = [{"prompt": [{"role": "user", "content": p.prompt}]} for p in problems]
    if with_completion:
        for row, p in zip(rows, problems):
            row["completion"] = [{"role": "assistant", "content": solution(p, "ltr")}]
    return Dataset.from_list(rows)


def make_trainer(tmp_path, student, teacher, tokenizer, dataset=None, **overrides):
    args = KDConfig(output_dir=str(tmp_path), max_steps=2, per_device_train_batch_size=4, max_new_tokens=12,
                    max_length=128, **{**CPU_TRAINING, **overrides})
    return KDTrainer(model=student, teacher_model=teacher, args=args, train_dataset=dataset or toy_rows(),
                     processing_class=tokenizer)


@pytest.mark.parametrize("lmbda", [0.0, 1.0])
def test_trains_two_steps_and_logs(tmp_path, tiny_student, tiny_teacher, tokenizer, lmbda):
    trainer = make_trainer(tmp_path, tiny_student, tiny_teacher, tokenizer, lmbda=lmbda)
    before = {n: p.clone() for n, p in trainer.model.named_parameters()}
    trainer.train()
    assert all(not torch.equal(p, trainer.model.get_parameter(n)) for n, p in before.items())
    assert trainer.state.log_history[0]["kd/on_policy"] == lmbda


def test_loss_is_the_token_mean_of_the_divergence(tmp_path, tiny_student, tiny_teacher, tokenizer):
    trainer = make_trainer(tmp_path, tiny_student, tiny_teacher, tokenizer, lmbda=0.0, temperature=2.0)
    batch = trainer._prepare_inputs(trainer.data_collator([trainer.train_dataset[i] for i in range(4)]))
    loss = trainer.compute_loss(trainer.model, batch)
    mask = batch["labels"][:, 1:] != -100
    V = len(tokenizer)
    with torch.no_grad():
        s = tiny_student(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits[:, :-1, :V]
        t = tiny_teacher(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits[:, :-1, :V]
    expected = generalized_jsd(s, t, beta=0.5, temperature=2.0)[mask].mean()
    torch.testing.assert_close(loss, expected, rtol=1e-5, atol=1e-6)
    # with the global count given, the loss is this micro-batch's share: sum / count
    share = trainer.compute_loss(trainer.model, batch, num_items_in_batch=torch.tensor(4 * mask.sum().item()))
    torch.testing.assert_close(share, expected / 4, rtol=1e-5, atol=1e-6)


def test_token_count_is_taken_after_generation(tmp_path, tiny_student, tiny_teacher, tokenizer):
    trainer = make_trainer(tmp_path, tiny_student, tiny_teacher, tokenizer, lmbda=1.0)
    trainer.model_wrapped = trainer.model
    batches = [trainer.data_collator([trainer.train_dataset[i] for i in range(4)])]
    dataset_count = (batches[0]["labels"][:, 1:] != -100).sum().item()
    samples, count = trainer.get_batch_samples(iter(batches), 1, torch.device("cpu"))
    generated = (samples[0]["labels"][:, 1:] != -100).sum().item()
    assert count.item() == generated != dataset_count
    assert samples[0]["input_ids"].shape[1] <= batches[0]["prompts"].shape[1] + 12


def test_padded_rows_are_never_sampled(tmp_path, tiny_student, tiny_teacher, tokenizer):
    with torch.no_grad():
        tiny_student.lm_head.weight[len(tokenizer):] = 50.0  # tied embedding rows past the tokenizer dominate
    trainer = make_trainer(tmp_path, tiny_student, tiny_teacher, tokenizer, lmbda=1.0)
    trainer.model_wrapped = trainer.model
    batch = trainer.data_collator([trainer.train_dataset[i] for i in range(4)])
    sample = trainer._sample_completions(batch)
    assert sample["input_ids"].max().item() < len(tokenizer)


def test_prompt_only_data_needs_sampling():
    data = toy_rows(with_completion=False)
    assert to_messages_dataset(data, prompt_only_ok=True)[0]["messages"][-1] == {"role": "assistant", "content": ""}
    with pytest.raises(ValueError, match="lmbda=1.0 or seq_kd"):
        to_messages_dataset(data, prompt_only_ok=False)
    with pytest.raises(ValueError, match="'messages' or a 'prompt'"):
        to_messages_dataset(Dataset.from_dict({"text": ["x"]}), prompt_only_ok=True)


def test_string_prompts_and_completions_become_messages():
    data = Dataset.from_dict({"prompt": ["1+2=?"], "completion": ["<think>1+2=3</think>\\boxed{3}"]})
    messages = to_messages_dataset(data, prompt_only_ok=False)[0]["messages"]
    assert [m["role"] for m in messages] == ["user", "assistant"] and "prompt" not in messages


def test_too_few_vocabulary_rows_is_a_clear_error(tmp_path, tiny_student, tokenizer):
    from trl_reasoning_distill.toy.models import build_model

    small = build_model(tokenizer, hidden_size=32, intermediate_size=64, num_hidden_layers=1, vocab_multiple=16)
    small.resize_token_embeddings(len(tokenizer) - 10)
    with pytest.raises(ValueError, match="vocabulary rows"):
        make_trainer(tmp_path, tiny_student, small, tokenizer)


def test_teacher_with_another_tokenizer_is_refused(tmp_path, tiny_student, tiny_teacher, tokenizer):
    from trl_reasoning_distill.toy.tokenizer import build_tokenizer

    other = build_tokenizer()
    other.add_tokens(["<extra>"])
    tiny_teacher.save_pretrained(tmp_path / "teacher")
    other.save_pretrained(tmp_path / "teacher")
    with pytest.raises(ValueError, match="differs from the student's"):
        make_trainer(tmp_path, tiny_student, str(tmp_path / "teacher"), tokenizer)


def test_teacher_path_without_dtype_loads(tmp_path, tiny_student, tiny_teacher, tokenizer):
    tiny_teacher.save_pretrained(tmp_path / "teacher")
    tokenizer.save_pretrained(tmp_path / "teacher")
    trainer = make_trainer(tmp_path, tiny_student, str(tmp_path / "teacher"), tokenizer,
                           teacher_model_init_kwargs={"low_cpu_mem_usage": True})
    assert trainer.teacher_model.config.vocab_size == tiny_teacher.config.vocab_size


@pytest.mark.parametrize("field, value", [("divergence", "kl"), ("skew_alpha", 1.5), ("temperature", 0.0),
                                          ("vocab_size", 0), ("beta", 2.0)])
def test_bad_config_values_raise(tmp_path, field, value):
    with pytest.raises(ValueError, match=field if field != "beta" else "beta"):
        KDConfig(output_dir=str(tmp_path), **{field: value})


def test_eval_loss_runs(tmp_path, tiny_student, tiny_teacher, tokenizer):
    trainer = make_trainer(tmp_path, tiny_student, tiny_teacher, tokenizer, lmbda=0.0)
    metrics = trainer.evaluate(toy_rows(4))
    assert metrics["eval_loss"] > 0


@pytest.mark.parametrize("divergence", ["generalized_jsd", "forward_kl", "reverse_kl", "skew_kl", "skew_reverse_kl",
                                        "tvd"])
def test_chunked_loss_equals_full_logits(tmp_path, tiny_student, tiny_teacher, tokenizer, divergence):
    """Same loss and same gradients from the chunked path (odd chunk size) and GKD's full-logit path."""
    results = []
    for chunk in (0, 7):
        trainer = make_trainer(tmp_path, tiny_student, tiny_teacher, tokenizer, lmbda=0.0, loss_chunk_size=chunk,
                               divergence=divergence, temperature=1.5)
        batch = trainer._prepare_inputs(trainer.data_collator([trainer.train_dataset[i] for i in range(4)]))
        tiny_student.zero_grad()
        loss = trainer.compute_loss(trainer.model, batch)
        loss.backward()
        results.append((loss.detach(), {n: p.grad.clone() for n, p in tiny_student.named_parameters()}))
    (full, full_grads), (chunked, chunked_grads) = results
    torch.testing.assert_close(chunked, full, rtol=1e-5, atol=1e-6)
    for name, grad in full_grads.items():
        torch.testing.assert_close(chunked_grads[name], grad, rtol=1e-4, atol=1e-6)


def test_chunked_is_the_default_and_validated(tmp_path):
    assert KDConfig(output_dir=str(tmp_path)).loss_chunk_size == -1
    with pytest.raises(ValueError, match="loss_chunk_size"):
        KDConfig(output_dir=str(tmp_path), loss_chunk_size=-2)
