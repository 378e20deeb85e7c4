"""Teacher and student builders of the toy world (Qwen2 architecture, random init).

Both embedding matrices are padded to more rows than the tokenizer has, and to different sizes (as Qwen2.5-7B's 152064
vs 1.5B's 151936 rows), so vocabulary alignment is exercised by every method.
"""

import torch
from transformers import PreTrainedTokenizerBase, Qwen2Config, Qwen2ForCausalLM

TEACHER_SHAPE = {"hidden_size": 128, "intermediate_size": 256, "num_hidden_layers": 4, "vocab_multiple": 64}
STUDENT_SHAPE = {"hidden_size": 96, "intermediate_size": 256, "num_hidden_layers": 3, "vocab_multiple": 16}


def padded_vocab_size(n_tokens: int, multiple: int) -> int:
    """Smallest multiple of `multiple` strictly larger than `n_tokens` (always at least one padding row)."""
    return (n_tokens // multiple + 1) * multiple


def build_model(
    tokenizer: PreTrainedTokenizerBase,
    hidden_size: int,
    intermediate_size: int,
    num_hidden_layers: int,
    vocab_multiple: int,
    seed: int = 0,
) -> Qwen2ForCausalLM:
    """A randomly initialised Qwen2 causal LM sized for the toy task, with EOS/pad set for generation."""
    torch.manual_seed(seed)
    config = Qwen2Config(
        vocab_size=padded_vocab_size(len(tokenizer), vocab_multiple),
        hidden_size=hidden_size,
        intermediate_size=intermediate_size,
        num_hidden_layers=num_hidden_layers,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=512,
        tie_word_embeddings=True,
        pad_token_id=tokenizer.pad_token_id,
        eos_token_id=tokenizer.eos_token_id,
        bos_token_id=None,
    )
    model = Qwen2ForCausalLM(config)
    model.generation_config.eos_token_id = tokenizer.eos_token_id
    model.generation_config.pad_token_id = tokenizer.pad_token_id
    return model


def build_teacher(tokenizer: PreTrainedTokenizerBase, seed: int = 0) -> Qwen2ForCausalLM:
    return build_model(tokenizer, seed=seed, **TEACHER_SHAPE)


def build_student(tokenizer: PreTrainedTokenizerBase, seed: int = 0) -> Qwen2ForCausalLM:
    return build_model(tokenizer, seed=seed, **STUDENT_SHAPE)
