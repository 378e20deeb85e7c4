"""`fingerprint.py`: identities of models, tokenizers and rows; claiming a resumable output; unique ids."""

import json

import pytest
import torch

import trl_reasoning_distill
from trl_reasoning_distill.fingerprint import (
    StaleOutputError,
    check_records_rows,
    check_unique_ids,
    claim_output,
    fingerprint_path,
    model_identity,
    row_hash,
    rows_identity,
    tokenizer_identity,
)
from trl_reasoning_distill.toy.models import build_student

# --- identities ------------------------------------------------------------------------------------------------------


def test_model_identity_follows_the_weights(tokenizer, tiny_student):
    same = build_student(tokenizer, seed=1)
    assert model_identity(tiny_student) == model_identity(same)  # same class, same weights
    assert model_identity(tiny_student) != model_identity(build_student(tokenizer, seed=2))
    with torch.no_grad():
        next(same.parameters()).view(-1)[0] += 1e-3  # one weight moved a little
    assert model_identity(same) != model_identity(tiny_student)


def test_model_identity_of_objects_without_weights():
    class Judge:
        def identity(self):
            return {"judge": "api", "model": "x-1"}

    class Plain:
        pass

    assert model_identity(Judge()) == {"judge": "api", "model": "x-1"}
    assert model_identity(Plain()) == {"class": "Plain"}


def test_tokenizer_identity_follows_the_vocabulary_and_the_chat_template(tokenizer):
    from trl_reasoning_distill.toy.tokenizer import build_tokenizer

    other = build_tokenizer()
    assert tokenizer_identity(other) == tokenizer_identity(tokenizer)
    other.chat_template = "{{ messages[0]['content'] }}"
    assert tokenizer_identity(other) != tokenizer_identity(tokenizer)
    other = build_tokenizer()
    other.add_tokens(["<extra>"])
    assert tokenizer_identity(other) != tokenizer_identity(tokenizer)


def test_rows_identity_follows_every_row_and_column():
    rows = [{"prompt": "1+1=?", "answer": "2", "id": 0}, {"prompt": "2+2=?", "answer": "4", "id": 1}]
    assert rows_identity(rows) == rows_identity([dict(r) for r in rows])
    assert rows_identity(rows) == rows_identity([{"id": 0, "answer": "2", "prompt": "1+1=?"}, rows[1]])  # key order
    assert rows_identity(rows) != rows_identity([rows[0], {**rows[1], "answer": "5"}])
    assert rows_identity(rows) != rows_identity(rows[::-1])
    assert rows_identity(rows) != rows_identity(rows[:1])
    assert rows_identity(rows) != rows_identity([rows[0], {**rows[1], "num_ops": 2}])


# --- claim_output ----------------------------------------------------------------------------------------------------


FIELDS = {"model": {"class": "M", "weights": "ab"}, "dataset": "cd", "k": 4, "temperature": 1.0}


def test_claim_writes_the_fingerprint_before_any_output(tmp_path):
    out = tmp_path / "new" / "eval.jsonl"
    written = claim_output(out, FIELDS)
    record = tmp_path / "new" / "eval.fingerprint.json"
    assert fingerprint_path(out) == record and not out.exists()
    stored = json.loads(record.read_text())
    assert stored == written and stored["k"] == 4 and stored["code_version"] == trl_reasoning_distill.__version__


def test_the_same_run_resumes(tmp_path):
    out = tmp_path / "eval.jsonl"
    claim_output(out, FIELDS)
    out.write_text('{"id": 0}\n')
    assert claim_output(out, dict(FIELDS))["k"] == 4
    assert out.read_text() == '{"id": 0}\n'  # untouched


@pytest.mark.parametrize(("change", "field"), [
    ({"k": 8}, "k"),
    ({"model": {"class": "M", "weights": "ef"}}, "model"),
    ({"dataset": "zz"}, "dataset"),
    ({"top_p": 0.9}, "top_p"),  # a field the old run did not have
])
def test_another_run_is_refused_naming_the_field_and_the_flag(tmp_path, change, field):
    out = tmp_path / "eval.jsonl"
    claim_output(out, FIELDS)
    out.write_text('{"id": 0}\n')
    with pytest.raises(StaleOutputError, match=rf"(?s){field}: .* -> .*--overwrite") as error:
        claim_output(out, {**FIELDS, **change})
    assert [line.split(":")[0].strip() for line in str(error.value).splitlines()[1:-1]] == [field]
    assert out.read_text() == '{"id": 0}\n'  # nothing deleted


def test_another_code_version_is_refused(tmp_path, monkeypatch):
    out = tmp_path / "eval.jsonl"
    claim_output(out, FIELDS)
    monkeypatch.setattr(trl_reasoning_distill, "__version__", "9.9.9")
    with pytest.raises(StaleOutputError, match="code_version"):
        claim_output(out, FIELDS)


def test_the_flag_named_is_the_callers(tmp_path):
    out = tmp_path / "eval.jsonl"
    claim_output(out, FIELDS)
    with pytest.raises(StaleOutputError, match="overwrite=True"):
        claim_output(out, {**FIELDS, "k": 1}, flag="overwrite=True")


def test_overwrite_deletes_the_output_and_its_companions(tmp_path):
    out, companion = tmp_path / "kept.jsonl", tmp_path / "kept.all.jsonl"
    claim_output(out, FIELDS, companions=[companion])
    out.write_text('{"id": 0}\n')
    companion.write_text('{"id": 0}\n')
    claim_output(out, {**FIELDS, "k": 8}, overwrite=True, companions=[companion])
    assert not out.exists() and not companion.exists()
    assert json.loads(fingerprint_path(out).read_text())["k"] == 8
    claim_output(out, {**FIELDS, "k": 8})  # the new run resumes from now on


def test_a_folder_output_keeps_its_fingerprint_inside(tmp_path):
    out = tmp_path / "rounds"
    claim_output(out, FIELDS)
    assert (out / "fingerprint.json").exists()
    (out / "round_01").mkdir()
    with pytest.raises(StaleOutputError, match="k: 4 -> 5"):
        claim_output(out, {**FIELDS, "k": 5})
    claim_output(out, {**FIELDS, "k": 5}, overwrite=True)
    assert not (out / "round_01").exists()


def test_output_without_a_fingerprint_is_refused(tmp_path):
    out, companion = tmp_path / "old.csv", tmp_path / "old"
    out.write_text("variant,seed\nx,0\n")
    with pytest.raises(StaleOutputError, match=r"(?s)old.csv exists without a fingerprint.*--overwrite"):
        claim_output(out, FIELDS)
    companion.mkdir()
    (companion / "data.jsonl").write_text("{}\n")
    empty = tmp_path / "empty.csv"
    with pytest.raises(StaleOutputError, match="without a fingerprint"):  # a companion with content counts too
        claim_output(empty, FIELDS, companions=[companion])
    claim_output(out, FIELDS, overwrite=True)
    assert not out.exists()


def test_an_empty_output_without_a_fingerprint_is_claimed(tmp_path):
    out = tmp_path / "eval.jsonl"
    out.touch()
    claim_output(out, FIELDS)
    assert fingerprint_path(out).exists()


def test_an_unwritable_place_fails_at_once_naming_it(tmp_path):
    blocker = tmp_path / "a_file"
    blocker.write_text("")
    with pytest.raises(OSError, match=r"cannot write the output .*a_file/sub/eval.jsonl"):
        claim_output(blocker / "sub" / "eval.jsonl", FIELDS)


# --- ids -------------------------------------------------------------------------------------------------------------


def test_missing_ids_are_row_indices():
    rows = check_unique_ids([{"x": 1}, {"x": 2, "id": "b"}, {"x": 3}])
    assert [r["id"] for r in rows] == [0, "b", 2]


@pytest.mark.parametrize(("rows", "message"), [
    ([{"id": "a"}, {"id": "b"}, {"id": "a"}], r"repeats id 'a' \(rows 0 and 2\)"),
    ([{"id": 1}, {"id": "1"}], r"repeats id '1' \(rows 0 and 1\)"),  # records are keyed by str(id)
    ([{}, {"id": 0}], r"repeats id 0 \(rows 0 and 1\)"),  # a given id that is another row's index
])
def test_a_repeated_id_is_named_with_its_rows(rows, message):
    with pytest.raises(ValueError, match=message):
        check_unique_ids(rows, "the data")


# --- records checked against the rows they were made from ------------------------------------------------------------


ROWS = [{"id": "a", "prompt": "1+1=?"}, {"id": "b", "prompt": "2+2=?"}, {"id": "c", "prompt": "3+3=?"}]


def records_of(rows):
    return {str(r["id"]): {"id": r["id"], "row_hash": row_hash(r)} for r in rows}


def test_row_hash_follows_the_content_and_the_id():
    assert row_hash(ROWS[0]) == row_hash(dict(ROWS[0]))
    assert row_hash(ROWS[0]) != row_hash({**ROWS[0], "prompt": "1+2=?"})
    assert row_hash(ROWS[0]) != row_hash({**ROWS[0], "id": "z"})


def test_records_of_the_same_rows_or_a_prefix_resume(tmp_path):
    check_records_rows(records_of(ROWS), ROWS, tmp_path / "out.jsonl")
    check_records_rows(records_of(ROWS[:2]), ROWS, tmp_path / "out.jsonl")  # the data set grew


def test_a_record_of_a_changed_row_is_refused_naming_it(tmp_path):
    changed = [ROWS[0], {**ROWS[1], "prompt": "2+5=?"}, ROWS[2]]
    with pytest.raises(StaleOutputError, match=r"(?s)row 1, id 'b'.*--overwrite"):
        check_records_rows(records_of(ROWS), changed, tmp_path / "out.jsonl")


def test_a_record_of_a_row_the_data_lacks_is_refused(tmp_path):
    with pytest.raises(StaleOutputError, match=r"(?s)ids this dataset does not have \(first: 'c'\).*--resume-anew"):
        check_records_rows(records_of(ROWS), ROWS[:2], tmp_path / "out.jsonl", flag="--resume-anew")
