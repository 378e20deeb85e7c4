"""VCRDTrainer, VCRDConfig and the VCRD data helpers (VCRD spec §2.10, §8, §9): two training steps with every judge,
offline and online; the chunked loss against full logits; the DistiLLM-2 loss at constant weights; DistiLLM-2's
chosen/rejected columns; stop-gradient weights; errors before any compute; the toy study script (slow)."""

import csv
import importlib.util
from pathlib import Path

import pytest
import torch
from conftest import CPU_TRAINING
from datasets import Dataset
from transformers import Qwen2Config, Qwen2ForTokenClassification

from trl_reasoning_distill.divergence import skew_kl, skew_reverse_kl
from trl_reasoning_distill.toy import load_toy_student, load_toy_teacher, load_toy_tokenizer
from trl_reasoning_distill.toy.task import parse_problem, sample_problems, solution
from trl_reasoning_distill.vcrd import (
    ProposalScores,
    VCRDConfig,
    VCRDTrainer,
    sample_vcrd_rollouts,
    to_vcrd_dataset,
)
from trl_reasoning_distill.vcrd.trainer import line_layout, proposed_line

BENCHMARK = Path(__file__).resolve().parents[1] / "benchmarks" / "vcrd_toy.py"
REQUIRED = ("weight_mean", "weight_std", "clip_frac", "teacher_weight_mean", "student_weight_mean", "lv_skl")


def wrong(problem) -> str:
    """The left-to-right solution with its boxed answer off by one (its last step is invalid)."""
    return solution(problem, "ltr").replace(f"{{{problem.answer}}}", f"{{{problem.answer + 1}}}")


def vcrd_rows(n=8, teacher="teacher_completion", student="student_completion", as_messages=False) -> Dataset:
    rows = []
    for i, p in enumerate(sample_problems("train", n, seed=1)):
        replies = solution(p, "ltr"), solution(p, "verbose") if i % 2 else wrong(p)
        if as_messages:
            replies = [[{"role": "assistant", "content": r}] for r in replies]
        rows.append({"prompt": [{"role": "user", "content": p.prompt}], teacher: replies[0], student: replies[1]})
    return Dataset.from_list(rows)


def tiny_prm(tokenizer, rows=None) -> Qwen2ForTokenClassification:
    config = Qwen2Config(
        vocab_size=rows or len(tokenizer) + 5, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
        num_attention_heads=4, num_key_value_heads=2, num_labels=1, attn_implementation="sdpa",
        pad_token_id=tokenizer.pad_token_id,
    )  # fmt: skip
    return Qwen2ForTokenClassification(config)


@pytest.fixture(scope="module")
def toy_tokenizer():
    return load_toy_tokenizer()


def make_trainer(tmp_path, tokenizer, dataset=None, trainer_kwargs=None, **overrides):
    args = VCRDConfig(output_dir=str(tmp_path), max_new_tokens=24, max_length=192, max_prompt_length=32,
                      line_proposal_max_new_tokens=12,
                      **{**CPU_TRAINING, "max_steps": 2, "per_device_train_batch_size": 4, **overrides})
    return VCRDTrainer(model=load_toy_student(), teacher_model=load_toy_teacher(), args=args,
                       train_dataset=vcrd_rows() if dataset is None else dataset, processing_class=tokenizer,
                       **(trainer_kwargs or {}))


def capture_weights(trainer) -> list:
    """Record what the trainer's weight computation returns, `(weights_2BT, agreement)`, at each call."""
    captured, compute = [], trainer._token_weights

    def recording(*args):
        captured.append(compute(*args))
        return captured[-1]

    trainer._token_weights = recording
    return captured


def first_batch(trainer, n=4):
    return trainer._prepare_inputs(trainer.data_collator([trainer.train_dataset[i] for i in range(n)]))


@pytest.mark.parametrize("judge, rollout, source", [
    ("step_checker", "offline", "same_prefix"), ("step_checker", "online", "same_prefix"),
    ("step_checker", "offline", "aligned_rollout"), ("prm", "offline", "same_prefix"),
    ("prm", "online", "aligned_rollout"), ("teacher_prob", "offline", "same_prefix"),
    ("teacher_prob", "online", "same_prefix"), ("constant", "offline", "same_prefix"),
])  # fmt: skip
def test_trains_two_steps_and_logs(tmp_path, toy_tokenizer, judge, rollout, source):
    prm = tiny_prm(toy_tokenizer) if judge == "prm" else None
    clip = {"weight_clip_max": 2.0} if judge == "step_checker" else {}  # {0, 1} scores: w = 1/ε unclipped
    trainer = make_trainer(tmp_path, toy_tokenizer, trainer_kwargs={"prm_model": prm} if prm else None,
                           validity_judge=judge, student_rollout=rollout, proposal_source=source, **clip)
    frozen = [trainer.teacher_model, *([prm] if prm else [])]
    frozen_before = [{n: p.clone() for n, p in m.named_parameters()} for m in frozen]
    before = {n: p.clone() for n, p in trainer.model.named_parameters()}
    trainer.train()
    assert all(not torch.equal(p, trainer.model.get_parameter(n)) for n, p in before.items())
    assert all(torch.equal(p, m.get_parameter(n)) for m, snap in zip(frozen, frozen_before) for n, p in snap.items())
    logs = trainer.state.log_history[0]
    assert all(f"vcrd/{name}" in logs for name in REQUIRED)
    assert ("vcrd/completion_length" in logs) == (rollout == "online")
    assert ("vcrd/proposal_agree_frac" in logs) == (judge in ("prm", "step_checker"))
    if judge == "step_checker":
        assert logs["vcrd/weight_max"] <= 2.0 and 0.0 <= logs["vcrd/clip_frac"] <= 1.0


def test_evaluation_loss(tmp_path, toy_tokenizer):
    trainer = make_trainer(tmp_path, toy_tokenizer, validity_judge="teacher_prob", per_device_eval_batch_size=4)
    metrics = trainer.evaluate(vcrd_rows(4, "chosen", "rejected"))  # raw rows in DistiLLM-2's format
    assert metrics["eval_loss"] > 0


@pytest.mark.parametrize("judge, options", [
    ("teacher_prob", {}), ("prm", {"student_proposal": "greedy", "teacher_proposal": "greedy"}),
    ("step_checker", {"proposal_source": "aligned_rollout", "weight_clip_max": 3.0}),
])  # fmt: skip
def test_chunked_path_equals_full_logits(tmp_path, toy_tokenizer, judge, options):
    """Loss, gradients and weight metrics of the default chunked loss equal those of full logits (`loss_chunk_size=0`),
    here with a divergence temperature and unequal λ."""
    prm = tiny_prm(toy_tokenizer) if judge == "prm" else None
    common = dict(validity_judge=judge, temperature=1.3, lambda_teacher=2.0, lambda_student=1.5, **options)
    trainers = [make_trainer(tmp_path, toy_tokenizer, trainer_kwargs={"prm_model": prm} if prm else None,
                             loss_chunk_size=size, **common) for size in (7, 0)]
    batch = first_batch(trainers[0])
    losses, grads = [], []
    for trainer in trainers:
        trainer.model.load_state_dict(trainers[0].model.state_dict())
        trainer.model.train()  # as in training (dropout is disabled); metrics go to "train"
        loss = trainer.compute_loss(trainer.model, batch, num_items_in_batch=torch.tensor(12))
        loss.backward()
        losses.append(loss)
        grads.append([p.grad.clone() for p in trainer.model.parameters()])
    torch.testing.assert_close(losses[0], losses[1], rtol=1e-5, atol=1e-7)
    for chunked, dense in zip(*grads):
        torch.testing.assert_close(chunked, dense, rtol=1e-4, atol=1e-7)
    for name in ("weight_mean", "weight_std", "clip_frac", "lv_skl", "lv_srkl"):
        values = [t._metrics["train"][f"vcrd/{name}"][-1] for t in trainers]
        assert values[0] == pytest.approx(values[1], rel=1e-4, abs=1e-6)


class ConstantScorer:
    """A judge giving every proposal the same validity (spec §8.1: parity)."""

    def __init__(self, value, requires_grad=False):
        self.value, self.requires_grad = value, requires_grad

    def __call__(self, prompts, pairs):
        def scores(n):
            return torch.full((n,), self.value, requires_grad=self.requires_grad)

        return [ProposalScores(scores(len(p)), scores(len(p))) for p in pairs]


def distillm2_loss(trainer, batch) -> torch.Tensor:
    """DistiLLM-2's loss written out: per-response token means of SKL (teacher responses) and SRKL (student ones)."""
    V, total = len(trainer.processing_class), 0.0
    for who, divergence in (("teacher", skew_kl), ("student", skew_reverse_kl)):
        ids, attention = batch[f"{who}_input_ids"], batch[f"{who}_attention_mask"]
        mask = batch[f"{who}_labels"][:, 1:] != -100
        with torch.no_grad():
            q = trainer.model(input_ids=ids, attention_mask=attention).logits[:, :-1, :V]
            p = trainer.teacher_model(input_ids=ids, attention_mask=attention).logits[:, :-1, :V]
        values = divergence(q, p, alpha=0.1)
        total = total + ((values * mask).sum(-1) / mask.sum(-1)).mean()
    return total


@pytest.mark.parametrize("chunk", [-1, 0])
@pytest.mark.parametrize("judge", ["constant", "parity_prm", "constant_rule"])
def test_constant_weights_give_the_distillm2_loss(tmp_path, toy_tokenizer, chunk, judge):
    options = {"constant": {"validity_judge": "constant"}, "parity_prm": {"validity_judge": "prm"},
               "constant_rule": {"validity_judge": "step_checker", "weighting_rule": "constant"}}[judge]
    kwargs = {"validity_scorer": ConstantScorer(0.7)} if judge == "parity_prm" else None
    trainer = make_trainer(tmp_path, toy_tokenizer, trainer_kwargs=kwargs, loss_chunk_size=chunk, **options)
    batch = first_batch(trainer)
    with torch.no_grad():
        loss = trainer.compute_loss(trainer.model, batch)
    torch.testing.assert_close(loss, distillm2_loss(trainer, batch), rtol=1e-5, atol=1e-7)


def test_loss_is_the_mean_over_prompts_of_the_global_batch(tmp_path, toy_tokenizer):
    """Two micro-batches of 2 given the global count of 4 prompts sum to the loss of one batch of 4 (spec §8.14)."""
    trainer = make_trainer(tmp_path, toy_tokenizer, validity_judge="teacher_prob")
    rows = [trainer.train_dataset[i] for i in range(4)]
    whole = trainer.compute_loss(trainer.model, trainer.data_collator(rows))
    shares = [trainer.compute_loss(trainer.model, trainer.data_collator(rows[i : i + 2]), num_items_in_batch=4)
              for i in (0, 2)]
    torch.testing.assert_close(shares[0] + shares[1], whole, rtol=1e-5, atol=1e-7)
    batches = [trainer.data_collator(rows[:2]), trainer.data_collator(rows[2:])]
    assert trainer.get_batch_samples(iter(batches), 2, torch.device("cpu"))[1].item() == 4


def test_chosen_and_rejected_columns_are_accepted(tmp_path, toy_tokenizer):
    ours = make_trainer(tmp_path, toy_tokenizer, validity_judge="constant")
    theirs = make_trainer(tmp_path, toy_tokenizer, dataset=vcrd_rows(teacher="chosen", student="rejected",
                                                                     as_messages=True), validity_judge="constant")
    a, b = first_batch(ours), first_batch(theirs)
    assert a.keys() == b.keys() and a["prompt_text"] == b["prompt_text"]
    assert all(torch.equal(a[k], b[k]) for k in a if k != "prompt_text")
    assert b["student_labels"][0, -1] == toy_tokenizer.eos_token_id  # responses end with EOS (DistiLLM-2)
    theirs.train()


def test_weights_carry_no_gradient(tmp_path, toy_tokenizer):
    """A differentiable judge output changes no gradient; weights, teacher and PRM get none (spec §8.7)."""
    grads = []
    for requires_grad in (False, True):
        trainer = make_trainer(tmp_path, toy_tokenizer, validity_judge="prm",
                               trainer_kwargs={"validity_scorer": ConstantScorer(0.4, requires_grad)})
        captured = capture_weights(trainer)
        trainer.compute_loss(trainer.model, first_batch(trainer)).backward()
        assert not captured[0][0].requires_grad
        assert all(p.grad is None for p in trainer.teacher_model.parameters())
        grads.append([p.grad for p in trainer.model.parameters()])
    for plain, differentiable in zip(*grads):
        torch.testing.assert_close(plain, differentiable)
    prm = tiny_prm(toy_tokenizer)
    trainer = make_trainer(tmp_path, toy_tokenizer, validity_judge="prm", trainer_kwargs={"prm_model": prm})
    trainer.compute_loss(trainer.model, first_batch(trainer)).backward()
    assert all(p.grad is None and not p.requires_grad for p in prm.parameters())


def test_line_layout_and_aligned_step_checker_weights(tmp_path, toy_tokenizer):
    """Algorithm 1 read literally on lines: the student's second and last lines are wrong, so w = 0 on their tokens
    in both halves and about 1 elsewhere; separators belong to the line before them."""
    p = parse_problem("47+38-19+25=?")
    student_reply = "<think>47+38=85\n85-19=76\n76+25=101</think>\\boxed{101}"
    dataset = Dataset.from_list([{"prompt": p.prompt, "teacher_completion": solution(p, "ltr"),
                                  "student_completion": student_reply}])
    trainer = make_trainer(tmp_path, toy_tokenizer, dataset=dataset, validity_judge="step_checker",
                           proposal_source="aligned_rollout", per_device_train_batch_size=1)
    captured = capture_weights(trainer)
    batch = first_batch(trainer, 1)
    trainer.compute_loss(trainer.model, batch)
    weights = captured[0][0]
    # Expected weights written out per text segment: each line owns the separator or marker that ends it, EOS too.
    segments = {
        0: [("<think>47+38=85\n", 1.0), ("85-19=66\n", 0.0), ("66+25=91</think>", 1.0), ("\\boxed{91}", 0.0)],
        1: [("<think>47+38=85\n", 1.0), ("85-19=76\n", 0.0), ("76+25=101</think>", 1.0), ("\\boxed{101}", 0.0)],
    }
    for row, parts in segments.items():
        expected = [w for text, w in parts for _ in toy_tokenizer(text, add_special_tokens=False)["input_ids"]]
        expected = torch.tensor([*expected, parts[-1][1]])  # EOS goes with the boxed answer
        torch.testing.assert_close(weights[row, -len(expected) :], expected, atol=1e-7, rtol=0)  # left-padded
    ids = toy_tokenizer(student_reply, add_special_tokens=False)["input_ids"]
    layout = line_layout(toy_tokenizer, ids)
    assert layout.steps == ("47+38=85", "85-19=76", "76+25=101", "\\boxed{101}")
    assert layout.first_token == [1, 10, 19, 29] and layout.first_char == [7, 16, 25, 42]


def test_same_prefix_line_proposals(tmp_path, toy_tokenizer):
    trainer = make_trainer(tmp_path, toy_tokenizer, validity_judge="step_checker")
    batch = trainer.generate_missing(first_batch(trainer, 2))
    for who, proposals in zip(("teacher", "student"), batch["line_proposals"]):
        for labels, lines in zip(batch[f"{who}_labels"], proposals):
            assert len(lines) == len(line_layout(toy_tokenizer, labels[labels != -100].tolist()).steps)
            assert all(isinstance(line, str) and "\n" not in line for line in lines)
    layout = line_layout(toy_tokenizer, toy_tokenizer("<think>1+2=3\n3+4=7</think>\\boxed{7}")["input_ids"])
    assert proposed_line(layout, 1, "3+4=8") == "3+4=8" and proposed_line(layout, 2, "\\boxed{7}") == "\\boxed{7}"
    assert proposed_line(layout, 1, "") == ""


def test_offline_never_generates_and_online_samples_with_the_rollout_settings(tmp_path, toy_tokenizer, monkeypatch):
    trainer = make_trainer(tmp_path, toy_tokenizer, validity_judge="teacher_prob", max_steps=1)
    monkeypatch.setattr(trainer.model, "generate", lambda *a, **k: pytest.fail("offline mode generated"))
    trainer.train()
    trainer = make_trainer(tmp_path, toy_tokenizer, validity_judge="teacher_prob", student_rollout="online")
    calls, generate = [], trainer.model.generate
    monkeypatch.setattr(trainer.model, "generate", lambda *a, **k: calls.append(k) or generate(*a, **k))
    batch = trainer.generate_missing(first_batch(trainer))
    config = calls[0]["generation_config"]
    assert (config.temperature, config.top_p, config.do_sample) == (0.8, 0.95, True)  # spec A10 / §8.15
    prompt_width = batch["prompts"].shape[1]
    assert (batch["student_labels"][:, :prompt_width] == -100).all()
    assert (batch["student_labels"][:, prompt_width:] != -100).any()


@pytest.mark.parametrize("change, match", [
    ({"drop": "teacher_completion"}, "teacher response"), ({"drop": "student_completion"}, "student_rollout"),
    ({"prompt": [{"role": "user", "content": " "}]}, "empty prompt"),
    ({"teacher_completion": ""}, "empty teacher response"), ({"add": "chosen"}, "both"),
    ({"teacher_completion": [{"role": "user", "content": "1"}]}, "must be a string or chat messages"),
    ({"prompt": [{"role": "user", "content": "what is 2+2?"}], "judge": "step_checker"}, "not a toy problem"),
    ({"judge": "prm"}, "needs a PRM"), ({"judge": "prm", "prm_rows": 50}, "embedding rows"),
    ({"judge": "teacher_prob", "prm_rows": 200}, "uses no judge model"),
])  # fmt: skip
def test_bad_input_raises_before_any_compute(tmp_path, toy_tokenizer, change, match):
    rows = vcrd_rows(4).to_list()
    for row in rows:  # every row, so that a column keeps one type
        row |= {key: change[key] for key in ("prompt", "teacher_completion") if key in change}
    dataset = Dataset.from_list(rows)
    if "drop" in change:
        dataset = dataset.remove_columns(change["drop"])
    if "add" in change:
        dataset = dataset.add_column(change["add"], dataset["teacher_completion"])
    kwargs = {"prm_model": tiny_prm(toy_tokenizer, change["prm_rows"])} if "prm_rows" in change else None
    with pytest.raises(ValueError, match=match):
        make_trainer(tmp_path, toy_tokenizer, dataset=dataset, trainer_kwargs=kwargs,
                     validity_judge=change.get("judge", "constant"))


def test_prm_loaded_by_name_needs_all_its_weights(tmp_path, toy_tokenizer):
    from safetensors.torch import load_file, save_file

    path = tmp_path / "prm"
    tiny_prm(toy_tokenizer).save_pretrained(path)
    weights = load_file(path / "model.safetensors")
    save_file({k.replace("score.", "v_head.summary."): v for k, v in weights.items()}, path / "model.safetensors",
              metadata={"format": "pt"})
    with pytest.raises(ValueError, match="key_mapping"):
        make_trainer(tmp_path, toy_tokenizer, validity_judge="prm", prm_model_name_or_path=str(path))
    trainer = make_trainer(tmp_path, toy_tokenizer, validity_judge="prm", prm_model_name_or_path=str(path),
                           prm_model_init_kwargs='{"key_mapping": {"^v_head.summary": "score"}}')
    torch.testing.assert_close(trainer.validity_scorer.model.score.weight, weights["score.weight"])


def test_paper_defaults(tmp_path):
    args = VCRDConfig(output_dir=str(tmp_path))
    paper = dict(lambda_teacher=1.0, lambda_student=1.0, skew_alpha=0.1, validity_eps=1e-8, learning_rate=5e-5,
                 max_length=1024, max_prompt_length=512, max_new_tokens=512, teacher_prob_top_k=128,
                 teacher_prob_gamma=0.5, teacher_prob_clip_min=0.5, teacher_prob_clip_max=2.0, validity_judge="prm",
                 weighting_rule="ratio", proposal_source="same_prefix", student_rollout="offline",
                 rollout_temperature=0.8, rollout_top_p=0.95, weight_clip_max=None, loss_reduction="seq_mean",
                 temperature=1.0, lmbda=0.0)
    assert {k: getattr(args, k) for k in paper} == paper


@pytest.mark.parametrize("field, value", [
    ("lambda_teacher", -1.0), ("loss_reduction", "token_mean"), ("validity_judge", "gpt"), ("weighting_rule", "max"),
    ("validity_eps", 0.0), ("proposal_source", "random"), ("student_proposal", "beam"), ("proposal_temperature", 0.0),
    ("teacher_prob_top_k", 0), ("teacher_prob_clip_min", 0.0), ("student_rollout", "both"), ("rollout_top_p", 1.5),
    ("max_prompt_length", 4096), ("lmbda", 0.5), ("prm_scoring_impl", "fused"), ("line_proposal_max_new_tokens", 0),
])  # fmt: skip
def test_bad_config_values_raise(tmp_path, field, value):
    with pytest.raises(ValueError, match=field):
        VCRDConfig(output_dir=str(tmp_path), **{field: value})


def test_weight_clip_checks(tmp_path):
    with pytest.raises(ValueError, match="weight_clip_min"):
        VCRDConfig(output_dir=str(tmp_path), weight_clip_min=2.0, weight_clip_max=1.0)
    with pytest.raises(ValueError, match="teacher_prob_clip"):
        VCRDConfig(output_dir=str(tmp_path), validity_judge="teacher_prob", weight_clip_max=2.0)
    with pytest.raises(ValueError, match="both 0"):
        VCRDConfig(output_dir=str(tmp_path), lambda_teacher=0.0, lambda_student=0.0)


def test_sample_vcrd_rollouts_gives_trainable_rows(tiny_student, tiny_teacher, tokenizer):
    prompts = [{"prompt": p.prompt, "answer": str(p.answer)} for p in sample_problems("train", 3, seed=2)]
    data = sample_vcrd_rollouts(tiny_teacher, tiny_student, tokenizer, prompts, max_new_tokens=6)
    assert data.column_names == ["prompt", "answer", "teacher_completion", "student_completion"]
    assert all(isinstance(text, str) for text in [*data["teacher_completion"], *data["student_completion"]])
    assert sorted(to_vcrd_dataset(data).column_names) == ["answer", "messages", "student_completion"]
    online = to_vcrd_dataset(data, student_rollout="online")
    assert "student_completion" not in online.column_names


@pytest.mark.slow
def test_toy_study_resumes_and_tabulates(tmp_path):
    spec = importlib.util.spec_from_file_location("benchmark_vcrd_toy", BENCHMARK)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    out = tmp_path / "study.csv"
    argv = ["--seeds", "0", "--steps", "2", "--n_test", "4", "--out", str(out), "--variants", "VCRD (PRM-free)"]
    module.main(argv)
    module.main(argv)  # finished runs are not redone
    rows = list(csv.DictReader(out.open()))
    assert [row["variant"] for row in rows] == ["student (cold start)", "VCRD (PRM-free)"]
    assert float(rows[1]["scorer_ratio"]) >= 0
    assert "| VCRD (PRM-free) | 1 |" in module.table(out)
