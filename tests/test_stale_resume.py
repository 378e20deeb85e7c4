"""Resumable outputs never go stale: Gen-SSD sampler files, CoTD-PO rounds, rejection sampling and VCRD rollouts
each carry a fingerprint of the models, data and settings that made them. A resume under another setting, model or
data set refuses (naming the field), the same settings resume into identical output, `overwrite=True` starts afresh,
and repeated ids are refused."""

import copy
import json
import re
from pathlib import Path

import pytest
import torch
from conftest import CPU_TRAINING
from datasets import Dataset

from trl_reasoning_distill.baselines import rejection_sample
from trl_reasoning_distill.cotd_po import (
    APIJudgeScorer,
    CoTDPOConfig,
    CoTDPORoundsConfig,
    LogProbTeacherScorer,
    ToyCorrectnessScorer,
    run_rounds,
)
from trl_reasoning_distill.cotd_po.rounds import round_dir
from trl_reasoning_distill.evaluation import encode_prompts
from trl_reasoning_distill.fingerprint import StaleOutputError, fingerprint_path
from trl_reasoning_distill.gen_ssd.sampler import ChunkSampling, GenSSDSampler, all_records_path
from trl_reasoning_distill.generation import HFGenerator
from trl_reasoning_distill.toy import load_toy_student, load_toy_teacher, load_toy_tokenizer, toy_dataset
from trl_reasoning_distill.toy.models import build_student
from trl_reasoning_distill.vcrd import data as vcrd_data
from trl_reasoning_distill.vcrd.data import sample_vcrd_rollouts
from trl_reasoning_distill.verify import extract_answer, grade

SMALL = ChunkSampling(chunk_size=16, max_new_tokens=48, num_candidates=(3, 2), beam_width=2, temperature=1.0)


@pytest.fixture(scope="module")
def toy():
    """The trained toy teacher and cold-started student, with their tokenizer."""
    return load_toy_teacher(), load_toy_student(), load_toy_tokenizer()


def nudged(model):
    """A copy of `model` with one weight changed: another model to the fingerprint."""
    other = copy.deepcopy(model)
    with torch.no_grad():
        other.model.norm.weight.add_(1e-3)
    return other


def other_answers(dataset: Dataset) -> Dataset:
    """The same ids and prompts with other answers: other data under the same ids."""
    return Dataset.from_list([{**row, "answer": str(int(row["answer"]) + 1)} for row in dataset])


def names(field: str) -> str:
    """The refusal's line for `field` (`  field: old -> new`, or the data set's line), then the flag."""
    return rf"(?s)\n  {re.escape(field)}: .*Pass --overwrite"


def snapshot(*paths: Path) -> list[bytes | None]:
    return [path.read_bytes() if path.exists() else None for path in paths]


# --- Gen-SSD sampler -------------------------------------------------------------------------------------------------


def gen_ssd(toy, path, data, teacher=None, student=None, sampling=SMALL, overwrite=False, **kwargs):
    teacher_model, student_model, tokenizer = toy
    sampler = GenSSDSampler(teacher or teacher_model, student or student_model, tokenizer, sampling,
                            **{"batch_size": 2, "progress": False, **kwargs})
    return sampler.sample(data, path, **({"overwrite": True} if overwrite else {}))


@pytest.mark.parametrize("change, field", [
    ({"sampling": ChunkSampling(**{**SMALL.__dict__, "temperature": 0.7})}, "temperature"),
    ({"sampling": ChunkSampling(**{**SMALL.__dict__, "num_candidates": (4, 2)})}, "num_candidates"),
    ({"sampling": ChunkSampling(**{**SMALL.__dict__, "chunk_size": 24})}, "chunk_size"),
    ({"sampling": ChunkSampling(**{**SMALL.__dict__, "beam_width": 1})}, "beam_width"),
    ({"seed": 1}, "seed"),
    ({"keep_only_correct": False}, "keep_only_correct"),
    ({"answer_extraction": "boxed"}, "answer_extraction"),
    ({"batch_size": 4}, "batch_size"),
    ("teacher", "teacher"),
    ("student", "student"),
    ("data", "dataset"),
])
def test_gen_ssd_refuses_a_resume_under_other_settings_models_or_data(toy, tmp_path, change, field):
    data, path = toy_dataset("train", 4, seed=11), tmp_path / "ssd.jsonl"
    gen_ssd(toy, path, data)
    before = snapshot(path, all_records_path(path), fingerprint_path(path))
    kwargs = change if isinstance(change, dict) else {}
    if change == "teacher":
        kwargs = {"teacher": nudged(toy[0])}
    elif change == "student":
        kwargs = {"student": nudged(toy[1])}
    with pytest.raises(StaleOutputError, match=names(field)):
        gen_ssd(toy, path, other_answers(data) if change == "data" else data, **kwargs)
    assert snapshot(path, all_records_path(path), fingerprint_path(path)) == before  # nothing touched


def test_gen_ssd_refuses_records_of_rows_the_dataset_does_not_have(toy, tmp_path):
    path = tmp_path / "ssd.jsonl"
    gen_ssd(toy, path, toy_dataset("train", 4, seed=11))
    with pytest.raises(StaleOutputError, match="dataset: 4 record"):
        gen_ssd(toy, path, toy_dataset("test", 4, seed=11))  # other problems, other ids: no silent mixing


def test_gen_ssd_same_settings_resume_into_identical_files_and_overwrite_starts_afresh(toy, tmp_path):
    data = toy_dataset("train", 6, seed=12)
    whole, grown = tmp_path / "whole.jsonl", tmp_path / "grown.jsonl"
    gen_ssd(toy, whole, data)
    gen_ssd(toy, grown, data.select(range(2)))  # a first batch, then the whole data set resumes it
    summary = gen_ssd(toy, grown, data)
    assert snapshot(grown, all_records_path(grown)) == snapshot(whole, all_records_path(whole))
    assert summary.problems == 6 and 0 < summary.teacher_tokens_this_run < summary.teacher_tokens
    again = gen_ssd(toy, grown, data)  # everything there: nothing sampled
    assert again.teacher_tokens_this_run == 0 and again.teacher_tokens == summary.teacher_tokens

    other = ChunkSampling(**{**SMALL.__dict__, "temperature": 0.7})
    gen_ssd(toy, tmp_path / "fresh.jsonl", data, sampling=other)
    gen_ssd(toy, grown, data, sampling=other, overwrite=True)
    assert snapshot(grown, all_records_path(grown)) == snapshot(tmp_path / "fresh.jsonl",
                                                                all_records_path(tmp_path / "fresh.jsonl"))
    assert json.loads(fingerprint_path(grown).read_text())["temperature"] == 0.7


def test_gen_ssd_refuses_repeated_ids_and_files_without_a_fingerprint(toy, tmp_path):
    rows = [dict(row) for row in toy_dataset("train", 3, seed=13)]
    rows[2]["id"] = rows[0]["id"]
    with pytest.raises(ValueError, match="repeats id"):
        gen_ssd(toy, tmp_path / "ssd.jsonl", Dataset.from_list(rows))
    assert not any(tmp_path.iterdir())
    old = tmp_path / "old.jsonl"  # records of an unknown run (e.g. written by an older version)
    old.write_text(json.dumps({"id": rows[0]["id"], "is_correct": True}) + "\n")
    with pytest.raises(StaleOutputError, match="without a fingerprint"):
        gen_ssd(toy, old, toy_dataset("train", 3, seed=13))


# --- rejection sampling ----------------------------------------------------------------------------------------------


class CountingGenerator:
    """The toy teacher behind `HFGenerator`, counting calls; raises on call `fail_at` (a run killed mid-way)."""

    def __init__(self, model, tokenizer, fail_at: int | None = None):
        self.inner, self.fail_at, self.calls = HFGenerator(model, tokenizer), fail_at, 0

    def identity(self):
        return self.inner.identity()

    def generate(self, prompt_ids, **kwargs):
        self.calls += 1
        if self.fail_at is not None and self.calls >= self.fail_at:
            raise RuntimeError("killed")
        return self.inner.generate(prompt_ids, **kwargs)

    continue_ = generate


REJECTION = dict(n=2, temperature=1.0, max_new_tokens=160, batch_size=2, seed=0)


def test_rejection_sampling_killed_after_a_batch_resumes_into_the_same_dataset(toy, tmp_path):
    teacher, _, tokenizer = toy
    data = toy_dataset("train", 6, seed=14)
    whole = rejection_sample(CountingGenerator(teacher, tokenizer), tokenizer, data, **REJECTION,
                             output_jsonl=tmp_path / "whole.jsonl")
    assert len(whole) > 0 and set(whole["id"]) <= set(data["id"])
    path = tmp_path / "killed.jsonl"
    with pytest.raises(RuntimeError, match="killed"):
        rejection_sample(CountingGenerator(teacher, tokenizer, fail_at=2), tokenizer, data, **REJECTION,
                         output_jsonl=path)
    assert len(path.read_text().splitlines()) == 2  # the first batch's records were kept
    resumed_generator = CountingGenerator(teacher, tokenizer)
    resumed = rejection_sample(resumed_generator, tokenizer, data, **REJECTION, output_jsonl=path)
    assert resumed_generator.calls == 2  # batches 2 and 3 only
    assert resumed.to_list() == whole.to_list()
    assert path.read_bytes() == (tmp_path / "whole.jsonl").read_bytes()
    in_memory = rejection_sample(CountingGenerator(teacher, tokenizer), tokenizer, data, **REJECTION)
    assert in_memory.to_list() == whole.to_list()  # the file changes nothing in the result


def test_rejection_sampling_without_a_seed_samples_as_one_call_under_the_global_seed(toy):
    """No output file, no seed: one generation call under the caller's random state, as before (studies keep their
    numbers)."""
    teacher, _, tokenizer = toy
    data = toy_dataset("train", 5, seed=15)
    torch.manual_seed(3)
    out = rejection_sample(teacher, tokenizer, data, n=3, temperature=1.0, max_new_tokens=160)
    torch.manual_seed(3)
    groups = HFGenerator(teacher, tokenizer).generate(encode_prompts(tokenizer, data["prompt"]), n=3,
                                                      max_new_tokens=160, temperature=1.0)
    first_correct = []
    for row, group in zip(data, groups):
        texts = [s.text for s in group if s.finish_reason == "eos" and grade(extract_answer(s.text), row["answer"])]
        first_correct += [(row["id"], texts[0])] if texts else []
    assert [(r["id"], r["completion"][0]["content"]) for r in out] == first_correct


@pytest.mark.parametrize("change, field", [
    ({"temperature": 0.7}, "temperature"), ({"n": 3}, "n"), ({"seed": 1}, "seed"), ({"max_new_tokens": 150},
                                                                                     "max_new_tokens"),
    ({"extraction": "boxed"}, "extraction"), ({"keep_per_prompt": 2}, "keep_per_prompt"), ("model", "model"),
    ("data", "dataset"),
])
def test_rejection_sampling_refuses_a_resume_under_other_settings_models_or_data(toy, tmp_path, change, field):
    teacher, _, tokenizer = toy
    data, path = toy_dataset("train", 2, seed=16), tmp_path / "rs.jsonl"
    rejection_sample(teacher, tokenizer, data, **REJECTION, output_jsonl=path)
    before = snapshot(path, fingerprint_path(path))
    kwargs = {**REJECTION, **(change if isinstance(change, dict) else {})}
    model = nudged(teacher) if change == "model" else teacher
    with pytest.raises(StaleOutputError, match=names(field)):
        rejection_sample(model, tokenizer, other_answers(data) if change == "data" else data, **kwargs,
                         output_jsonl=path)
    assert snapshot(path, fingerprint_path(path)) == before
    fresh = rejection_sample(model, tokenizer, data, **kwargs, output_jsonl=tmp_path / "fresh.jsonl")
    again = rejection_sample(model, tokenizer, data, **kwargs, output_jsonl=path, overwrite=True)
    assert again.to_list() == fresh.to_list() and path.read_bytes() == (tmp_path / "fresh.jsonl").read_bytes()


def test_rejection_sampling_refuses_repeated_ids_and_an_unseeded_file(toy, tmp_path):
    teacher, _, tokenizer = toy
    rows = [dict(row) for row in toy_dataset("train", 2, seed=17)]
    rows[1]["id"] = rows[0]["id"]
    with pytest.raises(ValueError, match="repeats id"):
        rejection_sample(teacher, tokenizer, rows, **REJECTION, output_jsonl=tmp_path / "rs.jsonl")
    with pytest.raises(ValueError, match="seed"):
        rejection_sample(teacher, tokenizer, rows[:1], output_jsonl=tmp_path / "rs.jsonl")
    assert not any(tmp_path.iterdir())


# --- VCRD rollouts ---------------------------------------------------------------------------------------------------


ROLLOUTS = dict(max_new_tokens=24, batch_size=2, seed=0)


def rollouts(toy, path, data, teacher=None, student="toy", **kwargs):
    teacher_model, student_model, tokenizer = toy
    student = student_model if student == "toy" else student
    return sample_vcrd_rollouts(teacher or teacher_model, student, tokenizer, data,
                                **{**ROLLOUTS, "output_jsonl": path, **kwargs})


def test_vcrd_rollouts_killed_after_a_batch_resume_into_the_same_dataset(toy, tmp_path, monkeypatch):
    data = toy_dataset("train", 6, seed=18)
    whole = rollouts(toy, tmp_path / "whole.jsonl", data)
    assert whole.column_names == [*data.column_names, "teacher_completion", "student_completion"]
    calls, original = [], vcrd_data._rollout_batch

    def killed_after_one(*args, **kwargs):
        calls.append(1)
        if len(calls) > 1:
            raise RuntimeError("killed")
        return original(*args, **kwargs)

    monkeypatch.setattr(vcrd_data, "_rollout_batch", killed_after_one)
    path = tmp_path / "killed.jsonl"
    with pytest.raises(RuntimeError, match="killed"):
        rollouts(toy, path, data)
    assert len(path.read_text().splitlines()) == 2
    monkeypatch.setattr(vcrd_data, "_rollout_batch", lambda *a, **k: (calls.append(1), original(*a, **k))[1])
    calls.clear()
    resumed = rollouts(toy, path, data)
    assert len(calls) == 2 and resumed.to_list() == whole.to_list()
    assert path.read_bytes() == (tmp_path / "whole.jsonl").read_bytes()
    assert rollouts(toy, None, data).to_list() == whole.to_list()  # the file changes nothing in the result


@pytest.mark.parametrize("change, field", [
    ({"temperature": 0.7}, "temperature"), ({"top_p": 0.9}, "top_p"), ({"max_new_tokens": 20}, "max_new_tokens"),
    ({"seed": 1}, "seed"), ({"batch_size": 3}, "batch_size"), ("teacher", "teacher"), ("student", "student"),
    ("no student", "student"), ("data", "dataset"),
])
def test_vcrd_rollouts_refuse_a_resume_under_other_settings_models_or_data(toy, tmp_path, change, field):
    data, path = toy_dataset("train", 2, seed=19), tmp_path / "rollouts.jsonl"
    rollouts(toy, path, data)
    before = snapshot(path, fingerprint_path(path))
    kwargs = dict(change) if isinstance(change, dict) else {}
    if change == "teacher":
        kwargs["teacher"] = nudged(toy[0])
    elif change in ("student", "no student"):
        kwargs["student"] = nudged(toy[1]) if change == "student" else None
    with pytest.raises(StaleOutputError, match=names(field)):
        rollouts(toy, path, other_answers(data) if change == "data" else data, **kwargs)
    assert snapshot(path, fingerprint_path(path)) == before
    fresh = rollouts(toy, tmp_path / "fresh.jsonl", data, **kwargs)
    assert rollouts(toy, path, data, overwrite=True, **kwargs).to_list() == fresh.to_list()
    assert path.read_bytes() == (tmp_path / "fresh.jsonl").read_bytes()


def test_vcrd_rollouts_refuse_repeated_ids(toy, tmp_path):
    rows = [dict(row) for row in toy_dataset("train", 2, seed=20)]
    rows[1]["id"] = rows[0]["id"]
    with pytest.raises(ValueError, match="repeats id"):
        rollouts(toy, tmp_path / "rollouts.jsonl", rows)
    assert not any(tmp_path.iterdir())


# --- CoTD-PO rounds --------------------------------------------------------------------------------------------------


TOY_FORMAT = dict(instruction_template="{prompt}", thought_prefix="<think>", answer_prefix="</think>")
ROUNDS = dict(num_rounds=1, prompts_per_round=4, num_candidates=2, max_new_tokens=6, sampling_batch_size=2)


def training_args(output_dir, **overrides) -> CoTDPOConfig:
    return CoTDPOConfig(output_dir=str(output_dir), **{
        **CPU_TRAINING, "max_steps": 1, "per_device_train_batch_size": 2, "gradient_accumulation_steps": 1,
        "warmup_steps": 0, "learning_rate": 1e-3, "max_length": 128, "use_teacher_rationale": False,
        "rationale_weight": 0.0, **TOY_FORMAT, **overrides})


def pool(seed=21) -> Dataset:
    return toy_dataset("train", 4, seed=seed).select_columns(["id", "prompt"])


def cotd_po(tokenizer, out, prompts=None, scorer=None, student_seed=1, overwrite=False, args=None, **rounds):
    return run_rounds(build_student(tokenizer, seed=student_seed), tokenizer, prompts or pool(),
                      scorer or ToyCorrectnessScorer(), args or training_args(out),
                      CoTDPORoundsConfig(**{**ROUNDS, **rounds}), **({"overwrite": True} if overwrite else {}))


def samples_of(out) -> list[dict]:
    return [json.loads(line) for line in (round_dir(out, 1) / "samples.jsonl").read_text().splitlines()]


def test_cotd_po_rounds_refuse_other_k_scorer_prompts_student_or_training(tokenizer, tmp_path):
    out = tmp_path / "rounds"
    cotd_po(tokenizer, out)
    before = sorted((p.relative_to(out), p.read_bytes()) for p in out.rglob("*") if p.is_file())
    refused = {
        "num_candidates": dict(num_candidates=3),
        "max_temperature": dict(max_temperature=1.0),
        "scorer": dict(scorer=ToyCorrectnessScorer(correct_reward=2.0)),
        "prompts": dict(prompts=pool(seed=22)),
        "student": dict(student_seed=2),
        "training.learning_rate": dict(args=training_args(out, learning_rate=5e-4)),
        "training.seed": dict(args=training_args(out, seed=1)),
    }
    for field, change in refused.items():
        with pytest.raises(StaleOutputError, match=names(field)):
            cotd_po(tokenizer, out, **change)
    assert sorted((p.relative_to(out), p.read_bytes()) for p in out.rglob("*") if p.is_file()) == before
    cotd_po(tokenizer, out, args=training_args(out, logging_steps=7, save_strategy="no"))  # logging: same rounds
    assert sorted((p.relative_to(out), p.read_bytes()) for p in out.rglob("*") if p.is_file()) == before
    seen, scorer = [], ToyCorrectnessScorer()  # the same scorer, counting the prompts it scores
    score = scorer.score
    scorer.score = lambda prompts, candidates, rationales=None: seen.extend(prompts) or score(prompts, candidates)
    cotd_po(tokenizer, out, scorer=scorer, num_rounds=2)  # more rounds extend the folder: round 2 only is sampled
    assert len(seen) == 4 and (round_dir(out, 2) / "round.json").exists()
    assert samples_of(out) == [json.loads(line) for path, data in before if path == Path("round_01/samples.jsonl")
                               for line in data.decode().splitlines()]


def test_cotd_po_rounds_overwrite_starts_afresh_and_repeated_ids_are_refused(tokenizer, tmp_path):
    out = tmp_path / "rounds"
    cotd_po(tokenizer, out)
    assert all(len(r["completions"]) == 2 for r in samples_of(out))
    cotd_po(tokenizer, out, num_candidates=3, overwrite=True)
    assert all(len(r["completions"]) == 3 for r in samples_of(out))
    assert json.loads((out / "fingerprint.json").read_text())["num_candidates"] == 3
    repeated = Dataset.from_list([{**row, "id": "same"} for row in pool()])
    with pytest.raises(ValueError, match="repeats id 'same'"):
        cotd_po(tokenizer, tmp_path / "other", prompts=repeated)
    assert not (tmp_path / "other").exists()


def test_cotd_po_rounds_without_a_fingerprint_are_refused(tokenizer, tmp_path):
    out = tmp_path / "rounds"
    (round_dir(out, 1)).mkdir(parents=True)
    (round_dir(out, 1) / "samples.jsonl").write_text(json.dumps({"id": "x", "round": 1}) + "\n")  # an older run's
    with pytest.raises(StaleOutputError, match="without a fingerprint"):
        cotd_po(tokenizer, out)


# --- identities ------------------------------------------------------------------------------------------------------


def test_identities_tell_models_and_endpoints_apart_and_keep_secrets_out(toy):
    teacher, student, tokenizer = toy
    assert HFGenerator(teacher, tokenizer).identity() == HFGenerator(teacher, tokenizer).identity()
    assert HFGenerator(teacher, tokenizer).identity() != HFGenerator(nudged(teacher), tokenizer).identity()
    scorer = LogProbTeacherScorer(teacher, tokenizer)
    assert scorer.identity() != LogProbTeacherScorer(teacher, tokenizer, length_normalize=False).identity()
    judge = APIJudgeScorer("http://localhost:1/v1", "judge-a", api_key="sk-secret")
    identity = json.dumps(judge.identity())
    assert "judge-a" in identity and "localhost:1" in identity and "sk-secret" not in identity
    assert judge.identity() != APIJudgeScorer("http://localhost:1/v1", "judge-b").identity()
    assert ToyCorrectnessScorer().identity() != ToyCorrectnessScorer(correct_reward=2.0).identity()


def test_a_colocated_vllm_model_is_identified_by_its_local_weight_files(tmp_path):
    from trl_reasoning_distill.generation.vllm import weight_files_identity

    (tmp_path / "model.safetensors").write_bytes(bytes(range(256)) * 1000)
    (tmp_path / "config.json").write_text("{}")
    first = weight_files_identity(str(tmp_path))
    assert first == weight_files_identity(str(tmp_path)) and len(first) == 16
    (tmp_path / "model.safetensors").write_bytes(bytes(range(256)) * 999 + bytes(255) + b"\x01")  # one byte changed
    assert weight_files_identity(str(tmp_path)) != first
    assert weight_files_identity("Qwen/Qwen2.5-Math-1.5B") is None  # a Hub id: its name and revision identify it
