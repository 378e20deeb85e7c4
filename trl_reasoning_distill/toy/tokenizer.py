"""Character-level tokenizer of the toy world, built with `tokenizers` and saved as a `PreTrainedTokenizerFast`.

Every printable ASCII character is one token; `<think>`/`</think>`, the chat markers and role names are single
tokens. The chat template renders a prompt that is a prefix of prompt+answer (DPO's prefix logic needs this).

It is a byte-level BPE without merges, in Qwen2's pre-tokenisation: the toy models are Qwen2 models, and
`AutoTokenizer.from_pretrained` on a saved toy run (model and tokenizer in one folder) always rebuilds a
`Qwen2Tokenizer` from the vocabulary, whatever `tokenizer_config.json` says. In byte-level form (space is `Ġ`, newline
`Ċ`) that rebuild encodes and decodes exactly like the tokenizer saved, so a reloaded run scores as it did in-process.
"""

import string

from tokenizers import Regex, Tokenizer, decoders, models, normalizers, pre_tokenizers
from transformers import PreTrainedTokenizerFast
from transformers.convert_slow_tokenizer import bytes_to_unicode
from transformers.models.qwen2.tokenization_qwen2 import PRETOKENIZE_REGEX

PAD, EOS, IM_START = "<|endoftext|>", "<|im_end|>", "<|im_start|>"
THINK_TOKENS = ("<think>", "</think>")
ROLE_TOKENS = ("user", "assistant")  # one token each: shorter sequences, faster toy training
CHAT_TEMPLATE = (
    "{% for message in messages %}<|im_start|>{{ message['role'] }}\n{{ message['content'] }}<|im_end|>\n"
    "{% endfor %}{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)
MAX_LENGTH = 512


def build_tokenizer() -> PreTrainedTokenizerFast:
    """The toy tokenizer: special tokens, the think markers, the chat roles, then every printable ASCII character."""
    byte_to_unicode = bytes_to_unicode()  # byte-level form: " " -> "Ġ", "\n" -> "Ċ", other printables unchanged
    characters = [byte_to_unicode[ord(c)] for c in string.printable if c not in "\t\r\x0b\x0c"]
    alphabet = [PAD, EOS, IM_START, *THINK_TOKENS, *ROLE_TOKENS, *characters]
    vocab = {token: i for i, token in enumerate(dict.fromkeys(alphabet))}
    tok = Tokenizer(models.BPE(vocab=vocab, merges=[], continuing_subword_prefix="", end_of_word_suffix="",
                               fuse_unk=False, byte_fallback=False))  # no merges: one token per character
    tok.normalizer = normalizers.NFC()
    tok.pre_tokenizer = pre_tokenizers.Sequence([
        pre_tokenizers.Split(Regex(PRETOKENIZE_REGEX), behavior="isolated"),
        pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False),
    ])
    tok.decoder = decoders.ByteLevel()
    tok.add_special_tokens([PAD, EOS, IM_START])
    tok.add_tokens([*THINK_TOKENS, *ROLE_TOKENS])  # not special: decode(skip_special_tokens=True) keeps them
    hf = PreTrainedTokenizerFast(
        tokenizer_object=tok, eos_token=EOS, pad_token=PAD, padding_side="left", model_max_length=MAX_LENGTH
    )
    hf.chat_template = CHAT_TEMPLATE
    return hf
