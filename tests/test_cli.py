"""`trl-distill`: dataset specs and `eval` end to end on a saved tiny random model."""

import json

import pytest

from trl_reasoning_distill import cli


def test_toy_spec():
    data = cli.load_dataset_spec("toy:test:5")
    assert len(data) == 5
    assert {"prompt", "answer", "id"} <= set(data.column_names)
    assert all(2 <= n <= 4 for n in data["num_ops"])  # the default difficulty
    assert data["id"] == cli.load_dataset_spec("toy:test:5")["id"]  # seeded


def test_toy_spec_with_operand_range():
    data = cli.load_dataset_spec("toy:test:5:5-6")
    assert len(data) == 5
    assert set(data["num_ops"]) <= {5, 6}
    assert set(cli.load_dataset_spec("toy:validation:4:3")["num_ops"]) == {3}


def test_jsonl_spec(tmp_path):
    path = tmp_path / "data.jsonl"
    rows = [{"prompt": "1+2=?", "answer": "3"}, {"prompt": "5-1=?", "answer": "4"}]
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    data = cli.load_dataset_spec(str(path))
    assert len(data) == 2
    assert data["prompt"] == ["1+2=?", "5-1=?"] and data["answer"] == ["3", "4"]


@pytest.mark.parametrize("spec", ["toy:test", "toy:test:5:2-3:x", "toy:test:five", "toy:nosplit:5", "toy:test:5:6-5"])
def test_bad_toy_spec(spec):
    with pytest.raises(ValueError):
        cli.load_dataset_spec(spec)


@pytest.fixture
def saved_model(tmp_path, tokenizer, tiny_student):
    path = tmp_path / "tiny"
    tiny_student.save_pretrained(path)
    tokenizer.save_pretrained(path)
    return path


def test_eval_prints_a_summary_and_writes_records(saved_model, tmp_path, capsys):
    out = tmp_path / "x.jsonl"
    argv = ["eval", "--model", str(saved_model), "--dataset", "toy:test:3", "--max_new_tokens", "8", "--output",
            str(out)]
    cli.main(argv)
    summary = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert summary["n"] == 3
    assert 0.0 <= summary["greedy_pass@1"] <= 1.0
    assert summary["extraction"] == "auto"
    records = [json.loads(line) for line in out.read_text().splitlines()]
    assert len(records) == 3
    assert [r["id"] for r in records] == cli.load_dataset_spec("toy:test:3")["id"]

    cli.main(argv)  # resumed: nothing to redo, nothing duplicated
    assert json.loads(capsys.readouterr().out.strip().splitlines()[-1]) == summary
    assert len(out.read_text().splitlines()) == 3


def test_eval_refuses_unknown_arguments(saved_model):
    with pytest.raises(SystemExit, match="unknown arguments"):
        cli.main(["eval", "--model", str(saved_model), "--dataset", "toy:test:3", "--bogus", "1"])


def test_parser_needs_a_command():
    with pytest.raises(SystemExit):
        cli.main([])


# --- every argument checked before the model loads ----------------------------------------------------------------


@pytest.fixture
def no_model(monkeypatch):
    """Fails the test if a model is loaded."""

    def load(*args, **kwargs):
        raise AssertionError("a model was loaded before the arguments were checked")

    monkeypatch.setattr(cli, "load_model_and_tokenizer", load)


@pytest.mark.parametrize(("extra", "message"), [
    (["--k", "-1"], "k must be an integer >= 0"),
    (["--batch_size", "0"], "batch_size must be an integer >= 1"),
    (["--max_new_tokens", "0"], "max_new_tokens must be an integer >= 1"),
    (["--temperature", "-1"], "temperature must be finite and >= 0"),
    (["--temperature", "nan"], "temperature must be finite"),
    (["--top_p", "0"], r"top_p must be in \(0, 1\]"),
    (["--top_p", "inf"], r"top_p must be in \(0, 1\]"),
    (["--extraction", "bogus"], "extraction must be one of"),
    (["--dataset", "toy:test:abc"], "the size of 'toy:test:abc' must be a positive integer"),
    (["--dataset", "toy:test:0"], "must be a positive integer"),
    (["--dataset", "toy:dev:5"], "the split of 'toy:dev:5' must be one of"),
    (["--dataset", "toy:test:5:1-3"], "operand range"),
    (["--dataset", "missing.jsonl"], "missing.jsonl does not exist"),
    (["--dataset", "data.csv"], "data.csv does not exist"),
    (["--dataset", "no-such-org/no-such-data"], "huggingface-cli download --repo-type dataset no-such-org/no-such-"),
])
def test_bad_arguments_fail_before_the_model_loads(no_model, tmp_path, extra, message):
    argv = ["eval", "--model", "toy-student", "--dataset", "toy:test:3", "--output", str(tmp_path / "x.jsonl")]
    with pytest.raises(SystemExit, match=message):
        cli.main(argv + extra)
    assert not (tmp_path / "x.jsonl").exists()


def test_duplicate_ids_in_a_dataset_file_fail_before_the_model_loads(no_model, tmp_path):
    path = tmp_path / "data.jsonl"
    rows = [{"prompt": "1+2=?", "answer": "3", "id": "q1"}, {"prompt": "5-1=?", "answer": "4", "id": "q1"}]
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    with pytest.raises(SystemExit, match=r"repeats id 'q1' \(rows 0 and 1\)"):
        cli.main(["eval", "--model", "toy-student", "--dataset", str(path)])


@pytest.mark.parametrize("where", ["under_a_file", "a_directory"])
def test_an_unwritable_output_fails_before_the_model_loads(no_model, tmp_path, where):
    (tmp_path / "file").write_text("")
    output = tmp_path / "file" / "x.jsonl" if where == "under_a_file" else tmp_path
    with pytest.raises(SystemExit, match=f"cannot write --output|{tmp_path} is a directory"):
        cli.main(["eval", "--model", "toy-student", "--dataset", "toy:test:3", "--output", str(output)])


def test_a_missing_output_folder_is_created(saved_model, tmp_path, capsys):
    out = tmp_path / "new" / "deeper" / "x.jsonl"
    cli.main(["eval", "--model", str(saved_model), "--dataset", "toy:test:2", "--max_new_tokens", "4", "--output",
              str(out)])
    assert len(out.read_text().splitlines()) == 2


# --- resuming only the same evaluation ------------------------------------------------------------------------------


@pytest.fixture
def other_model(tmp_path, tokenizer):
    from trl_reasoning_distill.toy.models import build_student

    path = tmp_path / "other"
    build_student(tokenizer, seed=7).save_pretrained(path)
    tokenizer.save_pretrained(path)
    return path


def last_summary(capsys) -> dict:
    return json.loads(capsys.readouterr().out.strip().splitlines()[-1])


@pytest.mark.parametrize(("change", "field"), [
    (["--k", "2"], "k"),
    (["--dataset", "toy:test:3:5-6"], "dataset"),
    (["--max_new_tokens", "5"], "max_new_tokens"),
    (["--model", "OTHER"], "model"),
])
def test_eval_into_an_output_of_another_evaluation_refuses(saved_model, other_model, tmp_path, capsys, change, field):
    out = tmp_path / "x.jsonl"
    argv = ["eval", "--model", str(saved_model), "--dataset", "toy:test:3", "--max_new_tokens", "4", "--output",
            str(out)]
    cli.main(argv)
    first = out.read_text()
    change = [str(other_model) if arg == "OTHER" else arg for arg in change]
    with pytest.raises(SystemExit, match=rf"(?s)\n  {field}: .*--overwrite"):
        cli.main(argv + change)
    assert out.read_text() == first
    capsys.readouterr()
    cli.main(argv + change + ["--overwrite"])
    summary = last_summary(capsys)
    records = [json.loads(line) for line in out.read_text().splitlines()]
    assert summary["n"] == len(records) == 3
    if field == "k":
        assert "avg@2" in summary and all(len(r["samples"]) == 2 for r in records)
    if field == "dataset":
        assert [r["id"] for r in records] == cli.load_dataset_spec("toy:test:3:5-6")["id"]
