"""CoTDPOTrainer and CoTDPOConfig on the tiny toy models: training, no reference model, the loss against
`cotd_po_loss` by hand, reference-free DPO at G=2, padding invariance, released-code parity, data checks, config."""

import copy
import dataclasses
import re

import pytest
import reference_cotd_po as ref
import torch
import transformers
from conftest import CPU_TRAINING
from datasets import Dataset

from trl_reasoning_distill._trl import DPOConfig, DPOTrainer
from trl_reasoning_distill.cotd_po import (
    LLAMA3_RELEASED_PROMPT_TEMPLATE,
    CoTDPOConfig,
    CoTDPOTrainer,
    TeacherRationales,
    cotd_po_loss,
    token_log_probs,
)
from trl_reasoning_distill.generation import Sample
from trl_reasoning_distill.toy.models import build_student
from trl_reasoning_distill.toy.task import sample_problems, solution

TOY_FORMAT = dict(instruction_template="{prompt}", thought_prefix="<think>", answer_prefix="</think>")
METRICS = ("preference", "rationale", "kl", "target_entropy", "student_entropy", "score_best", "score_worst",
           "answer_len", "valid_frac", "pair_frac")


def thought(problem) -> str:
    return solution(problem, "ltr").removeprefix("<think>").split("</think>")[0]


def group_rows(n=4, k=3, seed=1, rewards=None) -> list[dict]:
    """Toy groups: the gold ltr rationale, k boxed answers (the first correct), rewards 1 for correct, else 0."""
    rows = []
    for i, p in enumerate(sample_problems("train", n, seed=seed)):
        answers = [p.answer + j * (j % 2 * 2 - 1) * 7 for j in range(k)]
        rows.append({"prompt": [{"role": "user", "content": p.prompt}], "rationale": thought(p),
                     "completions": [f"\\boxed{{{a}}}" for a in answers],
                     "rewards": rewards[i] if rewards else [float(a == p.answer) for a in answers]})
    return rows


def make_trainer(tmp_path, model, tokenizer, rows=None, **overrides):
    args = CoTDPOConfig(output_dir=str(tmp_path), **{
        **CPU_TRAINING, "max_steps": 2, "per_device_train_batch_size": 2, "gradient_accumulation_steps": 1,
        "warmup_steps": 0, "learning_rate": 1e-3, "max_length": 128, **TOY_FORMAT, **overrides})
    dataset = Dataset.from_list(rows if rows is not None else group_rows())
    return CoTDPOTrainer(model=model, args=args, train_dataset=dataset, processing_class=tokenizer)


def batch_of(trainer, indices, pad_to_multiple_of=None):
    collator = dataclasses.replace(trainer.data_collator, pad_to_multiple_of=pad_to_multiple_of)
    return trainer._prepare_inputs(collator([trainer.train_dataset[i] for i in indices]))


def loss_by_hand(model, batch, args: CoTDPOConfig):
    """`cotd_po_loss` on log-probs from the model's plain forward (full logits), not the fused head."""
    B, G, T = batch["input_ids"].shape
    ids = batch["input_ids"].view(B * G, T)
    labels = ids.masked_fill(~(batch["rationale_mask"] | batch["answer_mask"]).view(B * G, T), -100)
    logits = model(input_ids=ids, attention_mask=batch["attention_mask"].view(B * G, T)).logits
    return cotd_po_loss(
        token_log_probs(logits, labels).view(B, G, T - 1), batch["answer_mask"][..., 1:], batch["rewards"],
        rationale_mask=batch["rationale_mask"][..., 1:], candidate_mask=batch["candidate_mask"],
        group_max_len=batch["group_max_len"], lam=args.apa_lambda, alpha=args.alpha,
        rationale_weight=args.rationale_weight, logp_aggregation=args.logp_aggregation,
        reward_normalization=args.reward_normalization, reward_scale=args.reward_scale,
        rationale_reduction=args.rationale_reduction, best_answer_nll_weight=args.best_answer_nll_weight,
        loss_mode=args.loss_mode, simpo_beta=args.simpo_beta, simpo_gamma=args.simpo_gamma,
        chosen_nll_weight=args.chosen_nll_weight,
    )


# --- training, and no reference model --------------------------------------------------------------------------------


@pytest.mark.parametrize("loss_mode", ["apa", "pairwise_simpo"])
def test_trains_two_steps_with_one_forward_per_step_and_no_reference_model(tmp_path, tiny_student, tokenizer,
                                                                           monkeypatch, loss_mode):
    built = []
    original_init = transformers.PreTrainedModel.__init__
    monkeypatch.setattr(transformers.PreTrainedModel, "__init__",
                        lambda self, *a, **k: (built.append(type(self).__name__), original_init(self, *a, **k))[1])
    trainer = make_trainer(tmp_path, tiny_student, tokenizer, loss_mode=loss_mode)
    assert trainer.ref_model is None and built == []  # neither loaded nor built: reference-free (spec §8 item 11)
    forwards = []
    tiny_student.model.register_forward_hook(lambda *_: forwards.append(1))
    before = {n: p.clone() for n, p in trainer.model.named_parameters()}
    trainer.train()
    assert len(forwards) == 2  # one policy forward over the B·G rows per micro-batch
    assert all(not torch.equal(p, trainer.model.get_parameter(n)) for n, p in before.items())
    logs = trainer.state.log_history[0]
    assert all(f"cotd_po/{name}" in logs for name in METRICS)
    assert logs["cotd_po/valid_frac"] == 1.0 and logs["cotd_po/pair_frac"] == 1.0
    assert built == []


def test_evaluate_on_a_new_dataset_after_training(tmp_path, tiny_student, tokenizer):
    """DPOTrainer refuses to precompute reference log-probs for a dataset given to `evaluate` after training; with
    no reference there is nothing to precompute, and the raw groups are tokenized like the training set."""
    trainer = make_trainer(tmp_path, tiny_student, tokenizer)
    trainer.train()
    metrics = trainer.evaluate(Dataset.from_list(group_rows(n=2, seed=5)))
    assert metrics["eval_loss"] > 0 and "eval_cotd_po/preference" in metrics


# --- the loss is cotd_po_loss --------------------------------------------------------------------------------------


@pytest.mark.parametrize("overrides", [
    {},
    {"logp_aggregation": "sum", "apa_lambda": 0.05, "rationale_reduction": "sum"},
    {"logp_aggregation": "mean", "reward_normalization": "zscore", "best_answer_nll_weight": 0.5, "alpha": 2.0},
    {"loss_mode": "pairwise_simpo"},
])
def test_loss_and_gradient_equal_cotd_po_loss_by_hand(tmp_path, tiny_student, tokenizer, overrides):
    rows = group_rows(k=3)
    rows[1]["rewards"] = [0.2, float("nan"), 0.9]  # a failed score is an invalid candidate
    trainer = make_trainer(tmp_path, tiny_student, tokenizer, rows, **overrides)
    batch = batch_of(trainer, [0, 1, 2])
    loss = trainer.compute_loss(trainer.model, batch)
    grads = torch.autograd.grad(loss, list(tiny_student.parameters()))
    expected = loss_by_hand(tiny_student, batch, trainer.args)
    expected_grads = torch.autograd.grad(expected.loss, list(tiny_student.parameters()))
    torch.testing.assert_close(loss, expected.loss, rtol=1e-5, atol=1e-6)
    for actual, wanted in zip(grads, expected_grads):
        torch.testing.assert_close(actual, wanted, rtol=1e-4, atol=1e-6)
    mode = "train" if trainer.model.training else "eval"
    for name, value in expected.metrics.items():
        assert trainer._metrics[mode][f"cotd_po/{name}"][-1] == pytest.approx(value, rel=1e-4, abs=1e-6)


def test_two_candidates_with_a_hard_target_is_trl_reference_free_dpo(tmp_path, tokenizer):
    """Spec §8 item 4 at trainer level: G = 2, a one-hot target, sum aggregation and no rationale term give TRL's
    DPO sigmoid loss with β = λ and reference log-probs 0, on the same sequences."""
    lam = 0.3
    rows = group_rows(n=4, k=2, rewards=[[1.0, 0.0], [0.0, 1.0], [1.0, 0.0], [0.0, 1.0]])
    cotd = make_trainer(tmp_path / "cotd", build_student(tokenizer, seed=1), tokenizer, rows, apa_lambda=lam,
                        logp_aggregation="sum", reward_normalization="none", reward_scale=1e4, rationale_weight=0.0)
    loss = cotd.compute_loss(cotd.model, batch_of(cotd, range(4)))

    pairs = [{"prompt": r["prompt"], "chosen": [{"role": "assistant", "content": r["completions"][0]}],
              "rejected": [{"role": "assistant", "content": r["completions"][1]}]} for r in rows]
    dpo = DPOTrainer(model=build_student(tokenizer, seed=1), processing_class=tokenizer,
                     train_dataset=Dataset.from_list(pairs),
                     args=DPOConfig(output_dir=str(tmp_path / "dpo"), beta=lam, precompute_ref_log_probs=True,
                                    max_length=None, **{**CPU_TRAINING, "max_steps": 1}))
    examples = []
    for row, group in zip(rows, (cotd.train_dataset[i] for i in range(4))):
        win = int(row["rewards"][1] > row["rewards"][0])
        examples.append({"prompt_ids": group["prefix_ids"] + group["rationale_ids"],
                         "chosen_ids": group["completion_ids"][win], "rejected_ids": group["completion_ids"][1 - win],
                         "ref_chosen_logps": 0.0, "ref_rejected_logps": 0.0})
    expected = dpo._compute_loss(dpo.model, dpo._prepare_inputs(dpo.data_collator(examples)), False)
    torch.testing.assert_close(loss, expected, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("aggregation", ["padded_mean", "sum", "mean"])
def test_padding_and_dummy_candidate_slots_change_nothing(tmp_path, tiny_student, tokenizer, aggregation):
    """Spec §8 items 9-10: extra right padding, and a group padded with empty candidate slots (G = 3 for a group of
    2), leave each group's loss unchanged; the batch loss is the mean of its groups'."""
    rows = group_rows(n=2, k=3)
    rows[0] = {**rows[0], "completions": rows[0]["completions"][:2], "rewards": rows[0]["rewards"][:2]}
    trainer = make_trainer(tmp_path, tiny_student, tokenizer, rows, logp_aggregation=aggregation,
                           apa_lambda=0.05 if aggregation == "sum" else 0.5)
    alone = [trainer.compute_loss(trainer.model, batch_of(trainer, [i])) for i in (0, 1)]
    together = batch_of(trainer, [0, 1])
    assert together["input_ids"].shape[1] == 3 and together["candidate_mask"][0].tolist() == [True, True, False]
    padded = batch_of(trainer, [0, 1], pad_to_multiple_of=64)
    assert padded["input_ids"].shape[-1] == 64 > together["input_ids"].shape[-1]
    for batch in (together, padded):
        torch.testing.assert_close(trainer.compute_loss(trainer.model, batch), (alone[0] + alone[1]) / 2,
                                   rtol=1e-5, atol=1e-6)


def test_released_code_parity(tmp_path, tiny_student, tokenizer):
    """Spec §8 item 18: one prompt, λ = 0.5 on the sum over the padded length, min-max x 5 targets, token-mean
    rationale NLL: the released code's loss (re-implemented in float64, right padding) equals the trainer's."""
    rows = group_rows(n=1, k=4, rewards=[[0.3, -1.2, 2.0, 0.7]])
    trainer = make_trainer(tmp_path, tiny_student, tokenizer, rows)
    group = trainer.train_dataset[0]
    context = group["prefix_ids"] + group["rationale_ids"]
    sequences = [context + answer for answer in group["completion_ids"]]
    rationale_spans = [(len(group["prefix_ids"]), len(context))] * 4
    answer_spans = [(len(context), len(s)) for s in sequences]
    with torch.no_grad():
        expected = ref.released_code_loss_ref(tiny_student, sequences, rationale_spans, answer_spans,
                                              rows[0]["rewards"], tokenizer.pad_token_id)
        loss = trainer.compute_loss(trainer.model, batch_of(trainer, [0]))
    torch.testing.assert_close(loss.double(), expected, rtol=1e-5, atol=1e-5)


# --- data ----------------------------------------------------------------------------------------------------------


def test_collator_layout(tmp_path, tiny_student, tokenizer):
    """Spec §8 item 17 and §2.12: the rationale span is thought_prefix + CoT + answer_prefix, the answer span is the
    answer and its end-of-turn token; masks disjoint; rewards float32."""
    rows = group_rows(n=2, k=3)
    trainer = make_trainer(tmp_path, tiny_student, tokenizer, rows)
    batch = batch_of(trainer, [0, 1])
    assert batch["input_ids"].shape[:2] == (2, 3) and batch["rewards"].dtype == torch.float32
    assert not (batch["rationale_mask"] & batch["answer_mask"]).any()
    assert (batch["answer_mask"].sum(-1) > 0).all()
    ids = batch["input_ids"][1, 2]
    assert tokenizer.decode(ids[batch["rationale_mask"][1, 2]]) == f"<think>{rows[1]['rationale']}</think>"
    assert tokenizer.decode(ids[batch["answer_mask"][1, 2]]) == rows[1]["completions"][2] + tokenizer.eos_token
    prompt = tokenizer.apply_chat_template(rows[1]["prompt"], tokenize=False, add_generation_prompt=True)
    start = int(batch["rationale_mask"][1, 2].int().argmax())
    assert tokenizer.decode(ids[:start]) == prompt
    assert batch["group_max_len"][1] == batch["attention_mask"][1].sum(-1).max()


def test_sampler_token_ids_are_used_verbatim_and_long_answers_truncated(tmp_path, tiny_student, tokenizer):
    rows = group_rows(n=2, k=2)
    for row in rows:
        row["completion_token_ids"] = [[7, 8, 9], [10] * 200]  # the second never finished: no EOS
    trainer = make_trainer(tmp_path, tiny_student, tokenizer, rows)
    group = trainer.train_dataset[0]
    context = len(group["prefix_ids"]) + len(group["rationale_ids"])
    assert group["completion_ids"] == [[7, 8, 9], [10] * (128 - context)]


def test_groups_without_room_for_an_answer_are_dropped(tmp_path, tiny_student, tokenizer):
    rows = group_rows(n=3)
    rows[1]["rationale"] = "1+1=2\n" * 30
    trainer = make_trainer(tmp_path, tiny_student, tokenizer, rows)
    assert len(trainer.train_dataset) == 2
    with pytest.raises(ValueError, match="max_length"):
        make_trainer(tmp_path, tiny_student, tokenizer, rows, max_length=10)


def test_without_teacher_rationale_the_whole_continuation_is_the_answer(tmp_path, tiny_student, tokenizer):
    rows = [{k: v for k, v in row.items() if k != "rationale"} for row in group_rows()]
    trainer = make_trainer(tmp_path, tiny_student, tokenizer, rows, use_teacher_rationale=False, rationale_weight=0.0)
    batch = batch_of(trainer, [0, 1])
    assert not batch["rationale_mask"].any()
    trainer.compute_loss(trainer.model, batch)
    assert trainer._metrics["train" if trainer.model.training else "eval"]["cotd_po/rationale"][-1] == 0.0


@pytest.mark.parametrize("change, message", [
    (lambda r: r.pop("rationale"), "rationale.*use_teacher_rationale=False"),
    (lambda r: r.pop("rewards"), "lacks \\['rewards'\\]"),
    (lambda r: r.update(rewards=[1.0]), "row 0: 3 completions but 1 rewards"),
    (lambda r: r.update(completions=[], rewards=[]), "row 0: `completions` must be a non-empty list"),
    (lambda r: r.update(rationale=None), "row 0: `rationale` must be a string"),
    (lambda r: r.update(prompt=[{"role": "user", "content": " "}]), "row 0 has an empty prompt"),
])
def test_bad_datasets_raise_before_training(tmp_path, tiny_student, tokenizer, change, message):
    rows = group_rows(n=2)
    for row in rows:
        change(row)
    with pytest.raises(ValueError, match=message):
        make_trainer(tmp_path, tiny_student, tokenizer, rows)


def test_needs_a_cotd_po_config_and_takes_no_reference_model(tmp_path, tiny_student, tokenizer):
    dataset = Dataset.from_list(group_rows())
    with pytest.raises(ValueError, match="CoTDPOConfig"):
        CoTDPOTrainer(model=tiny_student, args=DPOConfig(output_dir=str(tmp_path), **CPU_TRAINING),
                      train_dataset=dataset, processing_class=tokenizer)
    args = CoTDPOConfig(output_dir=str(tmp_path), **CPU_TRAINING)
    with pytest.raises(ValueError, match="reference-free"):
        CoTDPOTrainer(model=tiny_student, ref_model=build_student(tokenizer), args=args, train_dataset=dataset,
                      processing_class=tokenizer)
    with pytest.raises(ValueError, match="compute_metrics"):
        CoTDPOTrainer(model=tiny_student, args=args, train_dataset=dataset, processing_class=tokenizer,
                      compute_metrics=lambda prediction: {})
    with pytest.raises(ValueError, match="max_steps has to be specified"):  # streamed data: as DPOTrainer
        CoTDPOTrainer(model=tiny_student, args=args, train_dataset=dataset.to_iterable_dataset(),
                      processing_class=tokenizer)


# --- config --------------------------------------------------------------------------------------------------------


class RecordingGenerator:
    """Answers every context with a finished rationale and records the contexts' token ids."""

    def __init__(self):
        self.prompt_ids = []

    def generate(self, prompt_ids, n=1, **kwargs):
        self.prompt_ids += prompt_ids
        return [[Sample([1], "a rationale", "stop")] * n for _ in prompt_ids]


def bos_adding(tokenizer):
    """The toy tokenizer, made to prepend a BOS (its `<|im_start|>`) whenever special tokens are added."""
    from tokenizers.processors import TemplateProcessing

    tokenizer = copy.deepcopy(tokenizer)
    tokenizer.bos_token = "<|im_start|>"
    tokenizer._tokenizer.post_processor = TemplateProcessing(
        single="<|im_start|> $A", special_tokens=[("<|im_start|>", tokenizer.bos_token_id)])
    return tokenizer


def test_raw_prompt_template_replaces_the_chat_template(tmp_path, tiny_student, tokenizer):
    """The released code's Llama-3 markup as `prompt_template`: the candidates' and the rationales' prompts are the
    template's text around the instruction, tokenized as is (no BOS, even from a tokenizer that adds one)."""
    tokenizer = bos_adding(tokenizer)
    assert tokenizer("x")["input_ids"][0] == tokenizer.bos_token_id
    trainer = make_trainer(tmp_path, tiny_student, tokenizer, prompt_template=LLAMA3_RELEASED_PROMPT_TEMPLATE,
                           instruction_template="Question: {prompt}", max_length=512)
    rows = group_rows()
    texts = [LLAMA3_RELEASED_PROMPT_TEMPLATE.replace("{prompt}", "Question: " + row["prompt"][0]["content"])
             for row in rows]
    prefixes = trainer.train_dataset["prefix_ids"]
    assert len(prefixes) == len(rows)
    for prefix_ids, text in zip(prefixes, texts):
        assert prefix_ids == tokenizer(text, add_special_tokens=False)["input_ids"]
        assert tokenizer.decode(prefix_ids) == text and prefix_ids[0] != tokenizer.bos_token_id
    generator = RecordingGenerator()
    TeacherRationales(None, tokenizer, trainer.args, generator=generator).rationales([r["prompt"] for r in rows])
    thought_ids = tokenizer("<think>", add_special_tokens=False)["input_ids"]
    assert generator.prompt_ids == [tokenizer(t, add_special_tokens=False)["input_ids"] + thought_ids for t in texts]
    trainer.train()
    assert trainer.state.global_step == 2


@pytest.mark.parametrize("template", ["no field", "{prompt} and {prompt}"])
def test_a_raw_prompt_template_needs_one_prompt_field(tmp_path, template):
    with pytest.raises(ValueError, match="prompt_template must contain '{prompt}' exactly once"):
        CoTDPOConfig(output_dir=str(tmp_path), prompt_template=template)


def test_a_raw_prompt_template_takes_one_user_turn(tmp_path, tiny_student, tokenizer):
    rows = group_rows()
    rows[1]["prompt"] = [{"role": "system", "content": "Be brief."}, *rows[1]["prompt"]]
    with pytest.raises(ValueError, match="single user turn"):
        make_trainer(tmp_path, tiny_student, tokenizer, rows, prompt_template="U: {prompt}\nA: ")


def test_defaults_are_the_spec_values(tmp_path):
    args = CoTDPOConfig(output_dir=str(tmp_path))
    spec = dict(reward_normalization="minmax", reward_scale=5.0, reward_norm_eps=1e-3, apa_lambda=0.5,
                logp_aggregation="padded_mean", alpha=1.0, rationale_weight=1.0, rationale_reduction="token_mean",
                best_answer_nll_weight=0.0, loss_mode="apa", simpo_beta=2.5, simpo_gamma=1.375,
                chosen_nll_weight=1.0, use_teacher_rationale=True, thought_prefix="My thought: ",
                answer_prefix="My answer:", learning_rate=5e-5, lr_scheduler_type="linear", warmup_steps=0.1,
                per_device_train_batch_size=2, gradient_accumulation_steps=32, num_train_epochs=5.0, max_length=2048,
                max_grad_norm=1.0, precompute_ref_log_probs=True)
    assert {k: getattr(args, k) for k in spec} == spec
    assert args.instruction_template.endswith("\nQuestion: {prompt}")


def test_every_new_or_changed_default_cites_its_source(tmp_path):
    base = {f.name: f for f in dataclasses.fields(DPOConfig)}
    for f in dataclasses.fields(CoTDPOConfig):
        if f.name in base and f.default == base[f.name].default:
            continue
        assert re.search(r"paper|code|ours|TRL|Eq\. \d|Table \d", f.metadata["help"]), f.name


@pytest.mark.parametrize("name, value", [
    ("reward_normalization", "softmax"), ("logp_aggregation", "max"), ("rationale_reduction", "mean"),
    ("loss_mode", "dpo"), ("reward_scale", 0.0), ("apa_lambda", -0.5), ("simpo_beta", 0.0),
    ("reward_norm_eps", -1.0), ("alpha", -1.0), ("rationale_weight", -0.1), ("chosen_nll_weight", -1.0),
    ("instruction_template", "no field"), ("beta", 0.5), ("loss_type", "ipo"), ("use_weighting", True),
    ("sync_ref_model", True), ("precompute_ref_log_probs", False),
])
def test_bad_values_raise(tmp_path, name, value):
    with pytest.raises(ValueError, match=name):
        CoTDPOConfig(output_dir=str(tmp_path), **{name: value})


def test_a_loss_of_nothing_raises(tmp_path):
    with pytest.raises(ValueError, match="all 0"):
        CoTDPOConfig(output_dir=str(tmp_path), alpha=0.0, rationale_weight=0.0)
