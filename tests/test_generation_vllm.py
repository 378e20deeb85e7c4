"""`VLLMGenerator`: output conversion on stand-ins shaped like vLLM's objects (everywhere), the import guard, and,
where vLLM and a GPU exist, greedy equality with `HFGenerator` on a tiny model."""

import importlib.machinery
import importlib.util
import sys
import types
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
import torch

import trl_reasoning_distill.generation.vllm as vllm_backend
from trl_reasoning_distill.generation import Generator, HFGenerator, Sample, VLLMGenerator
from trl_reasoning_distill.generation.vllm import _server_to_samples, _to_samples

HAS_VLLM = importlib.util.find_spec("vllm") is not None


# Stand-ins with the fields of vllm.outputs.RequestOutput / CompletionOutput / vllm.logprobs.Logprob


@dataclass
class Logprob:
    logprob: float
    rank: int = 1


@dataclass
class Completion:
    token_ids: list[int]
    finish_reason: str | None
    stop_reason: int | str | None = None
    text: str = ""
    logprobs: list[dict[int, Logprob]] | None = None
    index: int = 0


@dataclass
class Request:
    outputs: list[Completion]
    prompt_token_ids: list[int] = field(default_factory=list)


# vLLM outputs -> samples


def test_requests_become_groups_of_n_in_prompt_order(tokenizer):
    outputs = [
        Request([Completion(tokenizer.encode("ab"), "length"), Completion(tokenizer.encode("cd"), "length")]),
        Request([Completion(tokenizer.encode("ef"), "length"), Completion(tokenizer.encode("gh"), "length")]),
    ]
    groups = _to_samples(outputs, 2, tokenizer, None, {tokenizer.eos_token_id}, False)
    assert [[s.text for s in group] for group in groups] == [["ab", "cd"], ["ef", "gh"]]
    assert all(s.finish_reason == "length" and s.logprobs is None for group in groups for s in group)


@pytest.mark.parametrize(
    "text, finish_reason, stop_reason, expected_text, expected_reason",
    [
        ("ab<|im_end|>", "stop", None, "ab", "eos"),  # EOS: stop_reason None
        ("ab<|endoftext|>", "stop", 0, "ab", "eos"),  # a stop-token id (generation_config's extra EOS ids)
        ("ab;", "stop", ";", "ab", "stop"),  # a stop string: text cut before it
        ("ab\n\n", "stop", "\n\n", "ab", "stop"),
        ("abc", "length", None, "abc", "length"),
        ("ab<|im_end|>", "length", None, "ab", "eos"),  # EOS as the last allowed token
    ],
)
def test_finish_reasons(tokenizer, text, finish_reason, stop_reason, expected_text, expected_reason):
    ids = tokenizer.encode(text)
    outputs = [Request([Completion(ids, finish_reason, stop_reason, text="vLLM's own text")])]
    (sample,) = _to_samples(outputs, 1, tokenizer, [";", "\n\n"], {tokenizer.eos_token_id}, False)[0]
    assert sample == Sample(token_ids=ids, text=expected_text, finish_reason=expected_reason)


def test_agrees_with_hf_generator_on_text_and_finish_reason(tokenizer):
    hf = HFGenerator(model=None, tokenizer=tokenizer)
    stop = ["=", "\n\n"]
    cases = [("12+3<|im_end|>", "stop", None), ("7*8=", "stop", "="), ("abc", "length", None)]
    for text, finish_reason, stop_reason in cases:
        ids = tokenizer.encode(text)
        outputs = [Request([Completion(ids, finish_reason, stop_reason)])]
        (sample,) = _to_samples(outputs, 1, tokenizer, stop, {tokenizer.eos_token_id}, False)[0]
        assert sample == hf._to_sample(torch.tensor(ids), None, stop)


def test_logprobs_are_those_of_the_sampled_tokens(tokenizer):
    ids = tokenizer.encode("xyz")
    ranked = [  # logprobs=k > 0: the top-k come along, and the sampled token is not always the most likely
        {ids[0]: Logprob(-0.1, 1), 7: Logprob(-2.5, 2)},
        {9: Logprob(-0.2, 1), ids[1]: Logprob(-1.7, 2)},
        {ids[2]: Logprob(-0.3, 1)},
    ]
    outputs = [Request([Completion(ids, "length", logprobs=ranked)])]
    (sample,) = _to_samples(outputs, 1, tokenizer, None, {tokenizer.eos_token_id}, True)[0]
    assert sample.logprobs == [-0.1, -1.7, -0.3]
    assert _to_samples(outputs, 1, tokenizer, None, {tokenizer.eos_token_id}, False)[0][0].logprobs is None


def test_conversion_fails_loudly(tokenizer):
    ids = tokenizer.encode("ab")
    with pytest.raises(RuntimeError, match="expected 2"):
        _to_samples([Request([Completion(ids, "length")])], 2, tokenizer, None, {tokenizer.eos_token_id}, False)
    with pytest.raises(RuntimeError, match="no logprobs"):
        _to_samples([Request([Completion(ids, "length")])], 1, tokenizer, None, {tokenizer.eos_token_id}, True)
    with pytest.raises(RuntimeError, match="abort"):
        _to_samples([Request([Completion(ids, "abort")])], 1, tokenizer, None, {tokenizer.eos_token_id}, False)


# server responses -> samples


def server_response(tokenizer, texts: list[str], logprobs: bool = False) -> dict[str, Any]:
    """A `VLLMClient.generate` response; each token's own logprob is ranked second after a decoy (id 3)."""
    completion_ids = [tokenizer.encode(text) for text in texts]
    response = {"prompt_ids": [[5]], "completion_ids": completion_ids, "logprobs": None, "logprob_token_ids": None}
    if logprobs:
        response["logprobs"] = [[[-0.01, -float(t) / 10] for t in ids] for ids in completion_ids]
        response["logprob_token_ids"] = [[[3, t] for t in ids] for ids in completion_ids]
    return response


def test_server_response_becomes_groups_of_n(tokenizer):
    response = server_response(tokenizer, ["ab<|im_end|>", "cd;ef", "ghij", "k<|endoftext|>"])
    groups = _server_to_samples(response, 2, tokenizer, [";"], {tokenizer.eos_token_id, 0}, False)
    assert [[(s.text, s.finish_reason) for s in group] for group in groups] == [
        [("ab", "eos"), ("cd", "stop")],
        [("ghij", "length"), ("k", "eos")],
    ]
    assert groups[0][0].token_ids == tokenizer.encode("ab<|im_end|>")


def test_server_logprobs_are_those_of_the_sampled_tokens(tokenizer):
    response = server_response(tokenizer, ["ab", "c"], logprobs=True)
    groups = _server_to_samples(response, 1, tokenizer, None, {tokenizer.eos_token_id}, True)
    assert [s.logprobs for group in groups for s in group] == [
        [-t / 10 for t in tokenizer.encode("ab")],
        [-t / 10 for t in tokenizer.encode("c")],
    ]


def test_server_conversion_fails_loudly(tokenizer):
    eos = {tokenizer.eos_token_id}
    with pytest.raises(RuntimeError, match="multiple of n=2"):
        _server_to_samples(server_response(tokenizer, ["a", "b", "c"]), 2, tokenizer, None, eos, False)
    with pytest.raises(RuntimeError, match="no logprobs"):
        _server_to_samples(server_response(tokenizer, ["a"]), 1, tokenizer, None, eos, True)


# the generator, on a stand-in client (server mode) and a stand-in vllm module (colocate mode)


class FakeClient:
    """Answers like `VLLMClient.generate`, with scripted completions, and records each call."""

    def __init__(self, tokenizer, texts: list[str]):
        self.tokenizer, self.texts, self.calls = tokenizer, texts, []

    def generate(self, prompts, **kwargs):
        self.calls.append({"prompts": prompts, **kwargs})
        return server_response(self.tokenizer, self.texts, logprobs=kwargs["logprobs"] is not None)


def test_satisfies_the_generator_protocol(tokenizer):
    assert isinstance(VLLMGenerator(tokenizer, client=FakeClient(tokenizer, [])), Generator)


def test_needs_exactly_one_engine(tokenizer):
    with pytest.raises(ValueError, match="exactly one"):
        VLLMGenerator(tokenizer)
    with pytest.raises(ValueError, match="exactly one"):
        VLLMGenerator(tokenizer, llm=object(), client=object())


def test_server_mode_sends_the_sampling_arguments(tokenizer):
    client = FakeClient(tokenizer, ["ab", "cd", "ef", "gh"])
    generator = VLLMGenerator(tokenizer, client=client, vocab_size=len(tokenizer) + 11)
    prompts = [[5, 6], [7]]
    groups = generator.generate(prompts, n=2, max_new_tokens=9, temperature=0.7, top_p=0.9, top_k=5, stop=[";"])
    assert [[s.text for s in group] for group in groups] == [["ab", "cd"], ["ef", "gh"]]
    (call,) = client.calls
    assert call["prompts"] == prompts
    assert {k: call[k] for k in ("n", "temperature", "top_p", "top_k", "max_tokens", "logprobs")} == {
        "n": 2, "temperature": 0.7, "top_p": 0.9, "top_k": 5, "max_tokens": 9, "logprobs": None,
    }  # fmt: skip
    # padded rows of the embedding are excluded from sampling
    padding_rows = range(len(tokenizer), len(tokenizer) + 11)
    assert call["generation_kwargs"] == {"stop": [";"], "logit_bias": dict.fromkeys(padding_rows, -100.0)}


def test_server_mode_returns_logprobs_when_asked(tokenizer):
    client = FakeClient(tokenizer, ["ab"])
    (sample,) = VLLMGenerator(tokenizer, client=client).generate([[5]], return_logprobs=True)[0]
    assert client.calls[0]["logprobs"] == 0 and client.calls[0]["generation_kwargs"] is None
    assert sample.logprobs == [-t / 10 for t in tokenizer.encode("ab")]


def test_greedy_asks_for_one_sample_and_copies_it(tokenizer):
    client = FakeClient(tokenizer, ["ab", "cd"])
    groups = VLLMGenerator(tokenizer, client=client).generate([[5], [6]], n=3, temperature=0, top_p=0.5, top_k=3)
    assert client.calls[0]["n"] == 1  # vLLM rejects n > 1 when greedy
    assert (client.calls[0]["top_p"], client.calls[0]["top_k"]) == (1.0, 0)
    assert [[s.text for s in group] for group in groups] == [["ab"] * 3, ["cd"] * 3]
    assert groups[0][0] is not groups[0][1] and groups[0][0].token_ids is not groups[0][1].token_ids


def test_continue_is_generate(tokenizer):
    client = FakeClient(tokenizer, ["ab"])
    assert VLLMGenerator(tokenizer, client=client).continue_([[5, 6, 7]])[0][0].text == "ab"


@pytest.mark.parametrize(
    "kwargs, message",
    [
        ({"n": 0}, "n must be"),
        ({"temperature": -1.0}, "temperature"),
        ({"top_p": 0.0}, "top_p"),
        ({"max_new_tokens": 0}, "max_new_tokens"),
        ({"prompt_ids": [[5], []]}, "empty prompt"),
    ],
)
def test_bad_arguments_raise_before_any_request(tokenizer, kwargs, message):
    client = FakeClient(tokenizer, ["ab"])
    with pytest.raises(ValueError, match=message):
        VLLMGenerator(tokenizer, client=client).generate(**{"prompt_ids": [[5]], **kwargs})
    assert client.calls == []


@pytest.fixture
def fake_vllm(monkeypatch, tokenizer):
    """A stand-in `vllm` module: `LLM` records its arguments and answers with scripted `RequestOutput`s."""
    module = types.ModuleType("vllm")
    module.__spec__ = importlib.machinery.ModuleSpec("vllm", None)

    class LLM:
        def __init__(self, **kwargs):
            self.kwargs, self.calls = kwargs, []
            model_config = types.SimpleNamespace(get_vocab_size=lambda: len(tokenizer) + 27)
            self.llm_engine = types.SimpleNamespace(model_config=model_config)

        def generate(self, prompts, sampling_params, use_tqdm):
            self.calls.append((prompts, sampling_params, use_tqdm))
            n = sampling_params["n"]
            return [Request([Completion(tokenizer.encode("ok;"), "stop", ";")] * n) for _ in prompts]

    module.LLM = LLM
    module.SamplingParams = dict  # records the fields it is built with
    monkeypatch.setitem(sys.modules, "vllm", module)
    return module


def test_colocate_builds_an_engine_and_passes_token_ids(tokenizer, fake_vllm):
    generator = VLLMGenerator.colocate("some/model", tokenizer, gpu_memory_utilization=0.5, dtype="float32")
    assert generator.llm.kwargs == {
        "model": "some/model", "gpu_memory_utilization": 0.5, "enable_prefix_caching": True, "dtype": "float32",
    }  # fmt: skip
    groups = generator.generate([[5, 6], [7]], n=2, max_new_tokens=4, stop=[";"])
    assert [[(s.text, s.finish_reason) for s in group] for group in groups] == [[("ok", "stop")] * 2] * 2
    ((prompts, params, use_tqdm),) = generator.llm.calls
    assert prompts == [{"prompt_token_ids": [5, 6]}, {"prompt_token_ids": [7]}] and use_tqdm is False
    assert params == {
        "n": 2, "temperature": 1.0, "top_p": 1.0, "top_k": 0, "max_tokens": 4, "logprobs": None, "stop": [";"],
        "logit_bias": dict.fromkeys(range(len(tokenizer), len(tokenizer) + 27), -100.0),  # the vocabulary is padded
    }  # fmt: skip


# the import guard


def test_missing_vllm_raises_an_import_error_naming_the_extra(monkeypatch, tokenizer):
    find_spec = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "vllm" else find_spec(name, *a))
    with pytest.raises(ImportError, match=r"pip install 'trl-reasoning-distill\[vllm\]'"):
        VLLMGenerator.colocate("some/model", tokenizer)
    with pytest.raises(ImportError, match=r"pip install 'trl-reasoning-distill\[vllm\]'"):
        VLLMGenerator.server("http://localhost:8000", tokenizer)


def test_module_imports_without_vllm(monkeypatch):
    monkeypatch.setitem(sys.modules, "vllm", None)  # any `import vllm` now raises ImportError
    name = "trl_reasoning_distill.generation._vllm_fresh_copy"
    spec = importlib.util.spec_from_file_location(name, vllm_backend.__file__)
    module = importlib.util.module_from_spec(spec)
    monkeypatch.setitem(sys.modules, name, module)
    spec.loader.exec_module(module)  # a fresh execution of generation/vllm.py
    assert module.VLLMGenerator.__name__ == "VLLMGenerator"


# real vLLM (GPU)

needs_vllm_and_gpu = pytest.mark.skipif(
    not (HAS_VLLM and torch.cuda.is_available()), reason="needs vLLM and a CUDA device"
)


@pytest.fixture(scope="module")
def engines(tmp_path_factory, tokenizer):
    """A tiny toy model saved to disk, served by a colocated vLLM engine and by `HFGenerator` on the same GPU."""
    from trl_reasoning_distill.toy.models import build_teacher

    model = build_teacher(tokenizer, seed=3)  # head_dim 32, padded vocabulary
    with torch.no_grad():
        model.model.norm.weight.mul_(8.0)  # sharper logits: greedy ties are far above float32 noise
    path = Path(tmp_path_factory.mktemp("toy_model"))
    model.save_pretrained(path)
    tokenizer.save_pretrained(path)
    # vLLM first, before this process touches CUDA
    llm_kwargs = {"dtype": "float32", "max_model_len": 512, "enforce_eager": True, "seed": 0}
    vllm_generator = VLLMGenerator.colocate(str(path), tokenizer, gpu_memory_utilization=0.2, **llm_kwargs)
    hf_generator = HFGenerator(model.to("cuda", torch.float32).eval(), tokenizer)
    return vllm_generator, hf_generator


@pytest.fixture(scope="module")
def gpu_prompts(tokenizer):
    return [tokenizer.encode(text) for text in ["12+3=", "What is 7 times 8?", "a", "(4*5)-6="]]


@pytest.mark.vllm
@needs_vllm_and_gpu
def test_vllm_greedy_equals_hf_greedy(engines, gpu_prompts):
    vllm_generator, hf_generator = engines
    got = vllm_generator.generate(gpu_prompts, max_new_tokens=24, temperature=0, return_logprobs=True)
    expected = hf_generator.generate(gpu_prompts, max_new_tokens=24, temperature=0, return_logprobs=True)
    for (vllm_sample,), (hf_sample,) in zip(got, expected, strict=True):
        assert (vllm_sample.token_ids, vllm_sample.text, vllm_sample.finish_reason) == (
            hf_sample.token_ids,
            hf_sample.text,
            hf_sample.finish_reason,
        )
        torch.testing.assert_close(
            torch.tensor(vllm_sample.logprobs), torch.tensor(hf_sample.logprobs), atol=2e-2, rtol=0
        )


@pytest.mark.vllm
@needs_vllm_and_gpu
def test_vllm_stop_strings_match_hf(engines, gpu_prompts):
    vllm_generator, hf_generator = engines
    (full,) = hf_generator.generate(gpu_prompts[1:2], max_new_tokens=12, temperature=0)[0]
    # a character the greedy completion emits after its first token; not one of a special token's (HF's stop-string
    # matcher also looks inside special tokens, whose text vLLM skips)
    special = "".join(hf_generator.tokenizer.all_special_tokens)
    stop = [next(c for c in full.text[1:] if c not in special)]
    (got,) = vllm_generator.generate(gpu_prompts[1:2], max_new_tokens=12, temperature=0, stop=stop)[0]
    (expected,) = hf_generator.generate(gpu_prompts[1:2], max_new_tokens=12, temperature=0, stop=stop)[0]
    assert got == expected and got.finish_reason == "stop"


@pytest.mark.vllm
@needs_vllm_and_gpu
def test_vllm_sampling_groups_and_vocabulary(engines, gpu_prompts, tokenizer):
    vllm_generator, _ = engines
    groups = vllm_generator.generate(gpu_prompts, n=4, max_new_tokens=16, temperature=1.0, return_logprobs=True)
    assert [len(group) for group in groups] == [4] * len(gpu_prompts)
    samples = [s for group in groups for s in group]
    # the random model's padding rows have ordinary logits: only the padding bias keeps them out
    assert max(t for s in samples for t in s.token_ids) < len(tokenizer)
    assert all(len(s.logprobs) == len(s.token_ids) and s.finish_reason in ("eos", "length") for s in samples)
    greedy = vllm_generator.generate(gpu_prompts[:1], n=3, max_new_tokens=8, temperature=0)[0]
    assert greedy[0] == greedy[1] == greedy[2]
