"""Gen-SSD selection pieces against `tests/reference_gen_ssd.py` (spec §2.1-2.4, §8 A1-A6, §9 items 1-14)."""

import math
import random
import subprocess
import sys

import pytest
import reference_gen_ssd as ref
import torch

from trl_reasoning_distill.gen_ssd import (
    BEAM_WIDTH,
    CANDIDATE_SCHEDULE,
    CHUNK_SIZE,
    MAX_NEW_TOKENS,
    advance_beams,
    candidate_log_perplexity,
    candidate_pool,
    candidate_token_logprobs,
    candidates_per_beam,
    chunk_budget,
    chunk_finish,
    chunk_nll,
    chunk_perplexity,
    final_pick,
    group_candidates,
    initial_beams,
    max_chunk_rounds,
    num_candidates,
    right_pad,
    select_candidates,
    trajectory_perplexity,
)

F64 = torch.float64
EOS, WORD = 0, 7  # in the scripted chunks the pad id is the EOS id, as for Qwen2.5 base models


def _mask(M: int, L: int) -> torch.Tensor:
    """Random holes and padding on both sides; row 0 is empty."""
    mask_ML = torch.rand(M, L) < 0.7
    mask_ML[0] = False
    return mask_ML


# --- chunk perplexity (spec §2.1, §9 items 10-12) --------------------------------------------------------------------


@pytest.mark.parametrize("M, L, V", [(1, 1, 2), (3, 5, 7), (4, 9, 31)])
@pytest.mark.parametrize("dtype", [F64, torch.float32, torch.bfloat16])
def test_token_logprobs_and_perplexity_match_reference(M, L, V, dtype):
    logits_MLV = (3 * torch.randn(M, L, V)).to(dtype)
    mask_ML = _mask(M, L) if M > 1 else torch.ones(M, L, dtype=torch.bool)
    ids_ML = torch.randint(0, V, (M, L)).masked_fill(~mask_ML, -100)  # out-of-range ids on padding are ignored
    logprobs_ML = candidate_token_logprobs(logits_MLV, ids_ML, mask_ML)
    assert logprobs_ML.dtype == (F64 if dtype == F64 else torch.float32)  # fp32 log-softmax (spec §8 A6)
    expected_ML = ref.token_logprobs_ref(logits_MLV, ids_ML, mask_ML)
    torch.testing.assert_close(logprobs_ML.double(), expected_ML, rtol=1e-6, atol=1e-5)
    sums, counts = ref.chunk_nll_ref(expected_ML, mask_ML)
    nll_M, tokens_M = chunk_nll(logprobs_ML, mask_ML)
    torch.testing.assert_close(nll_M.double(), torch.tensor(sums, dtype=F64), rtol=1e-6, atol=1e-4)
    assert tokens_M.tolist() == counts
    ppl_M = chunk_perplexity(logprobs_ML, mask_ML).double()
    torch.testing.assert_close(ppl_M, ref.chunk_ppl_ref(expected_ML, mask_ML), rtol=1e-5, atol=0, equal_nan=True)


def test_perplexity_ignores_padding_layout_and_batch_composition():
    logprobs_L = -2 * torch.rand(6, dtype=F64)
    right_ML = torch.cat([logprobs_L, torch.tensor([-math.inf, math.nan, 5.0], dtype=F64)])[None]
    left_ML = torch.cat([torch.tensor([math.nan, 3.0, -math.inf], dtype=F64), logprobs_L])[None]
    mask_right = torch.arange(9)[None] < 6
    expected = torch.exp(-logprobs_L.mean())
    torch.testing.assert_close(chunk_perplexity(right_ML, mask_right)[0], expected)
    torch.testing.assert_close(chunk_perplexity(left_ML, mask_right.flip(-1))[0], expected)
    batch_ML = torch.cat([right_ML, -torch.rand(3, 9, dtype=F64)])
    batch_mask = torch.cat([mask_right, torch.rand(3, 9) < 0.5])
    torch.testing.assert_close(chunk_perplexity(batch_ML, batch_mask)[0], expected)


def test_perplexity_is_a_per_token_mean_at_least_one():
    lp = torch.full((2, 8), -0.7, dtype=F64)
    mask = torch.tensor([[True] * 2 + [False] * 6, [True] * 8])
    torch.testing.assert_close(chunk_perplexity(lp, mask), torch.full((2,), math.exp(0.7), dtype=F64))  # length-aware
    assert (chunk_perplexity(-torch.rand(5, 4), torch.ones(5, 4, dtype=torch.bool)) >= 1).all()
    assert chunk_perplexity(torch.zeros(1, 3), torch.ones(1, 3, dtype=torch.bool)).item() == 1.0


def test_trajectory_perplexity_is_token_weighted_over_chunks():
    chunks = [(-torch.rand(n, dtype=F64)).tolist() for n in (4, 1, 7)]
    nll_C = torch.tensor([-sum(c) for c in chunks], dtype=F64)
    tokens_C = torch.tensor([len(c) for c in chunks])
    overall = trajectory_perplexity(nll_C, tokens_C)
    assert overall.item() == pytest.approx(ref.sequence_ppl_ref([x for c in chunks for x in c]), rel=1e-12)
    mean_of_chunk_ppls = torch.exp(nll_C / tokens_C).mean()
    assert not torch.isclose(overall, mean_of_chunk_ppls)  # spec §8 A4: not the mean of the chunk PPLs


def _alone(model, prefix: list[int], chunk: list[int]) -> tuple[torch.Tensor, torch.Tensor]:
    """Logits `(L, V)` aligned on `chunk` when it follows `prefix`, from one unpadded forward pass, and its ids."""
    return model(input_ids=torch.tensor([prefix + chunk])).logits[0, len(prefix) - 1 : -1], torch.tensor(chunk)


@torch.no_grad()
def test_batched_student_scoring_matches_one_at_a_time_and_is_additive(tokenizer, tiny_student):
    """Spec §9 items 10-12 with the toy student: right-padded mixed-length candidates, one forward pass, against one
    candidate at a time (float64 softmax reference); and NLL(y1 | x) + NLL(y2 | x, y1) = NLL(y1 y2 | x)."""
    model = tiny_student.eval()
    context = tokenizer("12+34=?<think>", add_special_tokens=False)["input_ids"]
    chunks = [torch.randint(10, len(tokenizer), (n,)).tolist() for n in (5, 2, 8)]
    chunks[1][-1] = tokenizer.eos_token_id  # the EOS is scored (spec §8 A6); here pad != EOS, see test_chunk_finish
    ids_ML, mask_ML = right_pad(chunks, tokenizer.pad_token_id)
    inputs = torch.cat([torch.tensor([context] * 3), ids_ML], dim=1)
    attention = torch.cat([torch.ones(3, len(context), dtype=torch.long), mask_ML.long()], dim=1)
    logits_MLV = model(input_ids=inputs, attention_mask=attention).logits[:, len(context) - 1 : -1]
    nll_M, tokens_M = chunk_nll(candidate_token_logprobs(logits_MLV, ids_ML, mask_ML), mask_ML)
    for m, chunk in enumerate(chunks):
        logits_LV, ids_L = _alone(model, context, chunk)
        expected = -sum(ref.token_logprob_ref(logits_LV[t], int(ids_L[t])) for t in range(len(chunk)))
        assert nll_M[m].item() == pytest.approx(expected, abs=1e-4)
    assert tokens_M.tolist() == [5, 2, 8]
    y1, y2 = chunks[0], chunks[2]
    full = torch.ones(1, len(y1 + y2), dtype=torch.bool)
    nll1 = chunk_nll(candidate_token_logprobs(*_alone(model, context, y1))[None], full[:, : len(y1)])[0]
    nll2 = chunk_nll(candidate_token_logprobs(*_alone(model, context + y1, y2))[None], full[:, len(y1) :])[0]
    whole_lp = candidate_token_logprobs(*_alone(model, context, y1 + y2))[None]
    torch.testing.assert_close(nll1 + nll2, chunk_nll(whole_lp, full)[0], atol=1e-4, rtol=0)
    overall = trajectory_perplexity(torch.cat([nll1, nll2]), torch.tensor([len(y1), len(y2)]))
    torch.testing.assert_close(overall, chunk_perplexity(whole_lp, full)[0], atol=1e-4, rtol=0)


# --- schedule, budget, pool layout (spec §2.1, §2.3, §8 A2, §9 item 8) -----------------------------------------------


@pytest.mark.parametrize("schedule", [CANDIDATE_SCHEDULE, (16,), (1,), (5, 3), [9, 9, 2, 1]])
def test_candidate_schedule_repeats_its_last_entry(schedule):
    assert [num_candidates(c, schedule) for c in range(1, 8)] == [ref.schedule_ref(c, schedule) for c in range(1, 8)]


def test_default_schedule_and_round_count_are_the_papers():
    assert [num_candidates(c) for c in range(1, 6)] == [16, 8, 4, 4, 4]  # paper §3.2
    assert (CHUNK_SIZE, MAX_NEW_TOKENS, BEAM_WIDTH) == (4096, 16384, 2)
    assert max_chunk_rounds() == 4
    assert [max_chunk_rounds(16384, m) for m in (512, 1024, 2048, 8192, 16384, 10**6)] == [32, 16, 8, 2, 1, 1]
    assert max_chunk_rounds(10, 3) == 4
    assert chunk_budget(torch.tensor([0, 4, 8, 9, 10]), 4, 10).tolist() == [4, 4, 2, 1, 0]


def test_candidates_per_beam_and_step():
    live = torch.tensor([[True, True], [True, False], [False, True], [False, False]])
    assert candidates_per_beam(live, 8).tolist() == [[8, 8], [8, 0], [0, 8], [0, 0]]
    assert candidates_per_beam(live, 8, "step").tolist() == [[4, 4], [8, 0], [0, 8], [0, 0]]
    assert candidates_per_beam(live, 5, "step").tolist() == [[3, 3], [5, 0], [0, 5], [0, 0]]  # ceil division (A2)


def test_candidate_pool_is_beam_major_and_groups_flat_candidates():
    counts = torch.randint(0, 4, (6, 3))
    counts[0] = 0
    pool = candidate_pool(counts)
    for p in range(6):
        expected = [(b, k) for b in range(3) for k in range(int(counts[p, b]))]
        slots = pool.valid[p].nonzero().flatten().tolist()
        got = [(int(pool.parent[p, n]), int(pool.sample[p, n])) for n in slots]
        assert got == expected
        assert pool.valid[p].tolist() == [n < len(expected) for n in range(pool.valid.shape[1])]
    assert (pool.parent[~pool.valid] == -1).all() and (pool.sample[~pool.valid] == -1).all()
    flat = [(p, b, k) for p in range(6) for b in range(3) for k in range(int(counts[p, b]))]
    grouped = group_candidates(torch.tensor(flat), pool.valid, fill=-1)
    assert grouped[pool.valid].tolist() == [list(f) for f in flat] and (grouped[~pool.valid] == -1).all()
    assert (grouped[..., 0] == torch.arange(6)[:, None]).logical_or(~pool.valid).all()  # each prompt's own row
    assert (grouped[pool.valid][:, 1] == pool.parent[pool.valid]).all()
    assert (grouped[pool.valid][:, 2] == pool.sample[pool.valid]).all()
    assert candidate_pool(torch.zeros(2, 2, dtype=torch.long)).valid.shape == (2, 0)


# --- ranking (Eq. 4, App. A, Table 4, §9 items 1, 2, 13, 14) --------------------------------------------------------


@pytest.mark.parametrize("rule", ["low", "high"])
@pytest.mark.parametrize("P, N, K", [(1, 1, 1), (3, 5, 2), (4, 16, 2), (2, 3, 5), (5, 7, 1)])
def test_select_matches_reference_with_ties_and_empty_slots(P, N, K, rule):
    scores_PN = torch.randint(0, 4, (P, N)).to(F64)  # few distinct values: many exact ties
    valid_PN = torch.rand(P, N) < 0.7
    valid_PN[0] = True
    scores_PN[~valid_PN] = math.nan  # empty slots may hold anything
    sel = select_candidates(scores_PN, valid_PN, K, rule)
    for p in range(P):
        order = ref.rank_ref(scores_PN[p].tolist(), valid_PN[p].tolist(), rule)[:K]
        assert sel.index[p].tolist() == order + [-1] * (K - len(order))
        assert sel.kept[p].tolist() == [True] * len(order) + [False] * (K - len(order))
        assert sel.score[p, : len(order)].tolist() == [scores_PN[p, n].item() for n in order]
        assert torch.isnan(sel.score[p, len(order) :]).all()


def test_ties_go_to_the_lowest_beam_sample_pair():
    scores = torch.tensor([[2.0, 1.0, 1.0, 3.0, 1.0]])
    valid = torch.ones(1, 5, dtype=torch.bool)
    assert select_candidates(scores, valid, 2, "low").index.tolist() == [[1, 2]]
    assert select_candidates(-scores, valid, 2, "high").index.tolist() == [[1, 2]]
    assert select_candidates(torch.full((1, 4), math.inf), torch.ones(1, 4, dtype=torch.bool), 1).index.item() == 0


def test_kept_candidates_dominate_every_pruned_one_and_follow_candidates_under_permutation():
    scores_PN = torch.randn(8, 12, dtype=F64)
    valid_PN = torch.ones(8, 12, dtype=torch.bool)
    sel = select_candidates(scores_PN, valid_PN, 2)
    pruned = scores_PN.scatter(-1, sel.index, math.inf)
    assert (sel.score.amax(-1) <= pruned.amin(-1)).all()  # spec §9 item 2
    perm = torch.randperm(12)
    moved = select_candidates(scores_PN[:, perm], valid_PN, 2)
    assert torch.equal(perm[moved.index], sel.index)  # spec §9 item 13 (no ties in continuous scores)


@pytest.mark.parametrize("rule", ["low", "high", "random"])
def test_a_single_candidate_is_always_chosen(rule):
    """K = 1 is plain teacher sampling (spec §2.4): whatever the score, the only candidate survives."""
    scores = torch.tensor([[0.3], [math.inf], [-math.inf], [1e30]])
    sel = select_candidates(scores, torch.ones(4, 1, dtype=torch.bool), 1, rule, torch.Generator().manual_seed(0))
    assert sel.index.tolist() == [[0]] * 4 and sel.kept.all()


def test_random_rule_is_seeded_uniform_and_ignores_the_scores():
    scores = torch.arange(4.0).expand(4000, 4)
    valid = torch.ones(4000, 4, dtype=torch.bool)
    valid[:, 3] = False
    first = select_candidates(scores, valid, 2, "random", torch.Generator().manual_seed(1))
    again = select_candidates(scores, valid, 2, "random", torch.Generator().manual_seed(1))
    other = select_candidates(scores, valid, 2, "random", torch.Generator().manual_seed(2))
    assert torch.equal(first.index, again.index) and not torch.equal(first.index, other.index)
    assert (first.index != 3).all() and (first.index[:, 0] != first.index[:, 1]).all()
    counts = torch.bincount(first.index[:, 0], minlength=3).float()
    assert ((counts / 4000 - 1 / 3).abs() < 0.04).all()  # uniform: 0 (the argmin) wins only a third of the time


def test_select_and_pool_errors():
    scores, valid = torch.zeros(2, 3), torch.ones(2, 3, dtype=torch.bool)
    with pytest.raises(ValueError, match="rule"):
        select_candidates(scores, valid, 1, "lowest")
    with pytest.raises(ValueError, match="num_keep"):
        select_candidates(scores, valid, 0)
    with pytest.raises(ValueError, match="generator"):
        select_candidates(scores, valid, 1, "random")
    with pytest.raises(ValueError, match="NaN"):
        select_candidates(torch.tensor([[0.0, math.nan, 1.0]]), torch.ones(1, 3, dtype=torch.bool))
    with pytest.raises(ValueError, match="valid"):
        select_candidates(scores, valid.long())
    with pytest.raises(ValueError, match="scores"):
        select_candidates(torch.zeros(3), valid[0])
    with pytest.raises(ValueError, match="candidates_per"):
        candidates_per_beam(valid, 4, "prompt")
    with pytest.raises(ValueError, match="counts"):
        candidate_pool(torch.tensor([[1, -1]]))
    with pytest.raises(ValueError, match="one row per valid slot"):
        group_candidates(torch.zeros(5), valid)
    with pytest.raises(ValueError, match="schedule"):
        num_candidates(1, ())
    with pytest.raises(ValueError, match="schedule entry"):
        num_candidates(1, (16, 0))
    with pytest.raises(ValueError, match="chunk_round"):
        num_candidates(0)
    with pytest.raises(ValueError, match="chunk_size"):
        max_chunk_rounds(16384, 0)
    with pytest.raises(ValueError, match="tokens_before"):
        chunk_budget(torch.tensor([11]), 4, 10)
    with pytest.raises(ValueError, match="log-probabilities"):
        chunk_nll(torch.tensor([[0.5, -1.0]]), torch.ones(1, 2, dtype=torch.bool))
    with pytest.raises(ValueError, match=r"\[0, 5\)"):
        candidate_token_logprobs(torch.zeros(1, 2, 5), torch.tensor([[1, 5]]))
    with pytest.raises(ValueError, match="cumulative"):
        candidate_log_perplexity(scores, torch.ones(2, 3, dtype=torch.long), beam_score="cumulative")


# --- termination (spec §2.4, §9 item 9) ------------------------------------------------------------------------------


def test_chunk_finish_detects_eos_and_the_total_budget():
    chunks = [[5, 5, 5, 5], [5, EOS], [5, 5, 5, 5], [5, 9], [EOS], [5, 5, 5, EOS]]
    before = torch.tensor([0, 0, 6, 8, 4, 0])
    ids, mask = right_pad(chunks, pad_id=EOS)
    eos, finished = chunk_finish(ids, mask, before, eos_token_ids=[EOS, 9], chunk_size=4, max_new_tokens=10)
    assert eos.tolist() == [False, True, False, True, True, True]
    assert finished.tolist() == [False, True, True, True, True, True]  # row 2 reaches 10 tokens: cut by the budget


def test_chunk_finish_errors():
    def call(chunks, before, **kw):
        ids, mask = right_pad(chunks, pad_id=EOS)
        return chunk_finish(ids, mask, torch.tensor(before), eos_token_ids=kw.get("eos", [EOS]), chunk_size=4,
                            max_new_tokens=10)

    with pytest.raises(ValueError, match="after an EOS"):
        call([[5, EOS, 5, 5]], [0])
    with pytest.raises(ValueError, match="shorter than its budget"):
        call([[5, 5]], [0])
    with pytest.raises(ValueError, match="1 to"):
        call([[5, 5, 5]], [8])
    with pytest.raises(ValueError, match="1 to"):
        call([[]], [0])
    with pytest.raises(ValueError, match="eos_token_ids"):
        call([[EOS]], [0], eos=[])


# --- beams and the final pick (Algorithm A, App. A, §8 A5, §9 items 3, 4) --------------------------------------------


def test_advance_beams_accumulates_and_never_extends_pruned_beams():
    beams = initial_beams(2, 2)
    pool = candidate_pool(candidates_per_beam(beams.live, 3))
    nll = torch.tensor([[3.0, 1.0, 2.0], [1.0, 1.0, 9.0]])
    tokens = torch.tensor([[4, 4, 4], [4, 2, 4]])
    finished = torch.tensor([[False, True, False], [False, False, False]])
    sel = select_candidates(candidate_log_perplexity(nll, tokens), pool.valid, 2)
    step = advance_beams(beams, pool, sel, nll, tokens, finished)
    assert sel.index.tolist() == [[1, 2], [0, 1]]
    assert step.parent.tolist() == [[0, 0], [0, 0]]
    assert step.done.tolist() == [[True, False], [False, False]] and step.beams.live.tolist() == [[False, True],
                                                                                                  [True, True]]
    assert step.beams.nll.tolist() == [[1.0, 2.0], [1.0, 1.0]] and step.beams.tokens.tolist() == [[4, 4], [4, 2]]
    pool2 = candidate_pool(candidates_per_beam(step.beams.live, 2))
    assert (pool2.parent[0][pool2.valid[0]] == 1).all()  # the ended beam 0 of prompt 0 gets no candidates
    nll2, tok2 = torch.ones(2, 4), torch.full((2, 4), 4)
    sel2 = select_candidates(candidate_log_perplexity(nll2, tok2), pool2.valid, 2)
    step2 = advance_beams(step.beams, pool2, sel2, nll2, tok2, torch.zeros(2, 4, dtype=torch.bool))
    assert step2.beams.nll.tolist() == [[3.0, 3.0], [2.0, 2.0]] and step2.beams.tokens.tolist() == [[8, 8], [8, 8]]
    forged = sel._replace(index=torch.tensor([[0, 1], [0, 1]]), kept=torch.ones(2, 2, dtype=torch.bool))
    dead = step.beams._replace(live=torch.zeros(2, 2, dtype=torch.bool))
    with pytest.raises(ValueError, match="never extended"):
        advance_beams(dead, pool, forged, nll, tokens, finished)
    ended = candidate_pool(candidates_per_beam(dead.live, 4))  # every beam ended: an empty round keeps nothing
    none = advance_beams(dead, ended, select_candidates(torch.zeros(2, 0), ended.valid, 2), torch.zeros(2, 0),
                         torch.zeros(2, 0, dtype=torch.long), torch.zeros(2, 0, dtype=torch.bool))
    assert not none.beams.live.any() and not none.done.any() and (none.parent == -1).all()


def test_cumulative_score_is_the_prefix_plus_chunk_log_ppl_and_agrees_with_chunk_at_beam_one():
    beams = initial_beams(1, 2)._replace(nll=torch.tensor([[8.0, 2.0]]), tokens=torch.tensor([[4, 4]]),
                                         live=torch.tensor([[True, True]]))
    pool = candidate_pool(torch.tensor([[1, 1]]))
    nll, tokens = torch.tensor([[2.0, 4.0]]), torch.tensor([[4, 4]])
    cumulative = candidate_log_perplexity(nll, tokens, beam_score="cumulative", pool=pool, beams=beams)
    assert cumulative.tolist() == [[10 / 8, 6 / 8]] and candidate_log_perplexity(nll, tokens).tolist() == [[0.5, 1.0]]
    single = initial_beams(1, 1)._replace(nll=torch.tensor([[5.0]]), tokens=torch.tensor([[4]]))
    pool1, nll1 = candidate_pool(torch.tensor([[6]])), 3 * torch.rand(1, 6)
    tokens1 = torch.full((1, 6), 4)
    orders = [select_candidates(candidate_log_perplexity(nll1, tokens1, beam_score=s, pool=pool1, beams=single),
                                pool1.valid, 6).index for s in ("chunk", "cumulative")]
    assert torch.equal(*orders)


def test_final_pick_prefers_eos_then_lowest_overall_perplexity():
    nll = torch.tensor([[4.0, 1.0, 3.0, 0.0], [2.0, 1.0, 0.0, 0.0], [0.0] * 4, [2.0, 2.0, 6.0, 0.0]], dtype=F64)
    tokens = torch.tensor([[4, 4, 4, 1], [4, 4, 1, 1], [1, 1, 1, 1], [4, 4, 4, 1]])
    valid = torch.tensor([[1, 1, 1, 0], [1, 1, 0, 0], [0, 0, 0, 0], [1, 1, 1, 0]]).bool()
    eos = torch.tensor([[1, 0, 1, 1], [0, 0, 0, 0], [0, 0, 0, 0], [1, 1, 1, 1]]).bool()
    pick = final_pick(nll, tokens, valid, eos)
    assert pick.index.tolist() == [2, 1, -1, 0]  # row 0: the lower-PPL beam hit the budget; row 3: a tie
    assert pick.found.tolist() == [True, True, False, True]
    torch.testing.assert_close(pick.perplexity[[0, 1, 3]], torch.exp(torch.tensor([0.75, 0.25, 0.5], dtype=F64)))
    assert final_pick(nll, tokens, valid, eos, prefer_eos=False).index.tolist() == [1, 1, -1, 0]
    assert final_pick(nll, tokens, valid, eos, rule="high").index.tolist() == [0, 0, -1, 2]
    draws = {final_pick(nll, tokens, valid, eos, rule="random", generator=torch.Generator().manual_seed(s)).index[0]
             .item() for s in range(40)}
    assert draws == {0, 2}  # uniform over the EOS-ended trajectories only
    with pytest.raises(ValueError, match="at least one token"):
        final_pick(nll, tokens.masked_fill(valid, 0), valid, eos)


# --- whole rounds against Algorithm A (spec §2.3, §9 items 1-8, 14) --------------------------------------------------


def _script(seed, p, *, tied=False, eos_rate=0.25, prefix_free=False, scorer_seed=None):
    """Scripted teacher (`seed`) and scorer (`scorer_seed`, default `seed`): sample k from the prefix `path` ->
    (summed NLL, tokens, EOS), deterministic."""

    def draw(path, k, budget):
        key = f"{p}/{k}" if prefix_free else f"{p}/{path}/{k}"
        teacher = random.Random(f"{seed}/{key}")
        scorer = random.Random(f"s{seed if scorer_seed is None else scorer_seed}/{key}")
        eos = teacher.random() < eos_rate
        ntok = teacher.randint(1, budget) if eos else budget
        mean = scorer.choice([0.5, 1.0, 1.5]) if tied else scorer.uniform(0.1, 3.0)
        return mean * ntok, ntok, eos

    return draw


def _run(scripts, *, schedule, beam_width, candidates_per="beam", beam_score="chunk", rule="low", chunk_size=4,
         max_new_tokens=10, prefer_eos=True, generator=None):
    """Algorithm A for every problem at once, from the vectorised pieces; the Python here only moves lists."""
    P = len(scripts)
    beams = initial_beams(P, beam_width)
    paths = [[()] * beam_width for _ in range(P)]
    calls, ended = [[] for _ in range(P)], [[] for _ in range(P)]
    for c in range(1, max_chunk_rounds(max_new_tokens, chunk_size) + 1):
        counts = candidates_per_beam(beams.live, num_candidates(c, schedule), candidates_per)
        pool, budget = candidate_pool(counts), chunk_budget(beams.tokens, chunk_size, max_new_tokens)
        chunks, nlls, before = [], [], []
        for p in range(P):
            for b in range(beam_width):
                if counts[p, b]:
                    calls[p].append((c, paths[p][b], int(counts[p, b]), int(budget[p, b])))
                for k in range(int(counts[p, b])):
                    s, ntok, eos = scripts[p](paths[p][b], k, int(budget[p, b]))
                    chunks.append([WORD] * (ntok - 1) + [EOS if eos else WORD])
                    nlls.append(s)
                    before.append(int(beams.tokens[p, b]))
        ids, mask = right_pad(chunks, pad_id=EOS)
        eos_M, finished_M = chunk_finish(ids, mask, torch.tensor(before), eos_token_ids=[EOS], chunk_size=chunk_size,
                                         max_new_tokens=max_new_tokens)
        nll, tokens = group_candidates(torch.tensor(nlls, dtype=F64), pool.valid), group_candidates(mask.sum(-1),
                                                                                                    pool.valid)
        eos_PN, finished = group_candidates(eos_M, pool.valid, False), group_candidates(finished_M, pool.valid, False)
        scores = candidate_log_perplexity(nll, tokens, beam_score=beam_score, pool=pool, beams=beams)
        sel = select_candidates(scores, pool.valid, beam_width, rule, generator)
        step = advance_beams(beams, pool, sel, nll, tokens, finished)
        paths = [[paths[p][int(step.parent[p, j])] + (int(pool.sample[p, sel.index[p, j]]),) if sel.kept[p, j] else ()
                  for j in range(beam_width)] for p in range(P)]
        for p, j in step.done.nonzero().tolist():
            ended[p].append((step.beams.nll[p, j], step.beams.tokens[p, j], eos_PN[p, sel.index[p, j]], paths[p][j]))
        beams = step.beams
        assert beams.live.sum(-1).le(beam_width).all()
        if not beams.live.any():
            break
    width = max(1, max(len(e) for e in ended))
    rows = [e + [(torch.tensor(0.0, dtype=F64), torch.tensor(1), torch.tensor(False), None)] * (width - len(e))
            for e in ended]
    nll_PF = torch.stack([torch.stack([r[0] for r in row]) for row in rows])
    tokens_PF = torch.stack([torch.stack([r[1] for r in row]) for row in rows])
    eos_PF = torch.stack([torch.stack([r[2] for r in row]) for row in rows])
    valid_PF = torch.tensor([[r[3] is not None for r in row] for row in rows])
    pick = final_pick(nll_PF, tokens_PF, valid_PF, eos_PF, rule=rule, prefer_eos=prefer_eos, generator=generator)
    return [rows[p][pick.index[p]][3] for p in range(P)], pick.perplexity, calls


@pytest.mark.parametrize("rule", ["low", "high"])
@pytest.mark.parametrize("beam_width, candidates_per, beam_score", [(1, "beam", "chunk"), (2, "beam", "chunk"),
                                                                    (2, "step", "chunk"), (2, "beam", "cumulative"),
                                                                    (3, "step", "cumulative")])
@pytest.mark.parametrize("chunk_size, tied, prefer_eos", [(4, False, True), (3, True, True), (2, True, False)])
def test_rounds_match_algorithm_a(rule, beam_width, candidates_per, beam_score, chunk_size, tied, prefer_eos):
    scripts = [_script(7, p, tied=tied) for p in range(5)]
    options = dict(schedule=(5, 3, 2), beam_width=beam_width, candidates_per=candidates_per, beam_score=beam_score,
                   rule=rule, chunk_size=chunk_size, max_new_tokens=10, prefer_eos=prefer_eos)
    paths, ppl, calls = _run(scripts, **options)
    for p in range(5):
        best, ref_calls = ref.gen_ssd_sample_ref(scripts[p], **options)
        assert calls[p] == ref_calls  # the same prefixes extended, with the same n and budget: pruned never extended
        assert paths[p] == best.path
        assert ppl[p].item() == pytest.approx(math.exp(best.nll / best.ntok), rel=1e-12)


def test_default_schedule_is_per_surviving_beam():
    scripts = [_script(3, p, eos_rate=0.0) for p in range(3)]
    _, _, calls = _run(scripts, schedule=CANDIDATE_SCHEDULE, beam_width=2, chunk_size=4, max_new_tokens=16)
    for problem_calls in calls:
        assert [(c, n) for c, _, n, _ in problem_calls] == [(1, 16), (2, 8), (2, 8), (3, 4), (3, 4), (4, 4), (4, 4)]
        assert all(budget == 4 for *_, budget in problem_calls)


@pytest.mark.parametrize("rule", ["low", "high", "random"])
@pytest.mark.parametrize("candidates_per", ["beam", "step"])
def test_one_candidate_per_step_is_plain_chunked_teacher_sampling(rule, candidates_per):
    """Spec §2.4 / §9 item 5: with K = 1 and B = 1 the scorer has no influence."""
    runs = [_run([_script(1, p, scorer_seed=scorer) for p in range(4)], schedule=(1,), beam_width=1,
                 candidates_per=candidates_per, rule=rule, generator=torch.Generator().manual_seed(0))
            for scorer in (1, 2)]
    assert runs[0][0] == runs[1][0] and runs[0][2] == runs[1][2]  # same chunks, same teacher calls
    assert not torch.equal(runs[0][1], runs[1][1])  # although the student's perplexities differ
    assert all(set(path) == {0} for path in runs[0][0])
    assert all(n == 1 for calls in runs[0][2] for _, _, n, _ in calls)


@pytest.mark.parametrize("beam_width", [1, 2])
def test_single_chunk_of_the_whole_budget_is_best_of_k_by_student_ppl(beam_width):
    """Spec §2.4 / §9 item 7: m >= Nmax is post-hoc best-of-K_1 (App. D), with exactly one teacher call."""
    scripts = [_script(5, p) for p in range(6)]
    paths, ppl, calls = _run(scripts, schedule=CANDIDATE_SCHEDULE, beam_width=beam_width, chunk_size=10,
                             max_new_tokens=10, prefer_eos=False)
    for p in range(6):
        candidates = [scripts[p]((), k, 10) for k in range(16)]
        means = [s / n for s, n, _ in candidates]
        assert paths[p] == (min(range(16), key=lambda k: (means[k], k)),)
        assert ppl[p].item() == pytest.approx(math.exp(min(means)))
        assert calls[p] == [(1, (), 16, 10)]


def test_prefix_independent_scores_low_finds_the_min_path_high_the_max_random_between():
    """Spec §9 item 14: chunk NLLs that ignore the prefix, full-length chunks, B = 1."""
    scripts = [_script(11, p, eos_rate=0.0, prefix_free=True) for p in range(8)]
    result = {rule: _run(scripts, schedule=(4,), beam_width=1, rule=rule, chunk_size=4, max_new_tokens=12,
                         generator=torch.Generator().manual_seed(3))[1] for rule in ("low", "high", "random")}
    for p in range(8):
        means = [scripts[p]((), k, 4)[0] / 4 for k in range(4)]
        assert result["low"][p].item() == pytest.approx(math.exp(min(means)))
        assert result["high"][p].item() == pytest.approx(math.exp(max(means)))
    assert (result["low"] <= result["random"]).all() and (result["random"] <= result["high"]).all()
    assert (result["random"] > result["low"]).any()


def test_package_imports_without_trl_or_transformers():
    code = ("import sys; import trl_reasoning_distill.gen_ssd; "
            "print(sorted(m for m in sys.modules if m.split('.')[0] in ('trl', 'transformers')))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"
