"""Hugging Face `generate` backend: all samples of all prompts in batched calls, KV cache on, stop on EOS."""

import torch
from transformers import GenerationConfig, PreTrainedModel, PreTrainedTokenizerBase

from .base import Sample, validate_sampling


def left_pad(sequences: list[list[int]], pad_id: int, device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
    """`(ids_BL, attention_mask_BL)` with every sequence right-aligned (left padding)."""
    width = max(len(s) for s in sequences)
    ids_BL = torch.full((len(sequences), width), pad_id, dtype=torch.long)
    mask_BL = torch.zeros((len(sequences), width), dtype=torch.long)
    for i, seq in enumerate(sequences):
        if seq:
            ids_BL[i, width - len(seq) :] = torch.tensor(seq)
            mask_BL[i, width - len(seq) :] = 1
    return ids_BL.to(device), mask_BL.to(device)


class HFGenerator:
    """[`Generator`] over a transformers causal LM.

    Args:
        model (`PreTrainedModel`): the model to sample from (unwrapped: not DDP/FSDP-wrapped).
        tokenizer (`PreTrainedTokenizerBase`): decodes samples and matches stop strings; needs pad and EOS tokens.
        batch_size (`int`, *optional*, defaults to `256`): most sequences (prompts x n) per `generate` call.
    """

    def __init__(self, model: PreTrainedModel, tokenizer: PreTrainedTokenizerBase, batch_size: int = 256):
        if tokenizer.pad_token_id is None or tokenizer.eos_token_id is None:
            raise ValueError("HFGenerator needs a tokenizer with both a pad token and an EOS token.")
        self.model, self.tokenizer, self.batch_size = model, tokenizer, batch_size

    def identity(self) -> dict:
        """What decides the samples: the backend, the model's weights, the tokenizer and the sequences per
        `generate` call (the batching orders the random draws)."""
        from ..fingerprint import model_identity, tokenizer_identity

        return {"backend": "hf", "model": model_identity(self.model), "tokenizer": tokenizer_identity(self.tokenizer),
                "batch_size": self.batch_size}

    def generate(
        self,
        prompt_ids: list[list[int]],
        n: int = 1,
        max_new_tokens: int = 256,
        temperature: float = 1.0,
        top_p: float = 1.0,
        top_k: int = 0,
        stop: list[str] | None = None,
        return_logprobs: bool = False,
    ) -> list[list[Sample]]:
        validate_sampling(n, max_new_tokens, temperature, top_p, top_k)
        if any(len(p) == 0 for p in prompt_ids):
            raise ValueError("every prompt needs at least one token; got an empty prompt.")
        config = GenerationConfig(
            max_new_tokens=max_new_tokens,
            do_sample=temperature > 0,
            temperature=temperature if temperature > 0 else None,
            top_p=top_p if temperature > 0 else None,
            top_k=top_k if temperature > 0 else None,
            repetition_penalty=1.0,  # else unset fields are filled from the model's generation_config.json
            eos_token_id=self.tokenizer.eos_token_id,
            pad_token_id=self.tokenizer.pad_token_id,
            use_cache=True,
            # embedding rows past the tokenizer (padded vocabularies) are never sampled
            suppress_tokens=list(range(len(self.tokenizer), self.model.config.get_text_config().vocab_size)) or None,
            stop_strings=stop or None,
        )
        flat = [p for p in prompt_ids for _ in range(n)]  # sample j of prompt i sits at i * n + j
        samples: list[Sample] = []
        for start in range(0, len(flat), self.batch_size):
            samples += self._generate_batch(flat[start : start + self.batch_size], config, stop, return_logprobs)
        return [samples[i * n : (i + 1) * n] for i in range(len(prompt_ids))]

    # Chunk continuation reuses the same path: a prefix is a prompt whose completion has started.
    continue_ = generate

    @torch.no_grad()
    def _generate_batch(
        self, prompts: list[list[int]], config: GenerationConfig, stop: list[str] | None, return_logprobs: bool
    ) -> list[Sample]:
        ids_BL, mask_BL = left_pad(prompts, self.tokenizer.pad_token_id, self.model.device)
        was_training = self.model.training
        self.model.eval()
        out = self.model.generate(
            input_ids=ids_BL,
            attention_mask=mask_BL,
            generation_config=config,
            tokenizer=self.tokenizer,  # matches `stop_strings`
            return_dict_in_generate=True,
            output_logits=return_logprobs,
        )
        self.model.train(was_training)
        new_BC = out.sequences[:, ids_BL.shape[1] :]
        logprobs_BC = None
        if return_logprobs:
            logits_BCV = torch.stack(out.logits, dim=1).float()
            logprobs_BC = logits_BCV.log_softmax(-1).gather(-1, new_BC.unsqueeze(-1)).squeeze(-1)
        return [self._to_sample(new_BC[b], None if logprobs_BC is None else logprobs_BC[b], stop) for b in
                range(new_BC.shape[0])]

    def _to_sample(self, new_C: torch.Tensor, logprobs_C: torch.Tensor | None, stop: list[str] | None) -> Sample:
        ids = new_C.tolist()
        eos, pad = self.tokenizer.eos_token_id, self.tokenizer.pad_token_id
        reason = "length"
        if eos in ids:
            ids, reason = ids[: ids.index(eos) + 1], "eos"
        while ids and ids[-1] == pad and pad != eos:  # finished early on a stop string: padding follows
            ids.pop()
        text = self.tokenizer.decode(ids, skip_special_tokens=True)
        hits = [text.index(s) for s in stop or [] if s in text]
        if hits:
            text, reason = text[: min(hits)], "stop"
        logprobs = None if logprobs_C is None else logprobs_C[: len(ids)].tolist()
        return Sample(token_ids=ids, text=text, finish_reason=reason, logprobs=logprobs)
