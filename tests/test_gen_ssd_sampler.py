"""Gen-SSD sampler (`gen_ssd/sampler.py`): the chunk loop against Algorithm A, its degenerate cases on real (toy)
models, the student scorer, the record files, and kill-and-resume of a real run (spec §2.3, §2.4, §9)."""

import csv
import json
import math
import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import reference_gen_ssd as ref
import torch
from datasets import load_dataset

from trl_reasoning_distill.gen_ssd.sampler import (
    ChunkSampling,
    GenerationSelectionCallback,
    GeneratorProposer,
    GenSSDSampler,
    HFChunkProposer,
    StudentScorer,
    all_records_path,
    batch_seed,
    sample_chunked,
    split_cold_start,
)
from trl_reasoning_distill.generation import HFGenerator
from trl_reasoning_distill.toy import load_toy_student, load_toy_teacher, load_toy_tokenizer, toy_dataset

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def toy():
    """The trained toy teacher and cold-started student, with their tokenizer."""
    return load_toy_teacher(), load_toy_student(), load_toy_tokenizer()


def _prompts(tokenizer, n: int, seed: int = 0) -> list[list[int]]:
    texts = [tokenizer.apply_chat_template(row["prompt"], tokenize=False, add_generation_prompt=True)
             for row in toy_dataset("train", n, seed=seed)]
    return [tokenizer(t, add_special_tokens=False)["input_ids"] for t in texts]


class Recording:
    """Wraps a proposer and logs every call: `(prefixes, counts, max_new_tokens, parents, chunks)`."""

    def __init__(self, proposer):
        self.proposer, self.calls = proposer, []

    def propose(self, prefixes, counts, max_new_tokens, parents=None):
        chunks = self.proposer.propose(prefixes, counts, max_new_tokens, parents)
        self.calls.append((prefixes, counts, max_new_tokens, parents, chunks))
        return chunks

    def reset(self):
        self.proposer.reset()


# --- the loop against Algorithm A, with a scripted teacher and scorer (spec §9 items 1-4, 8) -----------------------

EOS0, WORD0, PROMPT0 = 50, 20, 100  # sample k writes WORD0 + k, ends on EOS0 + k; problem p's prompt is [1, 100 + p]


def _draw(seed: int, p: int, path: tuple, k: int, budget: int) -> tuple[float, int, bool]:
    """The script: sample k from prefix `path` of problem p -> (summed student NLL, tokens, EOS)."""
    rng = random.Random(f"{seed}/{p}/{path}/{k}")
    eos = rng.random() < 0.25
    ntok = rng.randint(1, budget) if eos else budget
    return rng.uniform(0.1, 3.0) * ntok, ntok, eos


class Scripted:
    """Teacher and scorer of the script. A live prefix holds whole chunks, so its path is read off its tokens."""

    def __init__(self, seed: int, chunk_size: int, max_new_tokens: int):
        self.seed, self.m, self.max_new_tokens = seed, chunk_size, max_new_tokens
        self.previous = None

    def decode(self, prefix: list[int]) -> tuple[int, tuple]:
        completion = prefix[2:]
        return prefix[1] - PROMPT0, tuple(completion[i] - WORD0 for i in range(0, len(completion), self.m))

    def propose(self, prefixes, counts, max_new_tokens, parents=None):
        if parents is not None:  # each prefix is its parent's prefix + its parent's chunk: pruned ones never extend
            contexts, chunks = self.previous
            assert [contexts[i] + chunks[i] for i in parents] == prefixes
        out = []
        for prefix, n in zip(prefixes, counts):
            p, path = self.decode(prefix)
            for k in range(n):
                _, ntok, eos = _draw(self.seed, p, path, k, max_new_tokens)
                out.append([WORD0 + k] * (ntok - 1) + [EOS0 + k if eos else WORD0 + k])
        self.previous = ([prefix for prefix, n in zip(prefixes, counts) for _ in range(n)], out)
        return out

    def reset(self):
        self.previous = None

    def score(self, contexts, continuations):
        nll = []
        for context, chunk in zip(contexts, continuations):
            (p, path), k = self.decode(context), chunk[0] - (EOS0 if chunk[0] >= EOS0 else WORD0)
            budget = min(self.m, self.max_new_tokens - (len(context) - 2))
            nll.append(_draw(self.seed, p, path, k, budget)[0])
        return torch.tensor(nll, dtype=torch.float64), torch.tensor([len(c) for c in continuations])


def _path(trajectory) -> tuple:
    starts = [sum(trajectory.chunk_lengths[:i]) for i in range(len(trajectory.chunk_lengths))]
    return tuple(t - (EOS0 if t >= EOS0 else WORD0) for t in (trajectory.token_ids[s] for s in starts))


@pytest.mark.parametrize("rule", ["low", "high"])
@pytest.mark.parametrize("beam_width, candidates_per, beam_score", [(1, "beam", "chunk"), (2, "beam", "chunk"),
                                                                    (2, "step", "chunk"), (3, "step", "cumulative")])
@pytest.mark.parametrize("chunk_size, prefer_eos", [(4, True), (3, False)])
def test_chunk_loop_is_algorithm_a(rule, beam_width, candidates_per, beam_score, chunk_size, prefer_eos):
    script, P = Scripted(7, chunk_size, 10), 5
    sampling = ChunkSampling(chunk_size=chunk_size, max_new_tokens=10, num_candidates=(5, 3, 2), beam_width=beam_width,
                             candidates_per=candidates_per)
    rounds = []
    selection = GenerationSelectionCallback(rule, beam_score, prefer_eos)
    selection.on_round_end = rounds.append
    teacher = Recording(script)
    out = sample_chunked([[1, PROMPT0 + p] for p in range(P)], teacher, script, sampling, selection,
                         [EOS0 + k for k in range(8)], pad_token_id=0)
    for p in range(P):
        best, calls = ref.gen_ssd_sample_ref(lambda path, k, budget, p=p: _draw(7, p, path, k, budget),
                                             schedule=(5, 3, 2), beam_width=beam_width, candidates_per=candidates_per,
                                             beam_score=beam_score, rule=rule, chunk_size=chunk_size,
                                             max_new_tokens=10, prefer_eos=prefer_eos)
        ours = [(c + 1, script.decode(prefix)[1], n, budget) for c, (prefixes, counts, budget, *_) in
                enumerate(teacher.calls) for prefix, n in zip(prefixes, counts) if script.decode(prefix)[0] == p]
        assert ours == calls  # same prefixes extended, same n, same budget, round by round
        assert _path(out[p]) == best.path
        assert out[p].perplexity == pytest.approx(math.exp(best.nll / best.ntok), rel=1e-12)
        assert out[p].chunk_ppls == pytest.approx(best.chunk_ppls, rel=1e-12)
        assert out[p].finish_reason == ("eos" if best.eos else "length")
        pools = [[chunk for chunk, context in zip(chunks, [q for q, n in zip(prefixes, counts) for _ in range(n)])
                  if script.decode(context)[0] == p] for prefixes, counts, _, _, chunks in teacher.calls]
        pools = [pool for pool in pools if pool]
        assert out[p].candidates_per_round == [len(pool) for pool in pools]
        assert out[p].teacher_tokens == sum(len(chunk) for pool in pools for chunk in pool)
    assert [info.round for info in rounds] == list(range(1, len(teacher.calls) + 1))
    assert all(int(info.kept.max()) <= beam_width for info in rounds)
    assert script.previous is None  # the proposer was reset at the end of the batch


# --- the student scorer (spec §2.4, §9 items 10, 12, 15) ------------------------------------------------------------


def test_scorer_matches_one_candidate_at_a_time_whatever_the_batching(tokenizer, tiny_student):
    contexts = [torch.randint(10, len(tokenizer), (n,)).tolist() for n in (3, 9, 5, 1, 7)]
    candidates = [torch.randint(10, len(tokenizer), (n,)).tolist() for n in (4, 1, 6, 2, 3)]
    candidates[2][-1] = tokenizer.eos_token_id  # the EOS is scored (spec §8 A6)
    tiny_student.train()
    before = {n: p.clone() for n, p in tiny_student.named_parameters()}
    modes = []
    tiny_student.register_forward_hook(lambda module, args, out: modes.append(module.training))
    nll, tokens = StudentScorer(tiny_student, tokenizer.pad_token_id, batch_size=2).score(contexts, candidates)
    assert modes and not any(modes) and tiny_student.training  # eval while scoring, train mode given back
    assert all(torch.equal(p, tiny_student.get_parameter(n)) for n, p in before.items())  # frozen
    assert nll.dtype == torch.float64 and not nll.requires_grad and tokens.tolist() == [4, 1, 6, 2, 3]
    with torch.no_grad():
        for m, (context, chunk) in enumerate(zip(contexts, candidates)):
            logits_LV = tiny_student(input_ids=torch.tensor([context + chunk])).logits[0, len(context) - 1 : -1]
            expected = -sum(ref.token_logprob_ref(logits_LV[t], chunk[t]) for t in range(len(chunk)))
            assert nll[m].item() == pytest.approx(expected, abs=1e-4)
    again, _ = StudentScorer(tiny_student, tokenizer.pad_token_id, batch_size=16).score(contexts, candidates)
    torch.testing.assert_close(again, nll, atol=1e-5, rtol=0)  # batch size and composition do not matter


# --- the degenerate cases on the toy models (spec §2.4, §9 items 5-7) -----------------------------------------------


def test_first_round_samples_what_hf_generator_samples(toy):
    teacher, _, tokenizer = toy
    prompts = _prompts(tokenizer, 3)
    torch.manual_seed(5)
    ours = HFChunkProposer(teacher, tokenizer, temperature=1.0, top_p=0.9, top_k=20).propose(prompts, [4] * 3, 24)
    torch.manual_seed(5)
    theirs = HFGenerator(teacher, tokenizer).generate(prompts, n=4, max_new_tokens=24, temperature=1.0, top_p=0.9,
                                                       top_k=20)
    assert ours == [s.token_ids for group in theirs for s in group]


def test_the_cache_refuses_prefixes_it_does_not_hold(toy):
    teacher, _, tokenizer = toy
    proposer = HFChunkProposer(teacher, tokenizer, temperature=1.0)
    prompts = _prompts(tokenizer, 2)
    chunks = proposer.propose(prompts, [2, 2], 4)
    with pytest.raises(RuntimeError, match="cached rows"):
        proposer.propose([prompts[0] + chunks[0]], [2], 4, parents=[2])  # candidate 2 extends the other prompt


@pytest.mark.parametrize("chunk_size", [1, 3, 8, 96])
def test_greedy_chunks_concatenate_to_one_shot_greedy_with_or_without_the_cache(toy, chunk_size):
    """Spec §9 item 6, with the KV cache of the kept candidates resumed and with every prefix re-encoded."""
    teacher, student, tokenizer = toy
    prompts = _prompts(tokenizer, 4, seed=1)
    one_shot = HFGenerator(teacher, tokenizer).generate(prompts, n=1, max_new_tokens=96, temperature=0.0)
    sampling = ChunkSampling(chunk_size=chunk_size, max_new_tokens=96, num_candidates=(1,), beam_width=1,
                             temperature=0.0)
    scorer = StudentScorer(student, tokenizer.pad_token_id)
    proposers = [HFChunkProposer(teacher, tokenizer, temperature=0.0),
                 HFChunkProposer(teacher, tokenizer, temperature=0.0, reuse_cache=False),
                 GeneratorProposer(HFGenerator(teacher, tokenizer), temperature=0.0)]
    for proposer in proposers:
        out = sample_chunked(prompts, proposer, scorer, sampling, GenerationSelectionCallback(),
                             [tokenizer.eos_token_id], tokenizer.pad_token_id)
        assert [t.token_ids for t in out] == [group[0].token_ids for group in one_shot]
        assert all(length == chunk_size for t in out for length in t.chunk_lengths[:-1])


def test_one_candidate_is_plain_teacher_sampling_and_ignores_the_student(toy, tiny_student, tmp_path):
    """Spec §9 item 5: K = 1 (one chunk: exactly HFGenerator's sample under the batch's seed; several chunks: the same
    output whichever student scores)."""
    teacher, student, tokenizer = toy
    data = toy_dataset("train", 6, seed=2)
    plain = ChunkSampling.plain(96, temperature=1.0, top_p=1.0, top_k=0)
    sampler = GenSSDSampler(teacher, student, tokenizer, plain, batch_size=3, seed=4, keep_only_correct=False,
                            progress=False)
    sampler.sample(data, tmp_path / "plain.jsonl")
    records = [json.loads(line) for line in (tmp_path / "plain.jsonl").read_text().splitlines()]
    expected = []
    for k in range(2):
        torch.manual_seed(batch_seed(4, k))
        group = HFGenerator(teacher, tokenizer).generate(_prompts(tokenizer, 6, seed=2)[3 * k : 3 * k + 3], n=1,
                                                         max_new_tokens=96, temperature=1.0)
        expected += [tokenizer.decode(g[0].token_ids, skip_special_tokens=False) for g in group]
    assert [r["completion"] for r in records] == expected
    chunked = ChunkSampling(chunk_size=8, max_new_tokens=96, num_candidates=(1,), beam_width=1, temperature=1.0)
    outputs = []
    for scorer_model in (student, tiny_student):
        torch.manual_seed(0)
        outputs.append(sample_chunked(_prompts(tokenizer, 4), HFChunkProposer(teacher, tokenizer, temperature=1.0),
                                      StudentScorer(scorer_model, tokenizer.pad_token_id), chunked,
                                      GenerationSelectionCallback(), [tokenizer.eos_token_id], tokenizer.pad_token_id))
    assert [t.token_ids for t in outputs[0]] == [t.token_ids for t in outputs[1]]
    assert [t.perplexity for t in outputs[0]] != [t.perplexity for t in outputs[1]]


@pytest.mark.parametrize("beam_width", [1, 2])
def test_one_chunk_of_the_whole_budget_is_best_of_k_by_student_ppl(toy, beam_width):
    """Spec §9 item 7: one teacher call with n = K_1, and the pick is the lowest-PPL sample (EOS-ended first)."""
    teacher, student, tokenizer = toy
    prompts = _prompts(tokenizer, 3, seed=3)
    sampling = ChunkSampling(chunk_size=96, max_new_tokens=96, beam_width=beam_width, temperature=1.0)
    teacher_calls = Recording(HFChunkProposer(teacher, tokenizer, temperature=1.0, top_p=0.95, top_k=30))
    torch.manual_seed(1)
    out = sample_chunked(prompts, teacher_calls, StudentScorer(student, tokenizer.pad_token_id), sampling,
                         GenerationSelectionCallback(), [tokenizer.eos_token_id], tokenizer.pad_token_id)
    assert [(n, budget, parents) for _, n, budget, parents, _ in teacher_calls.calls] == [([16] * 3, 96, None)]
    torch.manual_seed(1)
    samples = HFGenerator(teacher, tokenizer).generate(prompts, n=16, max_new_tokens=96, temperature=1.0, top_p=0.95,
                                                       top_k=30)
    with torch.no_grad():
        for prompt, group, trajectory in zip(prompts, samples, out):
            ppl = []
            for s in group:
                logits_LV = student(input_ids=torch.tensor([prompt + s.token_ids])).logits[0, len(prompt) - 1 : -1]
                ppl.append(math.exp(-sum(ref.token_logprob_ref(logits_LV[t], tok) for t, tok in
                                         enumerate(s.token_ids)) / len(s.token_ids)))
            ended = [j for j, s in enumerate(group) if s.finish_reason == "eos"] or list(range(16))
            best = min(ended, key=lambda j: (ppl[j], j))
            assert trajectory.token_ids == group[best].token_ids
            assert trajectory.perplexity == pytest.approx(ppl[best], rel=1e-4)
            assert trajectory.candidates_per_round == [16] and trajectory.pruned == 16 - beam_width


def test_kept_prefixes_rank_among_the_best_and_pruned_ones_are_never_extended(toy):
    """Spec §9 items 2, 3, 8, 9 on the toy models: every prefix of round c is its parent's prefix + the parent's
    chunk, whose chunk PPL ranked in the best B of its problem's pool; n follows the schedule per kept prefix."""
    teacher, student, tokenizer = toy
    prompts = _prompts(tokenizer, 3, seed=4)
    sampling = ChunkSampling(chunk_size=12, max_new_tokens=60, num_candidates=(6, 4, 2), beam_width=2, temperature=1.0)
    teacher_calls, scored = Recording(HFChunkProposer(teacher, tokenizer, temperature=1.0)), []
    scorer = StudentScorer(student, tokenizer.pad_token_id)
    score = scorer.score
    scorer.score = lambda contexts, chunks: scored.append(score(contexts, chunks)) or scored[-1]
    out = sample_chunked(prompts, teacher_calls, scorer, sampling, GenerationSelectionCallback(),
                         [tokenizer.eos_token_id], tokenizer.pad_token_id, torch.Generator().manual_seed(0))
    def owner(prefix):
        return next(p for p, prompt in enumerate(prompts) if prefix[: len(prompt)] == prompt)

    for c, (prefixes, counts, budget, parents, _) in enumerate(teacher_calls.calls):
        assert set(counts) == {(6, 4, 2, 2, 2)[c]} and budget == 12
        assert all([owner(q) for q in prefixes].count(p) <= 2 for p in range(3))  # at most B live prefixes
        if parents is None:
            continue
        previous, chunk_ppl = teacher_calls.calls[c - 1], (scored[c - 1][0] / scored[c - 1][1]).tolist()
        contexts = [q for q, n in zip(previous[0], previous[1]) for _ in range(n)]
        for prefix, parent in zip(prefixes, parents):
            assert prefix == contexts[parent] + previous[4][parent]
            assert len(previous[4][parent]) == 12 and tokenizer.eos_token_id not in previous[4][parent]
            rivals = [m for m, q in enumerate(contexts) if owner(q) == owner(prefix)]
            assert sum(chunk_ppl[m] < chunk_ppl[parent] for m in rivals) < 2  # in the best B = 2 of its pool
    for trajectory in out:
        assert len(trajectory.token_ids) <= 60 and trajectory.token_ids.count(tokenizer.eos_token_id) <= 1
        assert sum(trajectory.chunk_lengths) == len(trajectory.token_ids)


# --- the data set driver: records, answer check, determinism, resume (spec §9 items 16-19) --------------------------

SMALL = ChunkSampling(chunk_size=16, max_new_tokens=96, num_candidates=(4, 2), beam_width=2, temperature=1.0)


def _read(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines()]


def test_records_are_sft_ready_and_their_ppl_is_the_sft_loss(toy, tmp_path):
    """Spec §9 items 16 and 19: kept rows are verified, one per problem; prompt + completion tokenize to exactly the
    scored ids, and the student's completion-only NLL on them is log(student_ppl)."""
    teacher, student, tokenizer = toy
    data = toy_dataset("train", 8, seed=5)
    summary = GenSSDSampler(teacher, student, tokenizer, SMALL, batch_size=4, progress=False).sample(
        data, tmp_path / "ssd.jsonl")
    every = _read(all_records_path(tmp_path / "ssd.jsonl"))
    assert [r["id"] for r in every] == data["id"] and summary.problems == 8
    kept = load_dataset("json", data_files=str(tmp_path / "ssd.jsonl"), split="train")
    assert kept["id"] == [r["id"] for r in every if r["is_correct"]] and summary.kept == len(kept) > 0
    assert all(kept["is_correct"]) and summary.teacher_tokens == sum(r["teacher_tokens"] for r in every)
    for row in kept:
        prompt_ids = tokenizer(row["prompt"], add_special_tokens=False)["input_ids"]
        ids = tokenizer(row["prompt"] + row["completion"], add_special_tokens=False)["input_ids"]
        assert ids[: len(prompt_ids)] == prompt_ids and len(ids) - len(prompt_ids) == row["completion_tokens"]
        assert sum(row["chunk_lengths"]) == row["completion_tokens"]
        assert row["completion"].endswith(tokenizer.eos_token)  # so SFTTrainer appends no second EOS
        with torch.no_grad():
            logits_LV = student(input_ids=torch.tensor([ids])).logits[0, len(prompt_ids) - 1 : -1].double()
        nll = torch.nn.functional.cross_entropy(logits_LV, torch.tensor(ids[len(prompt_ids) :]))
        assert nll.item() == pytest.approx(math.log(row["student_ppl"]), abs=1e-4)


def test_the_answer_is_checked_once_per_problem_on_the_final_pick_only(toy, tmp_path, monkeypatch):
    """Spec §9 item 16 / Eq. 5: one check per problem; a wrong pick drops the problem from the output."""
    teacher, student, tokenizer = toy
    from trl_reasoning_distill.gen_ssd import sampler as module

    checked = []
    monkeypatch.setattr(module, "grade", lambda pred, gold: checked.append(gold) or len(checked) % 2 == 0)
    data = toy_dataset("train", 6, seed=6)
    GenSSDSampler(teacher, student, tokenizer, SMALL, batch_size=6, progress=False).sample(data, tmp_path / "x.jsonl")
    assert checked == data["answer"]
    assert [r["id"] for r in _read(tmp_path / "x.jsonl")] == data["id"][1::2]
    assert [r["is_correct"] for r in _read(tmp_path / "x.all.jsonl")] == [False, True] * 3


def test_same_seed_same_files_other_seed_other_samples(toy, tmp_path):
    teacher, student, tokenizer = toy
    data = toy_dataset("train", 6, seed=7)
    for name, seed in (("a", 0), ("b", 0), ("c", 1)):
        GenSSDSampler(teacher, student, tokenizer, SMALL, batch_size=3, seed=seed, keep_only_correct=False,
                      progress=False).sample(data, tmp_path / f"{name}.jsonl")
    assert (tmp_path / "a.all.jsonl").read_bytes() == (tmp_path / "b.all.jsonl").read_bytes()
    completions = {name: [r["completion"] for r in _read(tmp_path / f"{name}.jsonl")] for name in "ac"}
    assert completions["a"] != completions["c"]


def test_resume_after_a_torn_write_redoes_the_batch_and_appends_only_what_is_missing(toy, tmp_path):
    teacher, student, tokenizer = toy
    data = toy_dataset("train", 6, seed=8)

    def run(path):
        return GenSSDSampler(teacher, student, tokenizer, SMALL, batch_size=2, progress=False).sample(data, path)

    run(tmp_path / "whole.jsonl")
    whole, whole_all = (tmp_path / "whole.jsonl").read_bytes(), (tmp_path / "whole.all.jsonl").read_bytes()
    lines = whole_all.splitlines(keepends=True)
    (tmp_path / "cut.all.jsonl").write_bytes(b"".join(lines[:3]) + lines[3][:20])  # killed mid-line in batch 2
    kept_ids = {r["id"] for r in map(json.loads, lines[:3]) if r["is_correct"]}
    kept_lines = [line for line in whole.splitlines(keepends=True) if json.loads(line)["id"] in kept_ids]
    (tmp_path / "cut.jsonl").write_bytes(b"".join(kept_lines))
    (tmp_path / "cut.fingerprint.json").write_bytes((tmp_path / "whole.fingerprint.json").read_bytes())  # same run
    summary = run(tmp_path / "cut.jsonl")
    assert (tmp_path / "cut.jsonl").read_bytes() == whole and (tmp_path / "cut.all.jsonl").read_bytes() == whole_all
    assert summary.problems == 6 and summary.teacher_tokens_this_run < summary.teacher_tokens


def test_a_killed_run_restarts_into_the_same_files(tmp_path):
    """A real run (subprocess) is SIGKILLed after a few records, restarted, and compared with an uninterrupted one."""
    command = [sys.executable, "-m", "trl_reasoning_distill.gen_ssd.sampler", "--data", "toy:train:16",
               "--batch_size", "2", "--chunk_size", "16", "--max_new_tokens", "96", "--num_candidates", "4", "2",
               "--temperature", "1.0", "--seed", "3"]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1", "TRL_EXPERIMENTAL_SILENCE": "1",
           "PYTHONPATH": str(ROOT)}
    subprocess.run([*command, "--output", str(tmp_path / "whole.jsonl")], env=env, check=True, capture_output=True)
    killed = tmp_path / "killed.jsonl"
    process = subprocess.Popen([*command, "--output", str(killed)], env=env, stdout=subprocess.DEVNULL,
                               stderr=subprocess.DEVNULL)
    progress = all_records_path(killed)
    deadline = time.time() + 300
    while (not progress.exists() or progress.read_bytes().count(b"\n") < 4) and time.time() < deadline:
        time.sleep(0.02)
    os.kill(process.pid, signal.SIGKILL)
    process.wait()
    written = progress.read_bytes().count(b"\n")
    assert 4 <= written < 16  # killed mid-run
    subprocess.run([*command, "--output", str(killed)], env=env, check=True, capture_output=True)
    assert killed.read_bytes() == (tmp_path / "whole.jsonl").read_bytes()
    assert progress.read_bytes() == all_records_path(tmp_path / "whole.jsonl").read_bytes()
    assert len(_read(progress)) == 16 and len({r["id"] for r in _read(progress)}) == 16


def test_cold_start_split_is_disjoint_by_problem_and_seeded():
    data = toy_dataset("train", 40, seed=9)
    data = data.add_item({**data[0], "id": "repeat"})  # the same problem twice stays on one side
    cold, rest = split_cold_start(data, 10, seed=1)
    as_key = json.dumps
    assert not {as_key(p) for p in cold["prompt"]} & {as_key(p) for p in rest["prompt"]}
    assert len(cold) + len(rest) == 41 and len({as_key(p) for p in cold["prompt"]}) == 10
    assert split_cold_start(data, 10, seed=1)[0]["id"] == cold["id"] != split_cold_start(data, 10, seed=2)[0]["id"]
    with pytest.raises(ValueError, match="num_problems"):
        split_cold_start(data, 41)


@pytest.mark.slow
def test_cost_benchmark_runs_resumes_and_tabulates(tmp_path, capsys):
    import importlib.util

    spec = importlib.util.spec_from_file_location("benchmark_gen_ssd_cost", ROOT / "benchmarks" / "gen_ssd_cost.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    out = tmp_path / "cost.csv"
    argv = ["--problems", "4", "--seeds", "0", "--steps", "1", "--n_test", "2", "--out", str(out),
            "--methods", module.GEN_SSD, module.PLAIN]
    module.main(argv)
    module.main(argv)  # finished runs are not redone
    rows = list(csv.DictReader(out.open()))
    assert [(r["kind"], r["method"]) for r in rows] == [
        ("sft", "student (cold start)"), ("sample", module.GEN_SSD), ("sample", module.PLAIN),
        ("sft", module.GEN_SSD), ("sft", module.PLAIN)]
    sampled = {r["method"]: r for r in rows if r["kind"] == "sample"}
    assert int(sampled[module.GEN_SSD]["teacher_tokens"]) > int(sampled[module.PLAIN]["teacher_tokens"])
    assert out.with_suffix(".png").read_bytes()[:4] == b"\x89PNG"
    module.main(["--out", str(out), "--table"])
    table = capsys.readouterr().out
    assert f"| {module.GEN_SSD} |" in table and f"| {module.PLAIN} |" in table
