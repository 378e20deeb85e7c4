"""`GenSSDConfig` (paper defaults, validation) and `GenSSDTrainer` (on-line Gen-SSD: the sampler's chunk loop and
selection hook inside `KDTrainer`) on tiny models."""

import pytest
import torch
from conftest import CPU_TRAINING

from trl_reasoning_distill._trl import TrlParser
from trl_reasoning_distill.gen_ssd import GenSSDConfig, GenSSDTrainer
from trl_reasoning_distill.gen_ssd.sampler import (
    ChunkSampling,
    GenerationSelectionCallback,
    HFChunkProposer,
    StudentScorer,
    sample_chunked,
)
from trl_reasoning_distill.toy import load_toy_student, load_toy_teacher, toy_dataset

TINY = dict(max_steps=2, per_device_train_batch_size=4, learning_rate=1e-3, max_length=256, chunk_size=8,
            max_new_tokens=32, num_candidates=[3, 2], teacher_temperature=1.0, **CPU_TRAINING)


def _config(tmp_path, **overrides) -> GenSSDConfig:
    return GenSSDConfig(output_dir=str(tmp_path), **{**TINY, **overrides})


def _data(n: int = 8):
    return toy_dataset("train", n).select_columns(["prompt", "answer"])


# --- config --------------------------------------------------------------------------------------------------------


def test_defaults_are_the_papers(tmp_path):
    args = GenSSDConfig(output_dir=str(tmp_path), use_cpu=True)
    assert (args.chunk_size, args.max_new_tokens, args.num_candidates, args.beam_width) == (4096, 16384, [16, 8, 4], 2)
    assert (args.teacher_temperature, args.teacher_top_p, args.teacher_top_k) == (0.6, 0.95, 30)
    assert (args.selection_rule, args.candidates_per, args.beam_score, args.objective) == ("low", "beam", "chunk",
                                                                                             "nll")
    assert args.keep_only_correct and args.prefer_eos and args.lmbda == 0.0 and args.seq_kd
    assert args.chunk_sampling() == ChunkSampling()  # the sampler's defaults are the same paper values


@pytest.mark.parametrize("overrides, field", [
    ({"chunk_size": 0}, "chunk_size"), ({"max_new_tokens": 0}, "max_new_tokens"), ({"num_candidates": []}, "schedule"),
    ({"num_candidates": [4, 0]}, "schedule entry"), ({"beam_width": 0}, "beam_width"),
    ({"candidates_per": "prompt"}, "candidates_per"), ({"beam_score": "sum"}, "beam_score"),
    ({"selection_rule": "lowest"}, "rule"), ({"teacher_temperature": -1.0}, "temperature"),
    ({"teacher_top_p": 0.0}, "top_p"), ({"teacher_top_k": -1}, "top_k"), ({"objective": "dpo"}, "objective"),
    ({"lmbda": 0.5}, "lmbda"), ({"seq_kd": False}, "seq_kd"), ({"answer_extraction": "last"}, "answer_extraction"),
    ({"scorer_batch_size": 0}, "scorer_batch_size"), ({"answer_column": ""}, "answer_column"),
])
def test_bad_values_raise(tmp_path, overrides, field):
    with pytest.raises(ValueError, match=field):
        _config(tmp_path, **overrides)


def test_parses_from_the_command_line_and_takes_an_int_schedule(tmp_path):
    (args,) = TrlParser((GenSSDConfig,)).parse_args_into_dataclasses(
        ["--output_dir", str(tmp_path), "--num_candidates", "4", "2", "--chunk_size", "64", "--use_cpu", "true"])
    assert args.num_candidates == [4, 2] and args.chunk_sampling().num_candidates == (4, 2)
    assert _config(tmp_path, num_candidates=5).num_candidates == [5]


# --- trainer -------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("objective", ["nll", "kd"])
def test_trains_two_steps_on_tiny_models(tmp_path, tokenizer, tiny_student, tiny_teacher, objective):
    """Random tiny models never answer right, so every selected trajectory is a target here."""
    args = _config(tmp_path, objective=objective, keep_only_correct=False)
    trainer = GenSSDTrainer(model=tiny_student, teacher_model=tiny_teacher, args=args,
                            train_dataset=_data().select_columns(["prompt"]), processing_class=tokenizer)
    before = {n: p.clone() for n, p in trainer.model.named_parameters()}
    trainer.train()
    assert all(not torch.equal(p, trainer.model.get_parameter(n)) for n, p in before.items())
    logged = trainer.state.log_history[0]
    for name in ("selected_ppl", "teacher_tokens", "pruned", "num_chunks", "correct_frac"):
        assert f"gen_ssd/{name}" in logged
    assert logged["gen_ssd/pruned"] > 0 and logged["gen_ssd/correct_frac"] == 1.0  # nothing graded: all kept


def _batch(trainer, rows: list[dict]) -> dict:
    return trainer._prepare_inputs(trainer.data_collator([trainer.train_dataset[i] for i in range(len(rows))]))


def test_targets_are_the_selected_trajectories_and_wrong_answers_are_masked(tmp_path, tokenizer):
    teacher, student = load_toy_teacher(), load_toy_student()
    data = _data(4).map(lambda row, i: {"answer": "1234" if i == 0 else row["answer"]}, with_indices=True)
    trainer = GenSSDTrainer(model=student, teacher_model=teacher, args=_config(tmp_path), train_dataset=data,
                            processing_class=tokenizer)
    inputs = _batch(trainer, list(data))
    prompts = [ids[m.bool()].tolist() for ids, m in zip(inputs["prompts"], inputs["prompt_attention_mask"])]
    torch.manual_seed(3)
    out = trainer._sample_completions(inputs)
    torch.manual_seed(3)
    sampling = trainer.args.chunk_sampling()
    expected = sample_chunked(prompts, HFChunkProposer(teacher, tokenizer, temperature=1.0, top_p=0.95, top_k=30),
                              StudentScorer(student, tokenizer.pad_token_id), sampling, GenerationSelectionCallback(),
                              [tokenizer.eos_token_id], tokenizer.pad_token_id, torch.Generator().manual_seed(0))
    width = inputs["prompts"].shape[1]
    for b, trajectory in enumerate(expected):  # the trainer's chunk loop is the sampler's, with the same seeds
        completion = out["input_ids"][b, width:][out["attention_mask"][b, width:].bool()].tolist()
        assert completion == trajectory.token_ids
        labels = out["labels"][b, width:]
        assert (labels == -100).all() if b == 0 else labels[labels != -100].tolist() == trajectory.token_ids
    assert (out["labels"][:, :width] == -100).all()


def test_selection_hook_drives_generation_and_nll_loss_is_the_selected_log_ppl(tmp_path, tokenizer):
    """A custom `GenerationSelectionCallback` is the one the trainer calls; with the model equal to the scorer, the
    completion-only NLL of one target equals log(student PPL) of the selection (spec §9 item 19)."""

    class Recorder(GenerationSelectionCallback):
        rounds = []

        def on_round_end(self, info):
            self.rounds.append(info)

    selection = Recorder(rule="high")
    trainer = GenSSDTrainer(model=load_toy_student(), teacher_model=load_toy_teacher(),
                            args=_config(tmp_path, keep_only_correct=False, per_device_train_batch_size=1),
                            train_dataset=_data(1), processing_class=tokenizer, selection=selection)
    inputs = _batch(trainer, [0])
    prompts = [inputs["prompts"][0][inputs["prompt_attention_mask"][0].bool()].tolist()]
    torch.manual_seed(0)
    trajectory = trainer.select_trajectories(prompts)[0]
    assert selection.rounds and selection.rounds[0].candidates.tolist() == [3]
    torch.manual_seed(0)
    batch = trainer._sample_completions(inputs)
    with torch.no_grad():
        loss = trainer.compute_loss(trainer.model.eval(), batch)
    assert loss.item() == pytest.approx(torch.tensor(trajectory.perplexity).log().item(), abs=1e-4)


def test_refuses_a_dataset_without_answers_and_a_foreign_config(tmp_path, tokenizer, tiny_student, tiny_teacher):
    with pytest.raises(ValueError, match="'answer' column"):
        GenSSDTrainer(model=tiny_student, teacher_model=tiny_teacher, args=_config(tmp_path),
                      train_dataset=_data().select_columns(["prompt"]), processing_class=tokenizer)
    from trl_reasoning_distill import KDConfig

    with pytest.raises(ValueError, match="GenSSDConfig"):
        GenSSDTrainer(model=tiny_student, teacher_model=tiny_teacher, args=KDConfig(output_dir=str(tmp_path)),
                      train_dataset=_data(), processing_class=tokenizer)


def test_nll_from_hidden_states_equals_the_full_logit_nll(tmp_path, tokenizer):
    """`objective="nll"` through `chunked_cross_entropy` (the default) gives the full-logit loss
    (`loss_chunk_size=0`) and its gradient, on sampled trajectories."""
    trainer = GenSSDTrainer(model=load_toy_student(), teacher_model=load_toy_teacher(),
                            args=_config(tmp_path, keep_only_correct=False, loss_chunk_size=7),
                            train_dataset=_data(2), processing_class=tokenizer)
    torch.manual_seed(0)
    batch = trainer._sample_completions(_batch(trainer, [0, 1]))
    results = []
    for chunk in (7, 0):
        trainer.args.loss_chunk_size = chunk
        trainer.model.zero_grad()
        loss = trainer.compute_loss(trainer.model, batch, num_items_in_batch=torch.tensor(40))
        loss.backward()
        results.append((loss.detach(), [p.grad.clone() for p in trainer.model.parameters()]))
    (chunked, chunked_grads), (full, full_grads) = results
    assert full > 0
    torch.testing.assert_close(chunked, full, rtol=1e-5, atol=1e-6)
    for actual, expected in zip(chunked_grads, full_grads, strict=True):
        torch.testing.assert_close(actual, expected, rtol=1e-4, atol=1e-6)
