"""Character-level tokenizer of the toy world, built with `tokenizers` and saved as a `PreTrainedTokenizerFast`.

Every printable ASCII character is one token; `<think>`/`</think>`, the chat markers and role names are single
tokens. The chat
template renders a prompt that is a prefix of prompt+answer (DPO's prefix logic needs this).
"""

import string

from tokenizers import Regex, Tokenizer, decoders, models, pre_tokenizers
from transformers import PreTrainedTokenizerFast

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
    characters = [c for c in string.printable if c not in "\t\r\x0b\x0c"]
    alphabet = [PAD, EOS, IM_START, *THINK_TOKENS, *ROLE_TOKENS, *characters]
    vocab = {token: i for i, token in enumerate(dict.fromkeys(alphabet))}
    tok = Tokenizer(models.WordLevel(vocab=vocab, unk_token="?"))
    tok.pre_tokenizer = pre_tokenizers.Split(Regex(r"[\s\S]"), behavior="isolated")  # one token per character
    tok.decoder = decoders.Fuse()
    tok.add_special_tokens([PAD, EOS, IM_START])
    tok.add_tokens([*THINK_TOKENS, *ROLE_TOKENS])  # not special: decode(skip_special_tokens=True) keeps them
    hf = PreTrainedTokenizerFast(
        tokenizer_object=tok, eos_token=EOS, pad_token=PAD, padding_side="left", model_max_length=MAX_LENGTH
    )
    hf.chat_template = CHAT_TEMPLATE
    return hf
