"""vLLM backend: an in-process `vllm.LLM` (colocate) or a `trl vllm-serve` server reached through TRL's `VLLMClient`.

vLLM is imported inside the functions that need it, so this module imports without it. Turning vLLM's outputs into
[`Sample`]s is done by two pure functions (`_to_samples` for `vllm.RequestOutput`s, `_server_to_samples` for the
client's response) that are tested without vLLM. Texts are decoded here with the caller's tokenizer, exactly as
[`HFGenerator`] does, so both backends agree on `text` and `finish_reason`.
"""

import copy
import importlib.util
from collections.abc import Collection, Sequence
from typing import Any

from transformers import PreTrainedTokenizerBase

from .base import Sample, validate_sampling

INSTALL_HINT = "pip install 'trl-reasoning-distill[vllm]'"
PADDING_BIAS = -100.0  # the most negative bias vLLM's server accepts; a probability below exp(-100) is never sampled


def _require_vllm() -> None:
    """Raise `ImportError` naming the extra to install when vLLM is missing."""
    if importlib.util.find_spec("vllm") is None:
        raise ImportError(f"VLLMGenerator needs vLLM, which is not installed: {INSTALL_HINT}")


class VLLMGenerator:
    """[`Generator`] on vLLM, built with [`VLLMGenerator.colocate`] (an engine in this process) or
    [`VLLMGenerator.server`] (a `trl vllm-serve` process, through TRL's `VLLMClient`).

    Logprobs are those vLLM reports. A colocated engine keeps vLLM's default `logprobs_mode="raw_logprobs"`: the
    log-softmax of the model's raw logits (temperature 1), as [`HFGenerator`] returns them. `trl vllm-serve` starts
    vLLM with `--logprobs-mode processed_logprobs`, so a server's logprobs include the sampling temperature.

    Args:
        tokenizer (`PreTrainedTokenizerBase`):
            Tokenizer of the served model: decodes samples and matches stop strings. Needs an EOS token.
        llm (`vllm.LLM`, *optional*):
            In-process engine (colocate mode). Exactly one of `llm` and `client` is given.
        client (`VLLMClient`, *optional*):
            Client of a `trl vllm-serve` server (server mode).
        vocab_size (`int`, *optional*):
            Rows of the model's embedding matrix. Ids from `len(tokenizer)` up to it (padded vocabularies) get a logit
            bias of -100, so they are not sampled. Read from the engine in colocate mode; in server mode, pass it when
            the vocabulary is padded.
        eos_token_ids (`Collection[int]`, *optional*):
            Ids the model stops on, used in server mode (whose responses carry no finish reason) to tell `"eos"` from
            `"length"`. Defaults to the tokenizer's EOS; add the `eos_token_id`s of the model's
            `generation_config.json`, which vLLM also stops on.
    """

    def __init__(
        self,
        tokenizer: PreTrainedTokenizerBase,
        llm: Any = None,
        client: Any = None,
        vocab_size: int | None = None,
        eos_token_ids: Collection[int] | None = None,
    ):
        if (llm is None) == (client is None):
            raise ValueError("VLLMGenerator needs exactly one of `llm` (colocate) and `client` (server).")
        if tokenizer.eos_token_id is None:
            raise ValueError("VLLMGenerator needs a tokenizer with an EOS token.")
        self.tokenizer, self.llm, self.client = tokenizer, llm, client
        self.eos_token_ids = {tokenizer.eos_token_id, *(eos_token_ids or ())}
        if vocab_size is None and llm is not None:
            vocab_size = llm.llm_engine.model_config.get_vocab_size()
        # embedding rows past the tokenizer (padded vocabularies) are never sampled. A bias on those few rows, not an
        # `allowed_token_ids` list of the whole vocabulary, which vLLM would check and copy for every request.
        padding_rows = range(len(tokenizer), vocab_size or 0)
        self.padding_bias = {token_id: PADDING_BIAS for token_id in padding_rows} or None

    def identity(self) -> dict:
        """What decides the samples: the backend and mode, the served model (a colocated engine's model path or Hub
        id, revision, dtype and seed, with a hash of its weight files when they are local; a server's `base_url`), the
        tokenizer and the stop ids. Weights a trainer synced into the engine since it started are not seen."""
        from ..fingerprint import tokenizer_identity

        out = {"backend": "vllm", "tokenizer": tokenizer_identity(self.tokenizer),
               "eos_token_ids": sorted(self.eos_token_ids), "padding_rows": len(self.padding_bias or ())}
        if self.llm is None:
            return {**out, "mode": "server", "base_url": getattr(self.client, "base_url", None)}
        config = self.llm.llm_engine.model_config
        return {**out, "mode": "colocate", "model": str(config.model), "revision": getattr(config, "revision", None),
                "dtype": str(getattr(config, "dtype", None)), "seed": getattr(config, "seed", None),
                "weights": weight_files_identity(config.model)}

    @classmethod
    def colocate(
        cls,
        model_name_or_path: str,
        tokenizer: PreTrainedTokenizerBase,
        gpu_memory_utilization: float = 0.3,
        enable_prefix_caching: bool = True,
        eos_token_ids: Collection[int] | None = None,
        **llm_kwargs,
    ) -> "VLLMGenerator":
        """Build a `vllm.LLM` in this process.

        Args:
            model_name_or_path (`str`):
                Model to serve: a Hub id or a local directory (vLLM loads weights from disk, so save in-memory models
                first).
            tokenizer (`PreTrainedTokenizerBase`):
                Tokenizer of that model.
            gpu_memory_utilization (`float`, *optional*, defaults to `0.3`):
                Share of GPU memory vLLM takes (weights and KV cache), as TRL's `vllm_gpu_memory_utilization`; leave
                room for training when it shares the GPU.
            enable_prefix_caching (`bool`, *optional*, defaults to `True`):
                Reuse the KV cache of shared prefixes (the `n` samples of a prompt, chunk continuations).
            eos_token_ids (`Collection[int]`, *optional*):
                Ids the model stops on besides the tokenizer's EOS (the `eos_token_id`s of its `generation_config`,
                which vLLM reads and stops on itself): samples ending with one are `"eos"`.
            **llm_kwargs:
                Passed to `vllm.LLM` (`dtype`, `max_model_len`, `seed`, `enforce_eager`, `tensor_parallel_size`,
                `distributed_executor_backend="external_launcher"` under a multi-process launcher, ...).
        """
        _require_vllm()
        from vllm import LLM

        llm = LLM(
            model=model_name_or_path,
            gpu_memory_utilization=gpu_memory_utilization,
            enable_prefix_caching=enable_prefix_caching,
            **llm_kwargs,
        )
        return cls(tokenizer, llm=llm, eos_token_ids=eos_token_ids)

    @classmethod
    def server(
        cls,
        base_url: str,
        tokenizer: PreTrainedTokenizerBase,
        vocab_size: int | None = None,
        eos_token_ids: Collection[int] | None = None,
        connection_timeout: float = 240.0,
    ) -> "VLLMGenerator":
        """Connect to a running `trl vllm-serve` (or `vllm serve`) process.

        Args:
            base_url (`str`):
                Server address, e.g. `"http://localhost:8000"`.
            tokenizer (`PreTrainedTokenizerBase`):
                Tokenizer of the served model.
            vocab_size (`int`, *optional*):
                Rows of the served model's embedding matrix; see the class arguments.
            eos_token_ids (`Collection[int]`, *optional*):
                Ids the served model stops on; see the class arguments.
            connection_timeout (`float`, *optional*, defaults to `240.0`):
                Seconds to wait for the server to come up, as TRL's `vllm_server_timeout`.
        """
        _require_vllm()
        from .._trl import VLLMClient

        client = VLLMClient(base_url=base_url, connection_timeout=connection_timeout)
        return cls(tokenizer, client=client, vocab_size=vocab_size, eos_token_ids=eos_token_ids)

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
        if not prompt_ids:
            return []
        greedy = temperature == 0
        # vLLM rejects n > 1 with greedy decoding, whose samples are all the same: sample once, copy n times
        params = _sampling_params(
            n=1 if greedy else n,
            max_new_tokens=max_new_tokens,
            temperature=temperature,
            top_p=1.0 if greedy else top_p,
            top_k=0 if greedy else top_k,
            stop=stop,
            return_logprobs=return_logprobs,
            logit_bias=self.padding_bias,
        )
        backend = self._generate_colocate if self.llm is not None else self._generate_server
        groups = backend(prompt_ids, params)
        if len(groups) != len(prompt_ids):
            raise RuntimeError(f"vLLM answered {len(groups)} prompts out of {len(prompt_ids)}.")
        if greedy and n > 1:
            groups = [[copy.deepcopy(group[0]) for _ in range(n)] for group in groups]
        return groups

    # Chunk continuation reuses the same path: a prefix is a prompt whose completion has started.
    continue_ = generate

    def _generate_colocate(self, prompt_ids: list[list[int]], params: dict[str, Any]) -> list[list[Sample]]:
        from vllm import SamplingParams

        outputs = self.llm.generate(
            [{"prompt_token_ids": ids} for ids in prompt_ids],  # as TRL's VLLMGeneration: no re-tokenization
            sampling_params=SamplingParams(**params),
            use_tqdm=False,
        )
        return_logprobs = params["logprobs"] is not None
        return _to_samples(
            outputs, params["n"], self.tokenizer, params.get("stop"), self.eos_token_ids, return_logprobs
        )

    def _generate_server(self, prompt_ids: list[list[int]], params: dict[str, Any]) -> list[list[Sample]]:
        params = dict(params)
        named = {key: params.pop(key) for key in ("n", "temperature", "top_p", "top_k", "max_tokens", "logprobs")}
        response = self.client.generate(prompts=prompt_ids, **named, generation_kwargs=params or None)
        return_logprobs = named["logprobs"] is not None
        return _server_to_samples(
            response, named["n"], self.tokenizer, params.get("stop"), self.eos_token_ids, return_logprobs
        )


def teacher_generator_from_config(args, teacher, tokenizer: PreTrainedTokenizerBase,
                                  num_processes: int = 1) -> "VLLMGenerator | None":
    """The teacher's sampler that `args` (a config with the `TeacherGenerationConfig` fields) asks for: None for
    `teacher_generation_backend="hf"` (the caller's HF `generate`), else a [`VLLMGenerator`] on the server at
    `teacher_model_server_url`, or on an engine colocated in this process (one per process under a launcher).

    Args:
        teacher (`str`, `PreTrainedModel` or `None`): the teacher's Hub id or folder, or the loaded teacher (its
            `name_or_path` is what a colocated engine loads; its embedding rows and `generation_config` EOS ids
            give the padded rows that are never sampled and the stop ids).
    """
    if getattr(args, "teacher_generation_backend", "hf") == "hf":
        return None
    loaded = None if teacher is None or isinstance(teacher, str) else teacher
    path = teacher if isinstance(teacher, str) else getattr(loaded, "name_or_path", None)
    eos = None if loaded is None else getattr(loaded.generation_config, "eos_token_id", None)
    eos = [] if eos is None else [eos] if isinstance(eos, int) else list(eos)
    if args.teacher_model_server_url is not None:
        rows = None if loaded is None else loaded.config.get_text_config().vocab_size
        return VLLMGenerator.server(args.teacher_model_server_url, tokenizer, vocab_size=rows, eos_token_ids=eos,
                                    connection_timeout=args.teacher_vllm_server_timeout)
    if not path:
        raise ValueError("teacher_generation_backend='vllm' without teacher_model_server_url starts a vLLM engine "
                         "from the teacher's path, and this teacher has none: pass it as a Hub id or folder, or "
                         "set teacher_model_server_url.")
    llm_kwargs = {"tensor_parallel_size": args.teacher_vllm_tensor_parallel_size,
                  "max_model_len": args.teacher_vllm_max_model_length}
    if num_processes > 1:  # one engine per process, as TRL's colocate mode
        llm_kwargs["distributed_executor_backend"] = "external_launcher"
    return VLLMGenerator.colocate(path, tokenizer, gpu_memory_utilization=args.teacher_vllm_gpu_memory_utilization,
                                  eos_token_ids=eos, **llm_kwargs)


def weight_files_identity(path: str, sample_bytes: int = 1 << 16) -> str | None:
    """Hash of the weight files of a local model directory (names, sizes and `sample_bytes` from the start, middle
    and end of each: cheap at any size, and a re-saved checkpoint changes it); None for a Hub id."""
    import hashlib
    from pathlib import Path

    directory = Path(path)
    if not directory.is_dir():
        return None
    hasher = hashlib.sha256()
    for file in sorted(p for p in directory.iterdir() if p.suffix in (".safetensors", ".bin", ".pt", ".gguf")):
        size = file.stat().st_size
        hasher.update(f"{file.name}:{size}".encode())
        with open(file, "rb") as handle:
            for offset in (0, max(0, size // 2 - sample_bytes // 2), max(0, size - sample_bytes)):
                handle.seek(offset)
                hasher.update(handle.read(sample_bytes))
    return hasher.hexdigest()[:16]


def _sampling_params(
    n: int,
    max_new_tokens: int,
    temperature: float,
    top_p: float,
    top_k: int,
    stop: list[str] | None,
    return_logprobs: bool,
    logit_bias: dict[int, float] | None,
) -> dict[str, Any]:
    """`vllm.SamplingParams` fields (also the request body of the server's `/v1/completions`)."""
    params = {
        "n": n,
        "temperature": temperature,
        "top_p": top_p,
        "top_k": top_k,  # 0 = off, as in TRL's calls
        "max_tokens": max_new_tokens,
        "logprobs": 0 if return_logprobs else None,  # 0: the sampled token's logprob only
    }
    if stop:
        params["stop"] = list(stop)
    if logit_bias:
        params["logit_bias"] = logit_bias
    return params


def _make_sample(
    token_ids: list[int],
    logprobs: list[float] | None,
    tokenizer: PreTrainedTokenizerBase,
    stop: Sequence[str] | None,
    finish_reason: str,
) -> Sample:
    """Decode `token_ids` (special tokens skipped) and cut the text before the first stop string, as `HFGenerator`."""
    text = tokenizer.decode(token_ids, skip_special_tokens=True)
    hits = [text.index(s) for s in stop or [] if s in text]
    if hits:
        text, finish_reason = text[: min(hits)], "stop"
    return Sample(token_ids=token_ids, text=text, finish_reason=finish_reason, logprobs=logprobs)


def _to_samples(
    outputs: Sequence[Any],
    n: int,
    tokenizer: PreTrainedTokenizerBase,
    stop: Sequence[str] | None,
    eos_token_ids: Collection[int],
    return_logprobs: bool,
) -> list[list[Sample]]:
    """`vllm.RequestOutput`s (one per prompt, `n` `CompletionOutput`s each) to samples grouped by prompt.

    vLLM's `finish_reason` is `"stop"` for both EOS and stop strings; `stop_reason` tells them apart (the matched
    string, or `None` / a stop-token id for EOS). A sample that ends with EOS exactly at `max_tokens` is `"eos"`, as in
    `HFGenerator`.
    """
    groups = []
    for request in outputs:
        if len(request.outputs) != n:
            raise RuntimeError(f"vLLM returned {len(request.outputs)} samples for a prompt; expected {n}.")
        group = []
        for completion in request.outputs:
            ids = list(completion.token_ids)
            if completion.finish_reason == "length":
                reason = "eos" if ids and ids[-1] in eos_token_ids else "length"
            elif completion.finish_reason == "stop":
                reason = "stop" if isinstance(completion.stop_reason, str) else "eos"
            else:
                raise RuntimeError(f"vLLM did not finish a sample: finish_reason={completion.finish_reason!r}.")
            logprobs = None
            if return_logprobs:
                if completion.logprobs is None:
                    raise RuntimeError("vLLM returned no logprobs although they were asked for.")
                logprobs = [position[t].logprob for t, position in zip(ids, completion.logprobs, strict=True)]
            group.append(_make_sample(ids, logprobs, tokenizer, stop, reason))
        groups.append(group)
    return groups


def _server_to_samples(
    response: dict[str, Any],
    n: int,
    tokenizer: PreTrainedTokenizerBase,
    stop: Sequence[str] | None,
    eos_token_ids: Collection[int],
    return_logprobs: bool,
) -> list[list[Sample]]:
    """`VLLMClient.generate`'s response to samples grouped by prompt.

    The response holds `completion_ids` (prompt-major: the `n` samples of a prompt are consecutive) and, per token,
    `logprobs` / `logprob_token_ids` ranked by probability (the sampled token is always among them), but no finish
    reason: a sample cut by a stop string is found in its text, one that ends with an EOS id is `"eos"`, and any
    other ran to `max_tokens`.
    """
    completions = response["completion_ids"]
    if len(completions) % n:
        raise RuntimeError(f"the vLLM server returned {len(completions)} samples, not a multiple of n={n}.")
    if return_logprobs and response.get("logprobs") is None:
        raise RuntimeError("the vLLM server returned no logprobs although they were asked for.")
    samples = []
    for i, ids in enumerate(completions):
        ids = list(ids)
        logprobs = None
        if return_logprobs:
            ranked_logprobs, ranked_ids = response["logprobs"][i], response["logprob_token_ids"][i]
            logprobs = [lps[tids.index(t)] for t, lps, tids in zip(ids, ranked_logprobs, ranked_ids, strict=True)]
        reason = "eos" if ids and ids[-1] in eos_token_ids else "length"
        samples.append(_make_sample(ids, logprobs, tokenizer, stop, reason))
    return [samples[i * n : (i + 1) * n] for i in range(len(samples) // n)]
