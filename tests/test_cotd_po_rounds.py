"""The CoTD-PO rounds driver: prompt choice, temperatures, teacher rationales, a real tiny run interrupted mid-round
and resumed (same records, same model), input errors, and a smoke run of benchmarks/cotd_po_toy.py (slow)."""

import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from conftest import CPU_TRAINING
from datasets import Dataset

from trl_reasoning_distill.cotd_po import (
    CoTDPOConfig,
    CoTDPORoundsConfig,
    CoTDPOTrainer,
    TeacherRationales,
    ToyCorrectnessScorer,
    run_rounds,
)
from trl_reasoning_distill.cotd_po.rounds import round_dir, round_prompt_indices, sample_candidates
from trl_reasoning_distill.generation import Sample
from trl_reasoning_distill.toy import load_toy_teacher, load_toy_tokenizer, toy_dataset
from trl_reasoning_distill.toy.models import build_student
from trl_reasoning_distill.toy.task import parse_problem, solution

ROOT = Path(__file__).resolve().parents[1]
TOY_FORMAT = dict(instruction_template="{prompt}", thought_prefix="<think>", answer_prefix="</think>")


def training_args(output_dir, **overrides) -> CoTDPOConfig:
    return CoTDPOConfig(output_dir=str(output_dir), **{
        **CPU_TRAINING, "max_steps": 2, "per_device_train_batch_size": 2, "gradient_accumulation_steps": 1,
        "warmup_steps": 0, "learning_rate": 1e-3, "max_length": 128, **TOY_FORMAT, **overrides})


def pool_with_rationales(n=12) -> Dataset:
    """Toy prompts with the gold left-to-right thought as a precomputed teacher rationale."""
    rows = [dict(row) for row in toy_dataset("train", n, seed=3).select_columns(["id", "prompt"])]
    for row in rows:
        gold = solution(parse_problem(row["prompt"][0]["content"]), "ltr")
        row["rationale"] = gold.removeprefix("<think>").split("</think>")[0]
    return Dataset.from_list(rows)


class RecordingScorer(ToyCorrectnessScorer):
    """Toy correctness; remembers the prompts it scored and fails once `fail_after` prompts have been scored."""

    def __init__(self, fail_after: int | None = None):
        super().__init__()
        self.seen, self.fail_after = [], fail_after

    def score(self, prompts, candidates, rationales=None):
        if self.fail_after is not None and len(self.seen) + len(prompts) > self.fail_after:
            raise RuntimeError("scorer crashed")
        self.seen += [p[0]["content"] for p in prompts]
        return super().score(prompts, candidates, rationales)


class FakeGenerator:
    """Returns `<temperature>:<prompt length>:<j>` samples and records each call's (n, temperature)."""

    def __init__(self, finish_reason="eos"):
        self.calls, self.finish_reason = [], finish_reason

    def generate(self, prompt_ids, n=1, max_new_tokens=256, temperature=1.0, top_p=1.0, top_k=0, stop=None,
                 return_logprobs=False):
        self.calls.append((n, temperature, stop))
        return [[Sample([1, 2], f"{temperature}:{len(p)}:{j}", self.finish_reason) for j in range(n)]
                for p in prompt_ids]


def read_lines(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines()]


# --- pure parts ------------------------------------------------------------------------------------------------------


def test_round_prompts_are_disjoint_until_the_pool_is_used_up():
    rounds = [round_prompt_indices(10, 3, r, seed=7) for r in range(1, 7)]
    assert all(len(r) == len(set(r)) == 3 for r in rounds)
    assert len(set(rounds[0] + rounds[1] + rounds[2])) == 9  # one pass: 3 disjoint rounds of a permutation
    assert len(set(rounds[3] + rounds[4] + rounds[5])) == 9 and rounds[3:] != rounds[:3]  # next pass, reshuffled
    assert round_prompt_indices(10, 3, 2, seed=7) == rounds[1]  # deterministic
    assert round_prompt_indices(10, 3, 1, seed=8) != rounds[0]
    assert sorted(round_prompt_indices(4, 50, 1, seed=0)) == [0, 1, 2, 3]  # more than the pool: the whole pool


def test_temperatures_span_the_range_and_equal_ones_share_a_call():
    rounds = CoTDPORoundsConfig(num_candidates=4, min_temperature=0.6, max_temperature=1.2)
    assert rounds.temperatures() == pytest.approx([0.6, 0.8, 1.0, 1.2])
    assert CoTDPORoundsConfig(num_candidates=1).temperatures() == [0.6]
    generator = FakeGenerator()
    samples = sample_candidates(generator, [[1, 2], [3]], rounds)
    assert [[s.text for s in group] for group in samples] == [
        [f"{t}:2:0" for t in rounds.temperatures()], [f"{t}:1:0" for t in rounds.temperatures()]]
    constant = CoTDPORoundsConfig(num_candidates=3, min_temperature=1.0, max_temperature=1.0)
    generator = FakeGenerator()
    samples = sample_candidates(generator, [[1]], constant)
    assert generator.calls == [(3, 1.0, None)] and [s.text for s in samples[0]] == ["1.0:1:0", "1.0:1:1", "1.0:1:2"]


@pytest.mark.parametrize("name, value", [("num_rounds", 0), ("prompts_per_round", 0), ("num_candidates", 0),
                                         ("max_new_tokens", 0), ("sampling_batch_size", 0), ("top_p", 0.0),
                                         ("min_temperature", -0.1), ("max_temperature", 0.5)])
def test_bad_round_settings_raise(name, value):
    with pytest.raises(ValueError, match=name):
        CoTDPORoundsConfig(**{name: value})


def test_teacher_rationales_from_the_toy_teacher(tmp_path):
    """The trained toy teacher, prompted after `<think>`, writes the steps; the rationale is its text up to
    `</think>`, which is what it writes unprompted between the markers."""
    tokenizer, teacher = load_toy_tokenizer(), load_toy_teacher()
    args = training_args(tmp_path)
    prompts = [row["prompt"] for row in toy_dataset("test", 4, seed=0)]
    cots = TeacherRationales(teacher, tokenizer, args, max_new_tokens=160).rationales(prompts)
    free = [tokenizer.apply_chat_template(p, tokenize=False, add_generation_prompt=True) for p in prompts]
    encoded = tokenizer(free, return_tensors="pt", padding=True, add_special_tokens=False)
    with torch.no_grad():
        out = teacher.generate(**encoded, max_new_tokens=160, do_sample=False, pad_token_id=tokenizer.pad_token_id)
    texts = tokenizer.batch_decode(out[:, encoded["input_ids"].shape[1] :], skip_special_tokens=True)
    assert cots == [t.removeprefix("<think>").split("</think>")[0].strip() for t in texts]
    assert all(cot and "=" in cot for cot in cots)
    unfinished = TeacherRationales(None, tokenizer, args, generator=FakeGenerator(finish_reason="length"))
    assert unfinished.rationales(prompts[:2]) == [None, None]
    with pytest.raises(ValueError, match="answer_prefix"):
        TeacherRationales(teacher, tokenizer, training_args(tmp_path, answer_prefix=""))


# --- a real tiny run, interrupted and resumed ---------------------------------------------------------------------


ROUNDS = dict(num_rounds=2, prompts_per_round=5, num_candidates=2, max_new_tokens=6, sampling_batch_size=2)


def test_interrupted_run_resumes_without_lost_or_duplicated_records(tmp_path, tokenizer, monkeypatch):
    """Run A goes through. Run B's scorer crashes in round 2 after one chunk, and the last record line is cut in half
    (a crash mid-write); rerunning B skips finished round 1, samples only round 2's missing prompts, and ends with
    A's records and A's model."""
    pool, rounds = pool_with_rationales(), CoTDPORoundsConfig(**ROUNDS)
    model_a = run_rounds(build_student(tokenizer, seed=1), tokenizer, pool, RecordingScorer(), training_args(
        tmp_path / "a"), rounds)

    crashing = RecordingScorer(fail_after=5 + 2)  # round 1 (5 prompts) and round 2's first chunk (2)
    with pytest.raises(RuntimeError, match="scorer crashed"):
        run_rounds(build_student(tokenizer, seed=1), tokenizer, pool, crashing, training_args(tmp_path / "b"), rounds)
    samples = round_dir(tmp_path / "b", 2) / "samples.jsonl"
    assert len(read_lines(samples)) == 2 and not (round_dir(tmp_path / "b", 2) / "round.json").exists()
    samples.write_bytes(samples.read_bytes()[:-40])  # the second record is now a fragment

    trained = []
    original_train = CoTDPOTrainer.train
    monkeypatch.setattr(CoTDPOTrainer, "train", lambda self, **k: (trained.append(1), original_train(self, **k))[1])
    resumed = RecordingScorer()
    model_b = run_rounds(build_student(tokenizer, seed=1), tokenizer, pool, resumed, training_args(tmp_path / "b"),
                         rounds)
    round_2 = [pool[i]["prompt"][0]["content"] for i in round_prompt_indices(len(pool), 5, 2, seed=0)]  # args.seed
    assert resumed.seen == round_2 and trained == [1]  # round 1 neither resampled nor retrained

    for r in (1, 2):
        a = read_lines(round_dir(tmp_path / "a", r) / "samples.jsonl")
        b = read_lines(round_dir(tmp_path / "b", r) / "samples.jsonl")
        assert len({x["id"] for x in b}) == len(b) == 5  # no lost or duplicated record
        assert sorted(b, key=lambda x: x["id"]) == sorted(a, key=lambda x: x["id"])
    for name, weight in model_a.state_dict().items():
        torch.testing.assert_close(model_b.state_dict()[name], weight, rtol=0, atol=1e-6)
    summary = json.loads((round_dir(tmp_path / "b", 2) / "round.json").read_text())
    assert summary["round"] == 2 and summary["prompts"] == 5 and summary["skipped"] == 0

    again = RecordingScorer()  # everything finished: nothing is sampled, the last checkpoint is returned
    model_c = run_rounds(build_student(tokenizer, seed=1), tokenizer, pool, again, training_args(tmp_path / "b"),
                         rounds)
    assert again.seen == [] and trained == [1]
    torch.testing.assert_close(model_c.state_dict()["model.norm.weight"], model_b.state_dict()["model.norm.weight"])


def test_without_teacher_rationale_the_student_samples_whole_continuations(tmp_path, tokenizer):
    pool = toy_dataset("train", 4, seed=3).select_columns(["id", "prompt"])
    args = training_args(tmp_path, use_teacher_rationale=False, rationale_weight=0.0)
    run_rounds(build_student(tokenizer, seed=1), tokenizer, pool, RecordingScorer(), args,
               CoTDPORoundsConfig(**{**ROUNDS, "num_rounds": 1, "prompts_per_round": 4}))
    records = read_lines(round_dir(tmp_path, 1) / "samples.jsonl")
    assert all(r["rationale"] == "" and len(r["completions"]) == 2 for r in records)
    assert all(r["rewards"] == [0.0, 0.0] for r in records)  # a random student never boxes the right answer


def test_prompts_without_a_teacher_rationale_are_recorded_and_skipped(tmp_path, tokenizer):
    class HalfRationales:
        def rationales(self, prompts):
            return [None if i % 2 else "1+1=2" for i in range(len(prompts))]

    pool = toy_dataset("train", 4, seed=3).select_columns(["id", "prompt"])
    run_rounds(build_student(tokenizer, seed=1), tokenizer, pool, RecordingScorer(), training_args(tmp_path),
               CoTDPORoundsConfig(**{**ROUNDS, "num_rounds": 1, "prompts_per_round": 4}), rationales=HalfRationales())
    records = read_lines(round_dir(tmp_path, 1) / "samples.jsonl")
    assert sum("skipped" in r for r in records) == 2
    assert json.loads((round_dir(tmp_path, 1) / "round.json").read_text())["skipped"] == 2


def test_bad_pools_raise_before_any_work(tmp_path, tokenizer):
    model, rounds, args = build_student(tokenizer, seed=1), CoTDPORoundsConfig(**ROUNDS), training_args(tmp_path)
    prompts = toy_dataset("train", 4, seed=3).select_columns(["id", "prompt"])
    with pytest.raises(ValueError, match="rationale"):
        run_rounds(model, tokenizer, prompts, RecordingScorer(), args, rounds)
    duplicated = Dataset.from_list([{"id": "x", "prompt": "1+2=?", "rationale": ""}] * 2)
    with pytest.raises(ValueError, match="repeats id"):
        run_rounds(model, tokenizer, duplicated, RecordingScorer(), args, rounds)
    with pytest.raises(ValueError, match="'prompt' column"):
        run_rounds(model, tokenizer, Dataset.from_list([{"question": "1+2=?"}]), RecordingScorer(), args, rounds)
    assert not any(tmp_path.iterdir())


# --- the benchmark ---------------------------------------------------------------------------------------------


@pytest.mark.slow
def test_benchmark_smoke_run(tmp_path):
    out = tmp_path / "cotd.csv"
    args = ["--rounds", "1", "--steps", "2", "--n_test", "4", "--seeds", "0", "--out", str(out), "--prompts", "8",
            "--candidates", "2", "--diversity_prompts", "2", "--workdir", str(tmp_path / "runs")]
    done = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "cotd_po_toy.py"), *args], capture_output=True,
                          text=True, timeout=900, env={"HF_HUB_OFFLINE": "1", "PATH": "/usr/bin:/bin",
                                                       "HOME": str(tmp_path), "PYTHONPATH": str(ROOT)})
    assert done.returncode == 0, done.stderr[-3000:]
    rows = out.read_text().splitlines()
    assert rows[0].startswith("variant,seed,round")
    variants = {line.split(",")[0] for line in rows[1:]}
    assert "student (cold start)" in variants and len(variants) >= 4
    table = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "cotd_po_toy.py"), "--table", "--out",
                            str(out)], capture_output=True, text=True, timeout=120)
    assert table.returncode == 0 and "| variant |" in table.stdout
