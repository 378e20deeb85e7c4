"""`evaluate`: accuracy arithmetic with scripted samples, JSONL records and resume, input checks, a real tiny model."""

import json

import pytest
from datasets import Dataset

from trl_reasoning_distill import evaluation
from trl_reasoning_distill.evaluation import EvalResult, encode_prompts, evaluate, sample_completions
from trl_reasoning_distill.fingerprint import StaleOutputError, fingerprint_path
from trl_reasoning_distill.generation.base import Sample
from trl_reasoning_distill.toy import toy_dataset
from trl_reasoning_distill.toy.models import build_student


class Script:
    """Stands in for `HFGenerator.generate`: answers each prompt with scripted texts and records every call.

    `answers[problem]` is `(greedy_text, [sample texts])`; the problem is found in the decoded chat prompt.
    """

    def __init__(self, tokenizer, answers: dict[str, tuple[str, list[str]]]):
        self.tokenizer, self.answers = tokenizer, answers
        self.calls: list[dict] = []

    def problem_of(self, ids: list[int]) -> str:
        text = self.tokenizer.decode(ids)
        hits = [p for p in self.answers if f"user\n{p}<|im_end|>" in text]
        assert len(hits) == 1, text
        return hits[0]

    def __call__(self, generator, prompt_ids, n=1, max_new_tokens=256, temperature=1.0, top_p=1.0, top_k=0,
                 stop=None, return_logprobs=False):
        problems = [self.problem_of(ids) for ids in prompt_ids]
        self.calls.append({"problems": problems, "n": n, "max_new_tokens": max_new_tokens,
                           "temperature": temperature, "top_p": top_p})
        out = []
        for problem in problems:
            greedy, samples = self.answers[problem]
            texts = [greedy] if temperature == 0 else samples
            assert len(texts) == n
            out.append([Sample(token_ids=[1, 2, 3], text=t, finish_reason="eos") for t in texts])
        return out

    def generated(self) -> list[str]:
        """Problems given to greedy decoding, in call order."""
        return [p for call in self.calls if call["temperature"] == 0 for p in call["problems"]]


@pytest.fixture(scope="module")
def model(tokenizer):
    """Never run: generation is scripted wherever this model is used."""
    return build_student(tokenizer, seed=1)


@pytest.fixture
def script(monkeypatch, tokenizer):
    def install(answers):
        stub = Script(tokenizer, answers)
        monkeypatch.setattr(evaluation.HFGenerator, "generate", lambda self, *a, **kw: stub(self, *a, **kw))
        return stub

    return install


def box(x) -> str:
    return f"<think>work</think>\\boxed{{{x}}}"


def rows(*pairs, chat: bool = True) -> list[dict]:
    return [{"prompt": [{"role": "user", "content": p}] if chat else p, "answer": a} for p, a in pairs]


FOUR = [("1+1=?", "2"), ("2+2=?", "4"), ("3+3=?", "6"), ("4+4=?", "8")]


def test_greedy_pass_at_1_and_avg_at_k_arithmetic(model, script, tokenizer):
    stub = script({
        "1+1=?": (box(2), [box(2), box(0), box(0)]),  # greedy right, 1/3
        "2+2=?": (box(5), [box(4), box(4), box(4)]),  # greedy wrong, 3/3
        "3+3=?": (box(6), [box(1), box(1), box(1)]),  # greedy right, 0/3
        "4+4=?": ("no answer", [box(8), box(8), box(0)]),  # greedy wrong, 2/3
    })
    result = evaluate(model, tokenizer, rows(*FOUR), k=3, temperature=0.7, top_p=0.9, max_new_tokens=17,
                      progress=False)
    assert isinstance(result, EvalResult)
    assert result.greedy_accuracy == 0.5
    assert result.avg_at_k == pytest.approx((1 / 3 + 1 + 0 + 2 / 3) / 4)
    assert (result.n, result.k, result.extraction) == (4, 3, "auto")
    assert [r["greedy_correct"] for r in result.records] == [True, False, True, False]
    assert [r["sample_correct"] for r in result.records] == [
        [True, False, False], [True, True, True], [False, False, False], [True, True, False]
    ]
    assert [r["id"] for r in result.records] == [0, 1, 2, 3]  # row index when the data has no id
    assert result.summary() == {"n": 4, "greedy_pass@1": 0.5, "avg@3": pytest.approx(0.5), "extraction": "auto"}
    greedy, sampled = stub.calls
    assert (greedy["n"], greedy["temperature"], greedy["max_new_tokens"]) == (1, 0.0, 17)
    assert (sampled["n"], sampled["temperature"], sampled["top_p"], sampled["max_new_tokens"]) == (3, 0.7, 0.9, 17)


def test_k_zero_is_greedy_only(model, script, tokenizer):
    stub = script({p: (box(a), []) for p, a in FOUR[:2]} | {p: (box(-1), []) for p, _ in FOUR[2:]})
    result = evaluate(model, tokenizer, rows(*FOUR), progress=False)
    assert result.greedy_accuracy == 0.5
    assert result.avg_at_k is None
    assert all(r["samples"] == [] and r["sample_correct"] == [] for r in result.records)
    assert [c["temperature"] for c in stub.calls] == [0.0]


def test_one_correct_sample_of_three(model, script, tokenizer):
    script({"7-2=?": (box(5), ["no idea", box(4), box(5)])})
    result = evaluate(model, tokenizer, rows(("7-2=?", "5")), k=3, progress=False)
    assert result.greedy_accuracy == 1.0
    assert result.avg_at_k == pytest.approx(1 / 3)


def test_extraction_mode_is_used_and_recorded(model, script, tokenizer):
    script({"9-1=?": ("the answer is 8", [])})
    assert evaluate(model, tokenizer, rows(("9-1=?", "8")), progress=False).greedy_accuracy == 1.0
    strict = evaluate(model, tokenizer, rows(("9-1=?", "8")), extraction="boxed", progress=False)
    assert strict.greedy_accuracy == 0.0
    assert strict.summary()["extraction"] == "boxed"


def test_batches_keep_dataset_order(model, script, tokenizer):
    pairs = [(f"{i}+0=?", str(i)) for i in range(5)]
    stub = script({p: (box(a), []) for p, a in pairs})
    result = evaluate(model, tokenizer, rows(*pairs), batch_size=2, progress=False)
    assert [len(c["problems"]) for c in stub.calls] == [2, 2, 1]
    assert [r["answer"] for r in result.records] == [a for _, a in pairs]
    assert result.greedy_accuracy == 1.0


def test_string_and_chat_prompts(model, script, tokenizer):
    assert encode_prompts(tokenizer, ["3+4=?"]) == encode_prompts(tokenizer, [[{"role": "user", "content": "3+4=?"}]])
    (ids,) = encode_prompts(tokenizer, ["3+4=?"])
    assert tokenizer.decode(ids) == "<|im_start|>user\n3+4=?<|im_end|>\n<|im_start|>assistant\n"
    stub = script({"3+4=?": (box(7), []), "5+4=?": (box(9), [])})
    mixed = [{"prompt": "3+4=?", "answer": "7"}, {"prompt": [{"role": "user", "content": "5+4=?"}], "answer": 9}]
    assert evaluate(model, tokenizer, mixed, progress=False).greedy_accuracy == 1.0
    as_dataset = Dataset.from_list(rows(("3+4=?", "7"), ("5+4=?", "9"), chat=False))
    assert evaluate(model, tokenizer, as_dataset, progress=False).greedy_accuracy == 1.0
    assert stub.generated() == ["3+4=?", "5+4=?", "3+4=?", "5+4=?"]


# --- JSONL records and resume ------------------------------------------------------------------------------------


SIX = [(f"{i}+{i}=?", str(2 * i)) for i in range(6)]


def read_jsonl(path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def test_jsonl_one_record_per_example(model, script, tokenizer, tmp_path):
    script({p: (box(a), [box(a), box(-1)]) for p, a in SIX})
    data = [{**r, "id": f"ex-{i}"} for i, r in enumerate(rows(*SIX))]
    out = tmp_path / "eval.jsonl"
    result = evaluate(model, tokenizer, data, k=2, batch_size=4, output_jsonl=out, progress=False)
    records = read_jsonl(out)
    assert [r["id"] for r in records] == [f"ex-{i}" for i in range(6)]
    assert records == result.records
    assert set(records[0]) >= {"id", "answer", "greedy", "greedy_correct", "samples", "sample_correct"}
    assert records[0]["samples"] == [box(0), box(-1)] and records[0]["sample_correct"] == [True, False]


def test_resume_regenerates_exactly_the_missing_records(model, script, tokenizer, tmp_path):
    stub = script({p: (box(a) if i % 2 else "wrong", []) for i, (p, a) in enumerate(SIX)})
    data = [{**r, "id": f"ex-{i}"} for i, r in enumerate(rows(*SIX))]
    out = tmp_path / "eval.jsonl"
    first = evaluate(model, tokenizer, data, batch_size=4, output_jsonl=out, progress=False)
    assert sorted(stub.generated()) == sorted(p for p, _ in SIX)

    lines = out.read_text().splitlines(keepends=True)
    out.write_text("".join(line for i, line in enumerate(lines) if i not in (1, 4)))  # lose ex-1 and ex-4
    stub.calls.clear()
    second = evaluate(model, tokenizer, data, batch_size=4, output_jsonl=out, progress=False)
    assert sorted(stub.generated()) == sorted([SIX[1][0], SIX[4][0]])

    records = read_jsonl(out)
    assert len(records) == 6
    assert sorted(r["id"] for r in records) == sorted(f"ex-{i}" for i in range(6))
    assert second.records == first.records  # dataset order, whatever the file order
    assert second.greedy_accuracy == first.greedy_accuracy == 0.5

    stub.calls.clear()
    third = evaluate(model, tokenizer, data, output_jsonl=out, progress=False)
    assert stub.calls == [] and third.greedy_accuracy == 0.5
    assert len(read_jsonl(out)) == 6


def test_resume_with_row_index_ids(model, script, tokenizer, tmp_path):
    stub = script({p: (box(a), []) for p, a in SIX})
    out = tmp_path / "eval.jsonl"
    evaluate(model, tokenizer, rows(*SIX), output_jsonl=out, progress=False)
    out.write_text("".join(out.read_text().splitlines(keepends=True)[:3]))
    stub.calls.clear()
    evaluate(model, tokenizer, rows(*SIX), output_jsonl=out, progress=False)
    assert stub.generated() == [p for p, _ in SIX[3:]]
    assert sorted(r["id"] for r in read_jsonl(out)) == list(range(6))


def test_resume_after_a_record_cut_short_by_a_crash(model, script, tokenizer, tmp_path):
    stub = script({p: (box(a), []) for p, a in SIX})
    out = tmp_path / "eval.jsonl"
    evaluate(model, tokenizer, rows(*SIX), output_jsonl=out, progress=False)
    lines = out.read_text().splitlines(keepends=True)
    out.write_text("".join(lines[:5]) + lines[5][:20])  # the process died while writing the last record
    stub.calls.clear()
    result = evaluate(model, tokenizer, rows(*SIX), output_jsonl=out, progress=False)
    assert stub.generated() == [SIX[5][0]]
    assert result.greedy_accuracy == 1.0
    assert sorted(r["id"] for r in read_jsonl(out)) == list(range(6))


def test_a_corrupt_line_before_the_last_names_the_file_and_the_line(model, script, tokenizer, tmp_path):
    stub = script({p: (box(a), []) for p, a in SIX})
    out = tmp_path / "eval.jsonl"
    evaluate(model, tokenizer, rows(*SIX), output_jsonl=out, progress=False)
    lines = out.read_text().splitlines(keepends=True)
    out.write_text("".join(lines[:2]) + '{"id": 2, "greedy": "cut\n' + "".join(lines[3:]))  # line 3 is damaged
    stub.calls.clear()
    with pytest.raises(ValueError, match=rf"{out}, line 3: not a JSON record"):
        evaluate(model, tokenizer, rows(*SIX), output_jsonl=out, progress=False)
    assert stub.calls == []
    out.write_text("".join(lines[:4]) + '["no id"]\n' + lines[5])
    with pytest.raises(ValueError, match=rf"{out}, line 5: a record needs an 'id'"):
        evaluate(model, tokenizer, rows(*SIX), output_jsonl=out, progress=False)


# --- fingerprints: records are resumed only by the evaluation that made them -----------------------------------------


def test_another_k_into_the_same_output_is_refused_and_overwrite_starts_afresh(model, script, tokenizer, tmp_path):
    stub = script({p: (box(a), [box(a), box(-1)]) for p, a in FOUR})
    out = tmp_path / "eval.jsonl"
    greedy_only = evaluate(model, tokenizer, rows(*FOUR), output_jsonl=out, progress=False)
    assert greedy_only.greedy_accuracy == 1.0 and greedy_only.avg_at_k is None
    stub.calls.clear()
    with pytest.raises(StaleOutputError, match=r"(?s)k: 0 -> 2.*--overwrite"):
        evaluate(model, tokenizer, rows(*FOUR), k=2, output_jsonl=out, progress=False)
    assert stub.calls == []  # refused before any generation, the old records kept
    assert len(read_jsonl(out)) == 4
    fresh = evaluate(model, tokenizer, rows(*FOUR), k=2, output_jsonl=out, overwrite=True, progress=False)
    assert fresh.avg_at_k == 0.5 and fresh.greedy_accuracy == 1.0  # the old code reported avg@2 = 0.0
    assert sorted(stub.generated()) == sorted(p for p, _ in FOUR)
    assert all(len(r["samples"]) == 2 for r in read_jsonl(out)) and len(read_jsonl(out)) == 4


@pytest.mark.parametrize(("change", "field"), [
    ({"temperature": 0.5}, "temperature"),
    ({"top_p": 0.9}, "top_p"),
    ({"max_new_tokens": 99}, "max_new_tokens"),
    ({"extraction": "boxed"}, "extraction"),
])
def test_another_sampling_or_grading_setting_is_refused(model, script, tokenizer, tmp_path, change, field):
    script({p: (box(a), [box(a)]) for p, a in FOUR})
    out = tmp_path / "eval.jsonl"
    evaluate(model, tokenizer, rows(*FOUR), k=1, output_jsonl=out, progress=False)
    with pytest.raises(StaleOutputError, match=rf"\n  {field}: "):
        evaluate(model, tokenizer, rows(*FOUR), **{"k": 1, **change}, output_jsonl=out, progress=False)


def test_greedy_only_records_do_not_depend_on_the_sampling_settings_or_batch_size(model, script, tokenizer, tmp_path):
    stub = script({p: (box(a), []) for p, a in FOUR})
    out = tmp_path / "eval.jsonl"
    evaluate(model, tokenizer, rows(*FOUR), temperature=1.0, output_jsonl=out, progress=False)
    stub.calls.clear()
    evaluate(model, tokenizer, rows(*FOUR), temperature=0.3, top_p=0.5, batch_size=1, output_jsonl=out,
             progress=False)
    assert stub.calls == []


def test_another_model_into_the_same_output_is_refused(model, script, tokenizer, tmp_path):
    stub = script({p: (box(a) if i < 3 else "wrong", []) for i, (p, a) in enumerate(FOUR)})
    out = tmp_path / "eval.jsonl"
    student = evaluate(model, tokenizer, rows(*FOUR), output_jsonl=out, progress=False)
    stub.calls.clear()
    teacher = build_student(tokenizer, seed=5)
    with pytest.raises(StaleOutputError, match=r"(?s)\n  model: .*--overwrite"):
        evaluate(teacher, tokenizer, rows(*FOUR), output_jsonl=out, progress=False)
    assert stub.calls == []
    again = evaluate(teacher, tokenizer, rows(*FOUR), output_jsonl=out, overwrite=True, progress=False)
    assert len(stub.generated()) == 4 and again.greedy_accuracy == student.greedy_accuracy == 0.75


def test_another_dataset_into_the_same_output_is_refused(model, script, tokenizer, tmp_path):
    stub = script({p: (box(a), []) for p, a in FOUR} | {"9+9=?": (box(18), [])})
    out = tmp_path / "eval.jsonl"
    evaluate(model, tokenizer, rows(*FOUR), output_jsonl=out, progress=False)
    other = rows(*FOUR[:3], ("9+9=?", "18"))  # same ids 0..3, another row 3
    stub.calls.clear()
    with pytest.raises(StaleOutputError, match=r"\n  dataset: "):
        evaluate(model, tokenizer, other, output_jsonl=out, progress=False)
    assert stub.calls == []


def test_an_output_without_a_fingerprint_is_refused(model, script, tokenizer, tmp_path):
    stub = script({p: (box(a), []) for p, a in FOUR})
    out = tmp_path / "eval.jsonl"
    evaluate(model, tokenizer, rows(*FOUR), output_jsonl=out, progress=False)
    fingerprint_path(out).unlink()
    stub.calls.clear()
    with pytest.raises(StaleOutputError, match="without a fingerprint"):
        evaluate(model, tokenizer, rows(*FOUR), output_jsonl=out, progress=False)
    assert stub.calls == []


def test_an_unwritable_output_fails_before_any_generation(model, script, tokenizer, tmp_path):
    stub = script({p: (box(a), []) for p, a in FOUR})
    (tmp_path / "file").write_text("")
    with pytest.raises(OSError, match="cannot write the output"):
        evaluate(model, tokenizer, rows(*FOUR), output_jsonl=tmp_path / "file" / "eval.jsonl", progress=False)
    with pytest.raises(ValueError, match="is a directory"):
        evaluate(model, tokenizer, rows(*FOUR), output_jsonl=tmp_path, progress=False)
    assert stub.calls == [] and not (tmp_path / "fingerprint.json").exists()


def test_a_missing_output_folder_is_created(model, script, tokenizer, tmp_path):
    script({p: (box(a), []) for p, a in FOUR})
    out = tmp_path / "new" / "deeper" / "eval.jsonl"
    evaluate(model, tokenizer, rows(*FOUR), output_jsonl=out, progress=False)
    assert len(read_jsonl(out)) == 4


# --- bad input: a clear ValueError before any generation -----------------------------------------------------------


@pytest.mark.parametrize(
    ("data", "match"),
    [
        ([], "empty"),
        (Dataset.from_dict({"prompt": [], "answer": []}), "empty"),
        ([{"question": "1+1=?", "answer": "2"}], r"'prompt'"),
        ([{"prompt": "1+1=?", "solution": "2"}], r"'answer'"),
        (Dataset.from_dict({"prompt": ["1+1=?"]}), r"'answer'"),
        ([{"prompt": "1+1=?", "answer": "2"}, {"prompt": "", "answer": "0"}], "empty prompt"),
        ([{"prompt": [], "answer": "0"}], "empty prompt"),
    ],
    ids=["empty-list", "empty-dataset", "no-prompt", "no-answer", "dataset-no-answer", "empty-string", "no-messages"],
)
def test_bad_input_raises_before_generation(model, script, tokenizer, tmp_path, data, match):
    stub = script({})
    out = tmp_path / "eval.jsonl"
    with pytest.raises(ValueError, match=match):
        evaluate(model, tokenizer, data, k=2, output_jsonl=out, progress=False)
    assert stub.calls == []
    assert not out.exists()


@pytest.mark.parametrize("ids", [["a", "b", "a", "c"], [0, 1, 2, 1], ["x", 1, "1", "y"]])
def test_duplicate_ids_raise_naming_the_id(model, script, tokenizer, tmp_path, ids):
    stub = script({p: (box(a), []) for p, a in FOUR})
    data = [{**r, "id": i} for r, i in zip(rows(*FOUR), ids)]
    with pytest.raises(ValueError, match=r"repeats id .*(a|1).* \(rows \d and \d\)"):
        evaluate(model, tokenizer, data, output_jsonl=tmp_path / "eval.jsonl", progress=False)
    assert stub.calls == []  # the old code counted the last record once per row: 0.0, truth 0.75


@pytest.mark.parametrize(("setting", "value"), [
    ("k", -1), ("k", 1.5), ("batch_size", 0), ("max_new_tokens", 0), ("temperature", -0.1),
    ("temperature", float("nan")), ("temperature", float("inf")), ("top_p", 0.0), ("top_p", 1.5),
    ("top_p", float("nan")), ("extraction", "bogus"),
])
def test_bad_settings_raise_naming_them_before_generation(model, script, tokenizer, tmp_path, setting, value):
    stub = script({p: (box(a), [box(a)]) for p, a in FOUR})
    out = tmp_path / "eval.jsonl"
    with pytest.raises(ValueError, match=rf"^{setting} must be"):
        evaluate(model, tokenizer, rows(*FOUR), **{setting: value}, output_jsonl=out, progress=False)
    assert stub.calls == [] and not out.exists()


def test_missing_answer_in_a_later_row_raises_before_generation(model, script, tokenizer):
    stub = script({"1+1=?": (box(2), []), "2+2=?": (box(4), [])})
    with pytest.raises(ValueError, match="answer"):
        evaluate(model, tokenizer, [{"prompt": "1+1=?", "answer": "2"}, {"prompt": "2+2=?"}], progress=False)
    assert stub.calls == []


# --- a real tiny model -------------------------------------------------------------------------------------------


def test_real_tiny_model_end_to_end(tiny_student, tokenizer, tmp_path):
    data = toy_dataset("test", 3)
    out = tmp_path / "eval.jsonl"
    result = evaluate(tiny_student, tokenizer, data, k=2, max_new_tokens=8, output_jsonl=out, progress=False)
    assert result.n == 3 and len(result.records) == 3
    assert 0.0 <= result.greedy_accuracy <= 1.0
    assert 0.0 <= result.avg_at_k <= 1.0
    assert [r["id"] for r in read_jsonl(out)] == data["id"]
    assert all(len(r["samples"]) == 2 and isinstance(r["greedy"], str) for r in result.records)
    # greedy decoding is deterministic
    assert sample_completions(tiny_student, tokenizer, data["prompt"], max_new_tokens=8) == [
        r["greedy"] for r in result.records
    ]
