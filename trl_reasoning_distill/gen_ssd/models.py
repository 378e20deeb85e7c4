"""The two models of a Gen-SSD round: the teacher that proposes candidate chunks ([`ChunkProposer`]) and the
student that scores them by perplexity ([`StudentScorer`]).

- [`HFChunkProposer`]: `model.generate` continuing the KV cache of the candidates kept in the previous round (live
  prefixes all hold whole chunks, so their caches are aligned); nothing is re-encoded.
- [`GeneratorProposer`]: any [`Generator`] (e.g. vLLM with prefix caching); the prefix is sent again and the engine's
  prefix cache reuses it.
"""

from collections.abc import Sequence
from typing import Protocol

import torch
from transformers import GenerationConfig, PreTrainedModel, PreTrainedTokenizerBase

from ..generation.base import Generator, validate_sampling
from ..generation.hf import left_pad
from .selection import candidate_token_logprobs, chunk_nll, right_pad

__all__ = ["ChunkProposer", "GeneratorProposer", "HFChunkProposer", "StudentScorer"]


class ChunkProposer(Protocol):
    """The teacher side of a round: candidates for many prefixes in one call."""

    def propose(self, prefixes: list[list[int]], counts: list[int], max_new_tokens: int,
                parents: list[int] | None = None) -> list[list[int]]:
        """`counts[i]` continuations of `prefixes[i]` (prompt + accepted chunks), flat in (prefix, sample) order, each
        cut after its first EOS. `parents[i]` is the index, in the previous call's output, of the candidate whose
        acceptance made `prefixes[i]` (None on a batch's first round)."""
        ...

    def reset(self) -> None:
        """Forget the batch (drop cached state)."""
        ...


def _cut_at_eos(ids: list[int], eos_token_ids: Sequence[int]) -> list[int]:
    for t, token in enumerate(ids):
        if token in eos_token_ids:
            return ids[: t + 1]
    return ids


class HFChunkProposer:
    """[`ChunkProposer`] on `model.generate` that resumes the KV cache of the kept candidates.

    After a round, every live prefix holds exactly `chunk_size` more tokens than before (shorter chunks end their
    trajectory), so the rows of the round's cache are aligned: the rows of the kept candidates are selected (and
    repeated `n` times) with `DynamicCache.batch_select_indices`, and the next `generate` call feeds one token per row.
    A batch's first round is the same `generate` call as [`HFGenerator`] makes, so it samples the same tokens under
    the same seed.

    Args:
        model (`PreTrainedModel`): the teacher (unwrapped).
        tokenizer (`PreTrainedTokenizerBase`): its tokenizer (pad and EOS tokens needed).
        temperature, top_p, top_k: teacher decoding (`temperature=0`: greedy).
        reuse_cache (`bool`, *optional*, defaults to `True`): `False` re-encodes every prefix each round.
        eos_token_ids (`Sequence[int]`, *optional*): ids that end a chunk; the tokenizer's EOS by default.
    """

    def __init__(self, model: PreTrainedModel, tokenizer: PreTrainedTokenizerBase, temperature: float = 0.6,
                 top_p: float = 0.95, top_k: int = 30, reuse_cache: bool = True,
                 eos_token_ids: Sequence[int] | None = None):
        if tokenizer.pad_token_id is None or tokenizer.eos_token_id is None:
            raise ValueError("HFChunkProposer needs a tokenizer with both a pad token and an EOS token.")
        validate_sampling(1, 1, temperature, top_p, top_k)
        self.model, self.tokenizer, self.reuse_cache = model, tokenizer, reuse_cache
        self.eos_token_ids = list(eos_token_ids or [tokenizer.eos_token_id])
        self.temperature, self.top_p, self.top_k = temperature, top_p, top_k
        self._state: tuple[torch.Tensor, torch.Tensor, object] | None = None  # sequences, attention mask, cache

    def identity(self) -> dict:
        """The teacher's weights and tokenizer, and whether the cache is reused (a re-encoded prefix may round
        differently); the decoding is the sampler's."""
        from ..fingerprint import model_identity, tokenizer_identity

        return {"backend": "hf", "model": model_identity(self.model), "tokenizer": tokenizer_identity(self.tokenizer),
                "reuse_cache": self.reuse_cache, "eos_token_ids": self.eos_token_ids}

    def _config(self, max_new_tokens: int) -> GenerationConfig:
        """The same config as `HFGenerator.generate` (padded vocabulary rows are never sampled)."""
        sampled = self.temperature > 0
        padding_rows = list(range(len(self.tokenizer), self.model.config.get_text_config().vocab_size))
        return GenerationConfig(
            max_new_tokens=max_new_tokens, do_sample=sampled, temperature=self.temperature if sampled else None,
            top_p=self.top_p if sampled else None, top_k=self.top_k if sampled else None, repetition_penalty=1.0,
            eos_token_id=self.eos_token_ids if len(self.eos_token_ids) > 1 else self.eos_token_ids[0],
            pad_token_id=self.tokenizer.pad_token_id, use_cache=True,
            suppress_tokens=padding_rows or None, return_dict_in_generate=True,
        )

    @torch.no_grad()
    def propose(self, prefixes: list[list[int]], counts: list[int], max_new_tokens: int,
                parents: list[int] | None = None) -> list[list[int]]:
        cache = None
        if parents is None or not self.reuse_cache or self._state is None:
            rows = [prefix for prefix, n in zip(prefixes, counts, strict=True) for _ in range(n)]
            ids_RL, mask_RL = left_pad(rows, self.tokenizer.pad_token_id, self.model.device)
        else:
            sequences, mask, cache = self._state
            self._check_cached(sequences, mask, prefixes, parents)
            index_R = torch.tensor([p for p, n in zip(parents, counts, strict=True) for _ in range(n)],
                                   device=sequences.device)
            ids_RL, mask_RL = sequences[index_R], mask[index_R]
            cache.batch_select_indices(index_R)
        was_training = self.model.training
        self.model.eval()
        out = self.model.generate(input_ids=ids_RL, attention_mask=mask_RL, past_key_values=cache,
                                  generation_config=self._config(max_new_tokens), tokenizer=self.tokenizer)
        self.model.train(was_training)
        new_RC = out.sequences[:, ids_RL.shape[1] :]
        if self.reuse_cache:  # kept candidates hold no EOS and no padding: their new mask is all ones
            self._state = (out.sequences, torch.cat([mask_RL, torch.ones_like(new_RC)], dim=1), out.past_key_values)
        return [_cut_at_eos(row, self.eos_token_ids) for row in new_RC.tolist()]

    def _check_cached(self, sequences, mask, prefixes: list[list[int]], parents: list[int]) -> None:
        """Fail loudly unless row `parents[i]` of the cache holds exactly `prefixes[i]` (left-padded)."""
        expected, expected_mask = left_pad(prefixes, self.tokenizer.pad_token_id, sequences.device)
        index = torch.tensor(parents, device=sequences.device)
        width = expected.shape[1]
        got, got_mask = sequences[index], mask[index]
        same = (width <= got.shape[1] and not got_mask[:, :-width].any()
                and torch.equal(got_mask[:, -width:], expected_mask)
                and torch.equal(got[:, -width:][expected_mask.bool()], expected[expected_mask.bool()]))
        if not same:
            raise RuntimeError("the cached rows do not hold the given prefixes: pass the previous call's indices.")

    def reset(self) -> None:
        self._state = None


class GeneratorProposer:
    """[`ChunkProposer`] on any [`Generator`] (e.g. `VLLMGenerator`, whose prefix cache reuses the prefixes): one
    `continue_` call per distinct count, a single call when every live prefix draws the same K_c (the default)."""

    def __init__(self, generator: Generator, temperature: float = 0.6, top_p: float = 0.95, top_k: int = 30):
        validate_sampling(1, 1, temperature, top_p, top_k)
        self.generator = generator
        self.decoding = {"temperature": temperature, "top_p": top_p, "top_k": top_k}

    def identity(self) -> dict:
        """The wrapped generator's identity (its `identity()` when it has one)."""
        from ..fingerprint import model_identity

        return {"backend": "generator", "generator": model_identity(self.generator)}

    def propose(self, prefixes: list[list[int]], counts: list[int], max_new_tokens: int,
                parents: list[int] | None = None) -> list[list[int]]:
        groups: list[list[list[int]]] = [[] for _ in prefixes]
        for n in sorted(set(counts)):
            members = [i for i, c in enumerate(counts) if c == n]
            samples = self.generator.continue_([prefixes[i] for i in members], n=n, max_new_tokens=max_new_tokens,
                                               **self.decoding)
            for i, group in zip(members, samples, strict=True):
                if any(s.finish_reason == "stop" for s in group):
                    raise ValueError("a chunk ended on a stop string; Gen-SSD chunks end on EOS or length only.")
                groups[i] = [s.token_ids for s in group]
        return [ids for group in groups for ids in group]

    def reset(self) -> None:
        """Nothing to drop: the engine's prefix cache manages itself."""


class StudentScorer:
    """Summed student NLL of each candidate given its context (spec §2.4): one teacher-forced forward per
    `batch_size` candidates, fp32 log-softmax, candidate tokens only (EOS included). Contexts are left-padded with
    matching `position_ids` and candidates right-padded, so the logits of every candidate are the last columns; the
    model runs in eval mode without gradients and gets its train/eval mode back after. `no_grad` rather than the
    spec's `inference_mode` (§9 item 15): the scored model is the student being trained, and under FSDP2 or ZeRO-3
    its forward gathers parameters into buffers the training step reuses, where inference tensors cannot enter
    autograd.
    """

    def __init__(self, model: PreTrainedModel, pad_token_id: int, batch_size: int = 16):
        if batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {batch_size}.")
        self.model, self.pad_token_id, self.batch_size = model, pad_token_id, batch_size

    def identity(self) -> dict:
        """The scoring model's weights and the candidates per forward pass."""
        from ..fingerprint import model_identity

        return {"model": model_identity(self.model), "batch_size": self.batch_size}

    @torch.no_grad()
    def score(self, contexts: list[list[int]], continuations: list[list[int]]) -> tuple[torch.Tensor, torch.Tensor]:
        """`(nll_M, tokens_M)`: float64 summed NLL and long token count of each continuation."""
        nll_M = torch.zeros(len(contexts), dtype=torch.float64)
        tokens_M = torch.zeros(len(contexts), dtype=torch.long)
        order = sorted(range(len(contexts)), key=lambda m: len(contexts[m]) + len(continuations[m]))  # less padding
        was_training = self.model.training
        self.model.eval()
        for start in range(0, len(order), self.batch_size):
            index = order[start : start + self.batch_size]
            nll, tokens = self._score_batch([contexts[m] for m in index], [continuations[m] for m in index])
            nll_M[index], tokens_M[index] = nll.double().cpu(), tokens.cpu()
        self.model.train(was_training)
        return nll_M, tokens_M

    def _score_batch(self, contexts: list[list[int]], continuations: list[list[int]]):
        context_ids, context_mask = left_pad(contexts, self.pad_token_id, self.model.device)
        ids_ML, mask_ML = right_pad(continuations, self.pad_token_id, self.model.device)
        attention = torch.cat([context_mask, mask_ML.long()], dim=1)
        positions = (attention.cumsum(dim=-1) - 1).clamp_min(0)  # left padding must not shift the positions
        logits_MLV = self.model(input_ids=torch.cat([context_ids, ids_ML], dim=1), attention_mask=attention,
                                position_ids=positions, logits_to_keep=ids_ML.shape[1] + 1).logits[:, :-1]
        return chunk_nll(candidate_token_logprobs(logits_MLV, ids_ML, mask_ML), mask_ML)
