"""`HFGenerator` on a tiny random toy model: grouping, padding, greedy, logprobs, stopping, padded vocabularies."""

from contextlib import contextmanager

import pytest
import torch

from trl_reasoning_distill.generation import Generator, HFGenerator, Sample
from trl_reasoning_distill.toy.models import build_student
from trl_reasoning_distill.toy.tokenizer import build_tokenizer

BIG = 1e4


@pytest.fixture(scope="module")
def model(tokenizer):
    return build_student(tokenizer, seed=1).eval()


@pytest.fixture(scope="module")
def generator(model, tokenizer):
    return HFGenerator(model, tokenizer)


@pytest.fixture(scope="module")
def prompts(tokenizer):
    # different lengths, so that batches are left-padded
    return [tokenizer.encode(text) for text in ["12+3=", "What is 7 times 8?", "a"]]


@contextmanager
def forced(model, scripts: list[list[int]]):
    """Make row `r` of the batch emit `scripts[r][t]` at generation step `t` (a huge logit on the `lm_head` output);
    rows whose script has ended are left alone."""
    step = 0

    def hook(module, args, logits_BLV):
        nonlocal step
        logits_BLV = logits_BLV.clone()
        for row, script in enumerate(scripts):
            if step < len(script):
                logits_BLV[row, -1, script[step]] += BIG
        step += 1
        return logits_BLV

    handle = model.lm_head.register_forward_hook(hook)
    try:
        yield
    finally:
        handle.remove()


@contextmanager
def boosted(model, token_ids: list[int]):
    """Add a huge logit to `token_ids` at every step."""
    handle = model.lm_head.register_forward_hook(lambda module, args, logits: logits + _bias(logits, token_ids))
    try:
        yield
    finally:
        handle.remove()


def _bias(logits_BLV: torch.Tensor, token_ids: list[int]) -> torch.Tensor:
    bias_V = torch.zeros(logits_BLV.shape[-1], dtype=logits_BLV.dtype)
    bias_V[token_ids] = BIG
    return bias_V


class _Untouchable:
    """Stands in for a model that must not be used: any attribute access fails the test."""

    def __getattr__(self, name):
        raise AssertionError(f"the model was used ({name!r}) before the arguments were checked")


def test_satisfies_the_generator_protocol(generator):
    assert isinstance(generator, Generator)


def test_needs_pad_and_eos_tokens(model):
    tokenizer = build_tokenizer()
    tokenizer.pad_token = None
    with pytest.raises(ValueError, match="pad token"):
        HFGenerator(model, tokenizer)


def test_returns_n_samples_per_prompt_grouped_by_prompt(model, tokenizer, prompts):
    # batch_size=5 splits the 12 sequences across calls in the middle of a group
    groups = HFGenerator(model, tokenizer, batch_size=5).generate(prompts, n=4, max_new_tokens=3, temperature=1.0)
    assert [len(group) for group in groups] == [4, 4, 4]
    assert all(isinstance(s, Sample) and 1 <= len(s.token_ids) <= 3 for group in groups for s in group)


def test_group_i_holds_the_samples_of_prompt_i(model, tokenizer, prompts):
    generator = HFGenerator(model, tokenizer, batch_size=4)
    groups = generator.generate(prompts, n=3, max_new_tokens=6, temperature=0)
    for prompt, group in zip(prompts, groups, strict=True):
        alone = generator.generate([prompt], n=1, max_new_tokens=6, temperature=0)[0][0]
        assert [s.token_ids for s in group] == [alone.token_ids] * 3


def test_left_padded_batch_matches_each_prompt_alone(generator, prompts):
    batched = generator.generate(prompts, max_new_tokens=10, temperature=0)
    for prompt, (sample,) in zip(prompts, batched, strict=True):
        (alone,) = generator.generate([prompt], max_new_tokens=10, temperature=0)[0]
        assert sample == alone


def test_greedy_is_deterministic(generator, prompts):
    first = generator.generate(prompts, n=2, max_new_tokens=8, temperature=0)
    torch.manual_seed(123)
    assert generator.generate(prompts, n=2, max_new_tokens=8, temperature=0) == first


def test_sampling_defaults_of_the_model_generation_config_are_not_applied(monkeypatch, model, generator, prompts):
    expected = generator.generate(prompts, max_new_tokens=8, temperature=0)
    # e.g. Qwen2.5-Instruct ships `repetition_penalty=1.05`; vLLM, called by TRL, applies none
    monkeypatch.setattr(model.generation_config, "repetition_penalty", 50.0)
    assert generator.generate(prompts, max_new_tokens=8, temperature=0) == expected


def test_logprobs_equal_a_manual_forward_pass(model, generator, prompts):
    groups = generator.generate(prompts, n=2, max_new_tokens=6, temperature=0.7, return_logprobs=True)
    for prompt, group in zip(prompts, groups, strict=True):
        for sample in group:
            assert len(sample.logprobs) == len(sample.token_ids)
            with torch.no_grad():
                logits_LV = model(torch.tensor([prompt + sample.token_ids])).logits[0].double()
            # the logit at position t predicts token t + 1; temperature 1, full (padded) vocabulary
            logprobs_CV = logits_LV[len(prompt) - 1 : -1].log_softmax(-1)
            expected_C = logprobs_CV.gather(-1, torch.tensor(sample.token_ids).unsqueeze(-1)).squeeze(-1)
            actual_C = torch.tensor(sample.logprobs, dtype=torch.float64)
            torch.testing.assert_close(actual_C, expected_C, atol=1e-4, rtol=0)


def test_no_logprobs_unless_asked(generator, prompts):
    assert generator.generate(prompts[:1], max_new_tokens=2)[0][0].logprobs is None


def test_stops_on_eos_and_drops_the_padding_after_it(model, tokenizer, generator, prompts):
    eos = tokenizer.eos_token_id
    with forced(model, [tokenizer.encode("ab") + [eos], tokenizer.encode("wxyzw")]):
        (first,), (second,) = generator.generate(prompts[:2], max_new_tokens=5, temperature=0)
    assert first == Sample(token_ids=tokenizer.encode("ab") + [eos], text="ab", finish_reason="eos")
    assert second == Sample(token_ids=tokenizer.encode("wxyzw"), text="wxyzw", finish_reason="length")


def test_max_new_tokens_gives_finish_reason_length(model, tokenizer, generator, prompts):
    with forced(model, [tokenizer.encode("hello world")]):
        (sample,) = generator.generate(prompts[:1], max_new_tokens=4, temperature=1.0)[0]
    assert sample.token_ids == tokenizer.encode("hell")
    assert sample.finish_reason == "length"


def test_stop_strings_cut_the_text(model, tokenizer, generator, prompts):
    with forced(model, [tokenizer.encode("ab;cd;"), tokenizer.encode("wx\n\nyz"), tokenizer.encode("klmnop")]):
        groups = generator.generate(prompts, max_new_tokens=6, temperature=0, stop=[";", "\n\n"])
    first, second, third = (group[0] for group in groups)
    assert first == Sample(token_ids=tokenizer.encode("ab;"), text="ab", finish_reason="stop")
    assert second == Sample(token_ids=tokenizer.encode("wx\n\n"), text="wx", finish_reason="stop")
    assert third == Sample(token_ids=tokenizer.encode("klmnop"), text="klmnop", finish_reason="length")


def test_padded_embedding_rows_are_never_sampled(model, tokenizer, generator, prompts):
    padding_rows = list(range(len(tokenizer), model.config.vocab_size))
    assert padding_rows, "the toy model should pad its vocabulary"
    with boosted(model, padding_rows):
        with torch.no_grad():  # the boost works: unrestricted, the model would pick a padding row
            assert model(torch.tensor([prompts[0]])).logits[0, -1].argmax() >= len(tokenizer)
        greedy = generator.generate(prompts, max_new_tokens=4, temperature=0)
        sampled = generator.generate(prompts, n=4, max_new_tokens=4, temperature=1.5)
    ids = [t for groups in (greedy, sampled) for group in groups for s in group for t in s.token_ids]
    assert len(ids) > 0 and max(ids) < len(tokenizer)


def test_continue_from_a_prefix_extends_the_greedy_completion(generator, prompts):
    (full,) = generator.generate(prompts[1:2], max_new_tokens=10, temperature=0)[0]
    assert full.finish_reason == "length"
    prefix = prompts[1] + full.token_ids[:4]
    (rest,) = generator.continue_([prefix], max_new_tokens=6, temperature=0)[0]
    assert rest.token_ids == full.token_ids[4:]


@pytest.mark.parametrize(
    "kwargs, message",
    [
        ({"n": 0}, "n must be"),
        ({"temperature": -0.1}, "temperature"),
        ({"top_p": 0.0}, "top_p"),
        ({"top_p": 1.5}, "top_p"),
        ({"top_k": -1}, "top_k"),
        ({"max_new_tokens": 0}, "max_new_tokens"),
        ({"prompt_ids": [[5, 6], []]}, "empty prompt"),
    ],
)
def test_bad_arguments_raise_before_any_compute(tokenizer, kwargs, message):
    generator = HFGenerator(_Untouchable(), tokenizer)
    with pytest.raises(ValueError, match=message):
        generator.generate(**{"prompt_ids": [[5, 6]], **kwargs})
