"""BRTSTrainer and BRTSConfig: the spec §9 invariants at trainer level, training on the tiny models, config checks."""

import copy
import csv
import importlib.util
import re
from pathlib import Path

import pytest
import torch
from conftest import CPU_TRAINING
from datasets import Dataset

from trl_reasoning_distill.brts import BRTSConfig, BRTSTrainer, contains_recovery_hint, student_context_loss
from trl_reasoning_distill.generation import Sample
from trl_reasoning_distill.kd_config import KDConfig
from trl_reasoning_distill.toy import parse_problem, problem_rows, sample_problems, solution

ROOT = Path(__file__).resolve().parents[1]
TIERS = ("frac_tier1", "frac_tier2", "frac_tier3")


def toy_rows(n: int = 8) -> Dataset:
    """Prompt-only training rows with their ground-truth `answer`."""
    return Dataset.from_list(problem_rows(sample_problems("train", n, seed=1), "train")).select_columns(
        ["prompt", "answer"])


def problem_of(prompt: str):
    return parse_problem(re.search(r"user\n([0-9+-]+)=\?", prompt).group(1))


class ScriptedTeacher:
    """A `Generator` writing `text_for(prompt, hinted, j)` as rollout j of each prompt; it records every call."""

    def __init__(self, tokenizer, text_for):
        self.tokenizer, self.text_for, self.calls = tokenizer, text_for, []

    def generate(self, prompt_ids, n=1, max_new_tokens=256, temperature=1.0, top_p=1.0, **kwargs):
        prompts = [self.tokenizer.decode(ids, skip_special_tokens=False) for ids in prompt_ids]
        self.calls.append({"prompts": prompts, "n": n, "max_new_tokens": max_new_tokens, "temperature": temperature,
                           "top_p": top_p})
        return [[self.sample(self.text_for(prompt, "SILENT_VALIDATION_KEY" in prompt, j)) for j in range(n)]
                for prompt in prompts]

    def sample(self, text: str) -> Sample:
        ids = self.tokenizer(text, add_special_tokens=False)["input_ids"] + [self.tokenizer.eos_token_id]
        return Sample(ids, text, "eos")


def right(prompt: str) -> str:
    return solution(problem_of(prompt), "ltr")


def wrong(prompt: str) -> str:
    problem = problem_of(prompt)
    return f"<think>{problem.text}</think>\\boxed{{{problem.answer + 1}}}"


def make_trainer(tmp_path, student, teacher, tokenizer, teacher_generator=None, dataset=None, **overrides):
    args = BRTSConfig(output_dir=str(tmp_path), per_device_train_batch_size=4, max_new_tokens=12, max_length=128,
                      **{**CPU_TRAINING, "max_steps": 2, **overrides})
    return BRTSTrainer(model=student, teacher_model=teacher, args=args, train_dataset=dataset or toy_rows(),
                       processing_class=tokenizer, teacher_generator=teacher_generator)


def sampled_batch(trainer, rows=range(4)) -> dict:
    """One micro-batch through the trainer's own sampling: student rollouts, teacher pool, selection."""
    collated = trainer.data_collator([trainer.train_dataset[i] for i in rows])
    batches, num_items = trainer.get_batch_samples(iter([collated]), 1, trainer.accelerator.device)
    return {**batches[0], "num_items_in_batch": num_items}


def loss_and_grads(trainer, batch, **kwargs):
    trainer.model.zero_grad()
    loss = trainer.compute_loss(trainer.model, batch, num_items_in_batch=batch["num_items_in_batch"], **kwargs)
    loss.backward()
    return loss.detach(), [p.grad.clone() for p in trainer.model.parameters()]


def last_metrics(trainer) -> dict[str, float]:
    return {name.removeprefix("brts/"): values[-1] for name, values in trainer._metrics["train"].items()}


@pytest.mark.parametrize("options", [{}, {"recovery": True, "alignment": "teacher_ctx"}], ids=["tier1", "recovery"])
def test_trains_two_steps_and_logs(tmp_path, tiny_student, tiny_teacher, tokenizer, options):
    trainer = make_trainer(tmp_path, tiny_student, tiny_teacher, tokenizer, **options)
    before = {n: p.clone() for n, p in trainer.model.named_parameters()}
    teacher_before = {n: p.clone() for n, p in trainer.teacher_model.named_parameters()}
    trainer.train()
    assert all(not torch.equal(p, trainer.model.get_parameter(n)) for n, p in before.items())
    assert all(torch.equal(p, trainer.teacher_model.get_parameter(n)) for n, p in teacher_before.items())
    logs = {k.removeprefix("brts/"): v for k, v in trainer.state.log_history[0].items()}
    assert sum(logs[name] for name in TIERS) == pytest.approx(1.0)
    assert 0.0 <= logs["pool_accuracy"] <= 1.0 and 0.0 <= logs["selected_alignment"] <= 1.0
    assert logs["student_context"] != 0 and logs["teacher_context"] != 0 and logs["selected_length"] > 0
    retried = options.get("recovery", False) * logs["tier1_retry_frac"]
    assert logs["teacher_rollouts"] == pytest.approx(4 * 2 + 4 * retried)  # spec §9 item 17: rows x N + |R| x M2
    assert ("tier2_rescue_frac" in logs) == bool(options)


@pytest.mark.parametrize("loss_chunk_size", [0, 5])
def test_plain_opd_when_lambda_is_zero(tmp_path, tiny_student, tiny_teacher, tokenizer, loss_chunk_size):
    """Spec §9 item 1: N = 1 and λ = 0 is the student-context top-K loss exactly, and the teacher never samples."""
    teacher = ScriptedTeacher(tokenizer, lambda prompt, hinted, j: right(prompt))
    trainer = make_trainer(tmp_path, tiny_student, tiny_teacher, tokenizer, teacher, num_teacher_rollouts=1,
                           teacher_context_coef=0.0, loss_chunk_size=loss_chunk_size)
    batch = sampled_batch(trainer)
    assert teacher.calls == [] and not any(key.startswith("selected_") for key in batch)
    loss, grads = loss_and_grads(trainer, batch)

    trainer.model.zero_grad()
    model_inputs = {"input_ids": batch["input_ids"], "attention_mask": batch["attention_mask"]}
    student_logits = trainer.model(**model_inputs).logits[:, :-1, : trainer.vocab_size]
    with torch.no_grad():
        teacher_logits = trainer.teacher_model(**model_inputs).logits[:, :-1, : trainer.vocab_size]
    expected = student_context_loss(student_logits, teacher_logits, batch["labels"][:, 1:] != -100, top_k=16,
                                    num_items_in_batch=batch["num_items_in_batch"])
    expected.backward()
    exact = dict(rtol=0, atol=0) if loss_chunk_size == 0 else dict(rtol=1e-5, atol=1e-7)
    torch.testing.assert_close(loss, expected.detach(), **exact)
    for actual, reference in zip(grads, [p.grad for p in trainer.model.parameters()]):
        torch.testing.assert_close(actual, reference, **exact)


def test_loss_is_linear_in_lambda(tmp_path, tiny_student, tiny_teacher, tokenizer):
    """Spec §9 item 15: L(λ) - L(0) = λ · L_T, and the gradients are linear in λ."""
    teacher = ScriptedTeacher(tokenizer, lambda prompt, hinted, j: right(prompt) if j else wrong(prompt))
    trainer = make_trainer(tmp_path, tiny_student, tiny_teacher, tokenizer, teacher, truncate_to_student_length=False)
    batch = sampled_batch(trainer)
    assert batch["selected_num_items"] != batch["num_items_in_batch"]  # each branch is a mean over its own tokens
    results = {}
    for coef in (0.0, 0.5, 1.0):
        trainer.args.teacher_context_coef = coef
        results[coef] = loss_and_grads(trainer, batch)
    teacher_context = last_metrics(trainer)["teacher_context"]  # this micro-batch's token mean = its loss share here
    assert teacher_context > 0
    torch.testing.assert_close(results[1.0][0] - results[0.0][0], torch.tensor(teacher_context), rtol=1e-5, atol=0)
    for g0, g_half, g1 in zip(results[0.0][1], results[0.5][1], results[1.0][1]):
        torch.testing.assert_close(g_half, g0 + 0.5 * (g1 - g0), rtol=1e-4, atol=1e-7)


@pytest.mark.parametrize("case", ["all_wrong", "mixed", "no_recovery"])
def test_recovery_runs_exactly_for_unsolved_prompts(tmp_path, tiny_student, tiny_teacher, tokenizer, case):
    """Spec §9 items 5-8, 10, 17: Tier 1 takes a correct rollout; only prompts without one are re-prompted (M2
    times, hint before the last assistant marker); a correct hinted rollout is Tier 2, trained under the original
    prompt; without recovery, such prompts fall to Tier 3."""

    def text_for(prompt, hinted, j):
        solved = case != "all_wrong" and problem_of(prompt).answer % 2 == 0
        return right(prompt) if hinted or (solved and j == 1) else wrong(prompt)

    teacher = ScriptedTeacher(tokenizer, text_for)
    trainer = make_trainer(tmp_path, tiny_student, tiny_teacher, tokenizer, teacher, recovery=case != "no_recovery",
                           num_recovery_rollouts=2, truncate_to_student_length=False, teacher_max_new_tokens=40)
    dataset = trainer.train_dataset
    rows = [i for i in range(len(dataset)) if int(dataset[i]["answer"]) % 2 == 0][:2] + [
        i for i in range(len(dataset)) if int(dataset[i]["answer"]) % 2 == 1][:2]
    batch = sampled_batch(trainer, rows)
    answers = batch["answers"]
    solved = [case != "all_wrong" and int(answer) % 2 == 0 for answer in answers]
    assert teacher.calls[0]["n"] == 2 and len(teacher.calls[0]["prompts"]) == 4
    assert (teacher.calls[0]["temperature"], teacher.calls[0]["top_p"], teacher.calls[0]["max_new_tokens"]) == (
        0.7, 0.95, 40)
    unsolved = [b for b in range(4) if not solved[b]]
    if case == "no_recovery":
        assert len(teacher.calls) == 1
    else:
        assert len(teacher.calls) == 2 and teacher.calls[1]["n"] == 2
        assert len(teacher.calls[1]["prompts"]) == len(unsolved)
        for b, hinted in zip(unsolved, teacher.calls[1]["prompts"]):
            assert contains_recovery_hint(hinted, answers[b]) and hinted.endswith("<|im_start|>assistant\n")
    metrics = last_metrics(trainer)
    tiers = {1: sum(solved), 2: 0 if case == "no_recovery" else len(unsolved), 3: 0}
    tiers[3] = 4 - tiers[1] - tiers[2]
    assert [metrics[f"count_tier{level}"] for level in (1, 2, 3)] == [tiers[1], tiers[2], tiers[3]]
    P = batch["prompts"].shape[1]
    assert torch.equal(batch["selected_input_ids"][:, :P], batch["prompts"])  # the original, hint-free prompt
    for b in range(4):
        prompt = tokenizer.decode(batch["prompts"][b], skip_special_tokens=True)
        supervised = batch["selected_labels"][b, P:]
        text = tokenizer.decode(supervised[supervised != -100])
        assert text == (right(prompt) if solved[b] or case != "no_recovery" else wrong(prompt))


def test_hint_never_reaches_the_student(tmp_path, tiny_student, tiny_teacher, tokenizer):
    """Spec §2.8, §9 item 10: train with every prompt rescued by a hinted rollout; decode all the loss sees."""
    teacher = ScriptedTeacher(tokenizer, lambda prompt, hinted, j: right(prompt) if hinted else wrong(prompt))
    trainer = make_trainer(tmp_path, tiny_student, tiny_teacher, tokenizer, teacher, recovery=True)
    seen, compute_loss = [], trainer.compute_loss

    def recording_compute_loss(model, inputs, *args, **kwargs):
        seen.append(inputs)
        return compute_loss(model, inputs, *args, **kwargs)

    trainer.compute_loss = recording_compute_loss
    trainer.train()
    assert len(seen) == 2 and trainer.state.log_history[0]["brts/frac_tier2"] == 1.0
    assert all(contains_recovery_hint(p, str(problem_of(p).answer)) for p in teacher.calls[1]["prompts"])
    for inputs in seen:
        for key in ("input_ids", "selected_input_ids"):
            for ids, answer in zip(inputs[key], inputs["answers"]):
                text = tokenizer.decode(ids, skip_special_tokens=False)
                assert not contains_recovery_hint(text, answer) and "validation key" not in text.lower()


def test_truncation_and_skip_masks(tmp_path, tiny_student, tiny_teacher, tokenizer):
    """Spec §2.9, §8 items 7 and 15: L_T stops at the student's length; `skip` drops Tier-3 rows from L_T."""
    teacher = ScriptedTeacher(tokenizer, lambda prompt, hinted, j: wrong(prompt) + " and more words" * 4)
    trainer = make_trainer(tmp_path, tiny_student, tiny_teacher, tokenizer, teacher)
    batch = sampled_batch(trainer)
    P = batch["prompts"].shape[1]
    student_lengths = batch["attention_mask"][:, P:].sum(1)
    supervised = (batch["selected_labels"][:, P:] != -100).sum(1)
    assert torch.all(supervised == student_lengths)  # every teacher rollout is longer than the student's 12 tokens
    trainer.args.tier3_fallback = "skip"
    batch = sampled_batch(trainer)
    assert torch.all(batch["selected_labels"] == -100) and batch["selected_num_items"] == 0
    loss, _ = loss_and_grads(trainer, batch)
    assert last_metrics(trainer)["teacher_context"] == 0.0 and torch.isfinite(loss)


@pytest.mark.parametrize("estimator, mode, weight_mode", [
    ("topk_rkl", "teacher_topk_fkl", "student_p"), ("full_rkl", "student_topk_rkl", "teacher_p"),
])
def test_chunked_path_equals_full_logits(tmp_path, tiny_student, tiny_teacher, tokenizer, estimator, mode,
                                         weight_mode):
    """The default loss from hidden states (no [T, V] logits) gives the full-logits loss, its gradient and metrics."""
    teacher = ScriptedTeacher(tokenizer, lambda prompt, hinted, j: right(prompt) if j else wrong(prompt))
    options = dict(student_context_estimator=estimator, teacher_context_mode=mode, weight_mode=weight_mode,
                   top_k=3, temperature=1.3, teacher_context_coef=0.5, truncate_to_student_length=False)
    chunked = make_trainer(tmp_path, tiny_student, tiny_teacher, tokenizer, teacher, loss_chunk_size=5, **options)
    dense = make_trainer(tmp_path, tiny_student, tiny_teacher, tokenizer, teacher, loss_chunk_size=0, **options)
    batch = sampled_batch(dense)
    assert batch["selected_num_items"] > 0
    head_outputs = []
    hooks = [model.get_output_embeddings().register_forward_hook(lambda m, i, out: head_outputs.append(out.shape))
             for model in (tiny_student, tiny_teacher)]
    loss, grads = loss_and_grads(chunked, batch)
    for hook in hooks:
        hook.remove()
    assert head_outputs and all(shape[1] == 1 for shape in head_outputs)  # the models' heads ran on one position
    expected, expected_grads = loss_and_grads(dense, batch)
    torch.testing.assert_close(loss, expected, rtol=1e-5, atol=1e-6)
    for actual, reference in zip(grads, expected_grads):
        torch.testing.assert_close(actual, reference, rtol=1e-4, atol=1e-6)
    for name in ("student_context", "teacher_context"):
        assert last_metrics(chunked)[name] == pytest.approx(last_metrics(dense)[name], rel=1e-5)


def selected_context_loss(trainer, batch):
    """L_S with the teacher read on the selected rollout at the same response positions (spec §2.11), built here."""
    model_inputs = {"input_ids": batch["input_ids"], "attention_mask": batch["attention_mask"]}
    student_logits = trainer.model(**model_inputs).logits[:, :-1, : trainer.vocab_size]
    width = student_logits.shape[1]
    with torch.no_grad():
        teacher = trainer.teacher_model(input_ids=batch["selected_input_ids"],
                                        attention_mask=batch["selected_attention_mask"]).logits[:, :-1]
    teacher_logits = torch.zeros_like(student_logits)
    available = torch.zeros(student_logits.shape[:2], dtype=torch.bool)
    reach = min(width, teacher.shape[1])
    teacher_logits[:, :reach] = teacher[:, :reach, : trainer.vocab_size]
    available[:, :reach] = batch["selected_context_mask"][:, 1 : reach + 1]
    return student_context_loss(student_logits, teacher_logits, batch["labels"][:, 1:] != -100, top_k=16,
                                teacher_available=available, num_items_in_batch=batch["num_items_in_batch"])


@pytest.mark.parametrize("loss_chunk_size", [0, 5])
def test_teacher_on_the_selected_context(tmp_path, tiny_student, tiny_teacher, tokenizer, loss_chunk_size):
    """Spec §2.11, `main_teacher_context="selected"`: L_S takes the teacher's log-probs on the selected rollout,
    log-prob 0 past it; L_T off (λ = 0) yet the pool is sampled. Shorter teacher rollouts than the student's."""
    teacher = ScriptedTeacher(tokenizer, lambda prompt, hinted, j: right(prompt)[:6] if j else wrong(prompt))
    options = dict(teacher_context_coef=0.0, loss_chunk_size=loss_chunk_size)
    trainer = make_trainer(tmp_path, tiny_student, tiny_teacher, tokenizer, teacher, main_teacher_context="selected",
                           **options)
    batch = sampled_batch(trainer)
    assert len(teacher.calls) == 1 and "selected_context_mask" in batch
    P = batch["prompts"].shape[1]
    assert (batch["selected_context_mask"][:, P:].sum(1) < batch["attention_mask"][:, P:].sum(1)).any()
    loss, grads = loss_and_grads(trainer, batch)
    trainer.model.zero_grad()
    expected = selected_context_loss(trainer, batch)
    expected.backward()
    torch.testing.assert_close(loss, expected.detach(), rtol=1e-5, atol=1e-7)
    for actual, reference in zip(grads, [p.grad for p in trainer.model.parameters()]):
        torch.testing.assert_close(actual, reference, rtol=1e-4, atol=1e-7)
    paper = make_trainer(tmp_path, tiny_student, tiny_teacher, tokenizer, teacher, **options)
    assert not torch.allclose(loss_and_grads(paper, batch)[0], loss)  # the switch changes L_S
    assert "teacher_context" not in last_metrics(trainer)  # L_T is not computed when it is not trained


@pytest.mark.parametrize("loss_chunk_size", [0, 5])
def test_auto_overlap_picks_one_context_for_the_batch(tmp_path, tiny_student, tiny_teacher, tokenizer,
                                                      loss_chunk_size):
    """Spec §2.11, `"auto_overlap"`: the loss is the selected context's when its top-K overlap is strictly greater,
    else the student's; a teacher equal to the student overlaps fully on the student's context, which then wins."""
    scripted = ScriptedTeacher(tokenizer, lambda prompt, hinted, j: right(prompt))
    for teacher_model, student_wins in ((tiny_teacher, None), (copy.deepcopy(tiny_student), True)):
        trainer = make_trainer(tmp_path, tiny_student, teacher_model, tokenizer, scripted, teacher_context_coef=0.0,
                               main_teacher_context="auto_overlap", loss_chunk_size=loss_chunk_size)
        batch = sampled_batch(trainer)
        loss = loss_and_grads(trainer, batch)[0]
        metrics = last_metrics(trainer)
        if student_wins:
            assert metrics["main_context_overlap_student"] == 1.0 and metrics["main_context_selected"] == 0.0
        picked = "selected" if metrics["main_context_selected"] else "student"
        trainer.args.main_teacher_context = picked
        torch.testing.assert_close(loss, loss_and_grads(trainer, batch)[0], rtol=1e-5, atol=1e-7)


def test_released_setting_trains_two_steps(tmp_path, tiny_student, tiny_teacher, tokenizer):
    """The released launchers (examples/configs/brts_released.yaml): G = 2 student rollouts per prompt, each row
    with its own pool, L_S's teacher context picked by overlap, L_T not trained."""
    trainer = make_trainer(tmp_path, tiny_student, tiny_teacher, tokenizer, num_generations=2,
                           main_teacher_context="auto_overlap", teacher_context_coef=0.0)
    batch = sampled_batch(trainer, rows=range(2))
    assert batch["answers"][0] == batch["answers"][1] and batch["input_ids"].shape[0] == 4
    before = {n: p.clone() for n, p in trainer.model.named_parameters()}
    trainer.train()
    assert all(not torch.equal(p, trainer.model.get_parameter(n)) for n, p in before.items())
    logs = [{k.removeprefix("brts/"): v for k, v in entry.items()} for entry in trainer.state.log_history[:2]]
    rows = [sum(log[f"count_tier{level}"] for level in (1, 2, 3)) for log in logs]
    assert all(n > 0 and n % 2 == 0 for n in rows)  # every prompt twice
    assert [log["teacher_rollouts"] for log in logs] == [2 * n for n in rows]  # N = 2 rollouts per row
    assert all(log["main_context_selected"] in (0.0, 1.0) and "teacher_context" not in log for log in logs)
    assert trainer.state.global_step == 2


def test_paper_defaults(tmp_path):
    args = BRTSConfig(output_dir=str(tmp_path))
    spec = dict(lmbda=1.0, temperature=1.0, top_k=16, teacher_context_coef=0.05, student_context_estimator="topk_rkl",
                weight_mode="student_p", teacher_context_mode="teacher_topk_fkl", truncate_to_student_length=True,
                num_teacher_rollouts=2, teacher_temperature=0.7, teacher_top_p=0.95, teacher_max_new_tokens=None,
                answer_column="answer", answer_extraction="boxed", alignment="positional", recovery=False,
                num_recovery_rollouts=1, recovery_leak_filter=False, tier3_fallback="most_similar",
                num_generations=1, main_teacher_context="student")
    assert {k: getattr(args, k) for k in spec} == spec


@pytest.mark.parametrize("field, value", [
    ("lmbda", 0.5), ("seq_kd", True), ("top_k", 0), ("num_teacher_rollouts", 0), ("num_recovery_rollouts", 0),
    ("teacher_context_coef", -0.1), ("teacher_temperature", 0.0), ("teacher_top_p", 1.5),
    ("teacher_max_new_tokens", 0), ("answer_column", ""), ("student_context_estimator", "kl"),
    ("weight_mode", "uniform"), ("teacher_context_mode", "jsd"), ("answer_extraction", "regex"),
    ("alignment", "log_likelihood"), ("tier3_fallback", "drop"), ("num_generations", 0),
    ("main_teacher_context", "teacher"),
])
def test_bad_values_raise(tmp_path, field, value):
    with pytest.raises(ValueError, match=field) as error:
        BRTSConfig(output_dir=str(tmp_path), **{field: value})
    assert str(value) in str(error.value)


def test_dataset_without_answers_is_refused_before_training(tmp_path, tiny_student, tiny_teacher, tokenizer):
    prompts_only = toy_rows().select_columns(["prompt"])
    with pytest.raises(ValueError, match="'answer' column"):
        make_trainer(tmp_path, tiny_student, tiny_teacher, tokenizer, dataset=prompts_only)
    make_trainer(tmp_path, tiny_student, tiny_teacher, tokenizer, dataset=prompts_only, teacher_context_coef=0.0)


def test_needs_a_brts_config(tmp_path, tiny_student, tiny_teacher, tokenizer):
    with pytest.raises(ValueError, match="BRTSConfig"):
        BRTSTrainer(model=tiny_student, teacher_model=tiny_teacher, args=KDConfig(output_dir=str(tmp_path)),
                    train_dataset=toy_rows(), processing_class=tokenizer)


@pytest.mark.slow
def test_toy_benchmark_resumes_and_tabulates(tmp_path):
    spec = importlib.util.spec_from_file_location("benchmark_brts_toy", ROOT / "benchmarks" / "brts_toy.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    out = tmp_path / "study.csv"
    argv = ["--seeds", "0", "--steps", "2", "--n_test", "4", "--out", str(out),
            "--variants", "plain OPD (student-context term only)", "BRTS N=2 + recovery"]
    module.main(argv)
    module.main(argv)  # finished runs are not redone
    rows = list(csv.DictReader(out.open()))
    assert [row["variant"] for row in rows] == ["student (cold start)", "teacher", "plain OPD (student-context term "
                                                "only)", "BRTS N=2 + recovery"]
    assert all(0.0 <= float(row[split]) <= 1.0 for row in rows for split in ("accuracy_easy", "accuracy_hard"))
    table = module.table(out)
    assert "| BRTS N=2 + recovery | 1 |" in table and "| plain OPD (student-context term only) | 1 |" in table
    step_times = module.step_time_table(1, ["BRTS N=2"], tmp_path / "step_time.csv", repeats=2)
    timed = list(csv.DictReader((tmp_path / "step_time.csv").open()))
    assert [row["variant"] for row in timed] == ["plain OPD (student-context term only)", "BRTS N=2"]
    assert float(timed[0]["ratio_to_plain_opd"]) == 1.0 and float(timed[1]["cpu_seconds_per_step"]) > 0
    assert float(timed[1]["ratio_min"]) <= float(timed[1]["ratio_to_plain_opd"]) <= float(timed[1]["ratio_max"])
    assert "| plain OPD (student-context term only) | " in step_times and "| BRTS N=2 | " in step_times
