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
