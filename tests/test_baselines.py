"""`rejection_sample` with a scripted `Generator`: what is kept, how much, the teacher-cost count, bad input."""

import pytest
from datasets import Dataset

from trl_reasoning_distill.baselines import rejection_sample
from trl_reasoning_distill.generation.base import Generator, Sample


def sample(text: str, finish_reason: str = "eos", length: int = 5) -> Sample:
    return Sample(token_ids=list(range(10, 10 + length)), text=text, finish_reason=finish_reason)


class ScriptedGenerator:
    """A [`Generator`] answering each prompt with scripted samples; the problem is found in the decoded prompt."""

    def __init__(self, tokenizer, pools: dict[str, list[Sample]]):
        self.tokenizer, self.pools = tokenizer, pools
        self.calls: list[dict] = []

    def generate(self, prompt_ids, n=1, max_new_tokens=256, temperature=1.0, top_p=1.0, top_k=0, stop=None,
                 return_logprobs=False):
        texts = [self.tokenizer.decode(ids) for ids in prompt_ids]
        self.calls.append({"texts": texts, "n": n, "max_new_tokens": max_new_tokens, "temperature": temperature,
                           "top_p": top_p})
        out = []
        for text in texts:
            (problem,) = [p for p in self.pools if f"user\n{p}<|im_end|>" in text]
            assert len(self.pools[problem]) == n
            out.append(self.pools[problem])
        return out

    continue_ = generate


def box(x) -> str:
    return f"<think>work</think>\\boxed{{{x}}}"


def data(*pairs) -> Dataset:
    return Dataset.from_list([{"prompt": [{"role": "user", "content": p}], "answer": a, "id": f"q{i}"}
                              for i, (p, a) in enumerate(pairs)])


def test_stub_is_a_generator(tokenizer):
    assert isinstance(ScriptedGenerator(tokenizer, {}), Generator)


def test_keeps_verified_eos_samples_up_to_keep_per_prompt(tokenizer):
    pools = {
        "2+3=?": [sample(box(5), "length", 7), sample(box(4), length=3), sample(box(5), length=4),
                  sample(box(5), length=6)],
        "9-4=?": [sample(box(5), "stop", 2), sample(box(6)), sample("five", length=1), sample(box("5.0"), length=8)],
        "1+1=?": [sample(box(3), length=1), sample(box(1), length=2), sample(box(0), length=3),
                  sample(box(2), "length", 4)],
    }
    generator = ScriptedGenerator(tokenizer, pools)
    out = rejection_sample(generator, tokenizer, data(("2+3=?", "5"), ("9-4=?", "5"), ("1+1=?", "2")), n=4,
                           keep_per_prompt=2, temperature=0.8, top_p=0.95, max_new_tokens=33)
    assert [c["content"] for row in out["completion"] for c in row] == [box(5), box(5), box("5.0")]
    assert all(row == [{"role": "assistant", "content": row[0]["content"]}] for row in out["completion"])
    assert out["id"] == ["q0", "q0", "q1"]
    assert out["answer"] == ["5", "5", "5"]
    assert out["prompt"][0] == [{"role": "user", "content": "2+3=?"}]
    assert out["tokens_generated"] == [7 + 3 + 4 + 6, 7 + 3 + 4 + 6, 2 + 5 + 1 + 8]  # every sampled token, kept or not
    (call,) = generator.calls
    assert (call["n"], call["temperature"], call["top_p"], call["max_new_tokens"]) == (4, 0.8, 0.95, 33)
    assert call["texts"][0].endswith("<|im_start|>assistant\n")  # chat-templated, generation prompt included


def test_keep_per_prompt_one_takes_the_first_correct(tokenizer):
    pools = {"6+1=?": [sample("seven"), sample(box(7), length=2), sample(box(7), length=9)]}
    out = rejection_sample(ScriptedGenerator(tokenizer, pools), tokenizer, data(("6+1=?", "7")), n=3)
    assert len(out) == 1
    assert out["completion"][0][0]["content"] == box(7)
    assert out["tokens_generated"] == [5 + 2 + 9]


def test_string_prompts_and_no_id_column(tokenizer):
    pools = {"6+1=?": [sample(box(7))]}
    rows = [{"prompt": "6+1=?", "answer": 7}]
    out = rejection_sample(ScriptedGenerator(tokenizer, pools), tokenizer, rows, n=1)
    assert out["prompt"] == ["6+1=?"] and out["answer"] == [7]
    assert "id" not in out.column_names


@pytest.mark.parametrize(("n", "keep"), [(4, 0), (4, 5), (2, -1)])
def test_bad_keep_per_prompt_raises_before_generation(tokenizer, n, keep):
    generator = ScriptedGenerator(tokenizer, {})
    with pytest.raises(ValueError, match="keep_per_prompt"):
        rejection_sample(generator, tokenizer, data(("1+1=?", "2")), n=n, keep_per_prompt=keep)
    assert generator.calls == []


def test_all_wrong_pool_gives_an_empty_dataset(tokenizer):
    pools = {"1+1=?": [sample(box(3)), sample(box(2), "length")], "2+2=?": [sample("four"), sample(box(5))]}
    out = rejection_sample(ScriptedGenerator(tokenizer, pools), tokenizer, data(("1+1=?", "2"), ("2+2=?", "4")), n=2)
    assert isinstance(out, Dataset)
    assert len(out) == 0
    assert {"prompt", "completion", "answer"} <= set(out.column_names)


def test_empty_result_has_the_documented_columns(tokenizer):
    pools = {"1+1=?": [sample(box(3)), sample(box(4))]}
    out = rejection_sample(ScriptedGenerator(tokenizer, pools), tokenizer, data(("1+1=?", "2")), n=2)
    assert len(out) == 0
    assert {"prompt", "completion", "answer", "id", "tokens_generated"} <= set(out.column_names)


def test_missing_answer_column_raises_before_generation(tokenizer):
    generator = ScriptedGenerator(tokenizer, {"1+1=?": [sample(box(2))]})
    with pytest.raises(ValueError, match="answer"):
        rejection_sample(generator, tokenizer, [{"prompt": "1+1=?"}], n=1)
    assert generator.calls == []


def test_real_tiny_model(tiny_student, tokenizer):
    out = rejection_sample(tiny_student, tokenizer, data(("1+1=?", "2")), n=2, max_new_tokens=4)
    assert len(out) <= 1  # a random model is almost never right; only the schema and the call path are checked here
    assert {"prompt", "completion", "answer"} <= set(out.column_names)


@pytest.mark.parametrize("kwargs, message", [({"batch_size": 0}, "batch_size"), ({"extraction": "nope"}, "extraction"),
                                             ({"output_jsonl": "x.jsonl"}, "seed")])
def test_bad_batching_and_output_arguments_raise_before_generation(tokenizer, tmp_path, kwargs, message):
    generator = ScriptedGenerator(tokenizer, {})
    if "output_jsonl" in kwargs:
        kwargs = {"output_jsonl": tmp_path / kwargs["output_jsonl"]}
    with pytest.raises(ValueError, match=message):
        rejection_sample(generator, tokenizer, data(("1+1=?", "2")), n=1, **kwargs)
    assert generator.calls == [] and not any(tmp_path.iterdir())


def test_seeded_batches_sample_each_batch_under_its_own_seed(tokenizer):
    """With a seed, prompts go in batches of `batch_size`, one generation call each."""
    pools = {p: [sample(box(a))] for p, a in (("1+1=?", 2), ("2+2=?", 4), ("3+3=?", 6))}
    generator = ScriptedGenerator(tokenizer, pools)
    out = rejection_sample(generator, tokenizer, data(("1+1=?", "2"), ("2+2=?", "4"), ("3+3=?", "6")), n=1,
                           batch_size=2, seed=0)
    assert [len(call["texts"]) for call in generator.calls] == [2, 1] and out["id"] == ["q0", "q1", "q2"]
