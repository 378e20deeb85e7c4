"""The toy tokenizer survives a save and a reload with `AutoTokenizer` beside a toy model, as a trainer saves a run.

`AutoTokenizer` rebuilds a `Qwen2Tokenizer` for any folder whose model is a Qwen2 (it ignores `tokenizer_class`
there); a tokenizer that did not survive that rebuild dropped every space and newline, and a reloaded run scored
near zero.
"""

import string

import pytest
from transformers import AutoTokenizer

from trl_reasoning_distill.toy import load_toy_student, load_toy_tokenizer, sample_problems, solution
from trl_reasoning_distill.toy.task import STYLES

PRINTABLE = "".join(c for c in string.printable if c not in "\t\r\x0b\x0c")


@pytest.fixture(scope="module")
def reloaded(tmp_path_factory):
    folder = tmp_path_factory.mktemp("run")
    load_toy_tokenizer().save_pretrained(folder)
    load_toy_student().save_pretrained(folder)
    return AutoTokenizer.from_pretrained(folder)


def toy_texts() -> list[str]:
    tokenizer = load_toy_tokenizer()
    texts = [PRINTABLE, " leading space", "two  spaces\n\nand newlines \n", "We need 3+4.\nSo the answer is 7."]
    for problem in sample_problems("train", 25, seed=0, min_ops=2, max_ops=6):
        for style in STYLES:
            messages = [{"role": "user", "content": problem.prompt},
                        {"role": "assistant", "content": solution(problem, style)}]
            texts.append(tokenizer.apply_chat_template(messages, tokenize=False))
    return texts


def test_reloaded_tokenizer_encodes_and_decodes_like_the_saved_one(reloaded):
    tokenizer = load_toy_tokenizer()
    assert len(reloaded) == len(tokenizer)
    for text in toy_texts():
        ids = tokenizer(text, add_special_tokens=False)["input_ids"]
        assert reloaded(text, add_special_tokens=False)["input_ids"] == ids, text
        assert reloaded.decode(ids) == tokenizer.decode(ids) == text


def test_every_printable_character_is_one_token():
    tokenizer = load_toy_tokenizer()
    for character in PRINTABLE:
        assert len(tokenizer(character, add_special_tokens=False)["input_ids"]) == 1, repr(character)


def test_reloaded_chat_template_and_special_tokens(reloaded):
    tokenizer = load_toy_tokenizer()
    messages = [{"role": "user", "content": "12+7=?"}]
    assert reloaded.apply_chat_template(messages, add_generation_prompt=True) == tokenizer.apply_chat_template(
        messages, add_generation_prompt=True)
    assert (reloaded.eos_token_id, reloaded.pad_token_id) == (tokenizer.eos_token_id, tokenizer.pad_token_id)
