"""A CPU stand-in for the parts of vLLM that TRL's `VLLMGeneration` and our `VLLMGenerator` call, backed by Hugging
Face `generate` on a copy of the served model, so the trainers' vLLM paths run end to end without a GPU.

What is faked, and only that:
- `vllm.LLM(model=..., **engine_args)`: `generate(prompts, sampling_params, use_tqdm)`, `sleep(level)`,
  `wake_up(tags)`, `reset_prefix_cache()`, `llm_engine.model_config` (`get_vocab_size()`, `model`, `revision`,
  `dtype`, `seed`) and `llm_engine.model_executor.driver_worker.model_runner.model.load_weights(weights)` (colocated
  weight sync). Sleep level 2 discards the weights (they become NaN, as freed memory would be garbage), so a
  generation that was not preceded by a weight sync shows.
- `vllm.SamplingParams`: `n`, `temperature` (0 = greedy), `top_p`, `top_k` (0 or -1 = off), `min_p` (0 only),
  `repetition_penalty`, `max_tokens`, `logprobs`, `stop`, `stop_token_ids`, `logit_bias` (clamped to [-100, 100] as
  vLLM does), `allowed_token_ids`; anything else is refused, so a new argument cannot pass silently.
- outputs shaped like `vllm.RequestOutput` / `CompletionOutput` / `Logprob`.
- `FakeVLLMClient`, in place of `trl.generation.vllm_client.VLLMClient` (the fixture patches the class): the
  server's `generate` (request body as `VLLMClient.generate` sends it), `init_communicator`,
  `update_named_params` (the NCCL broadcast becomes a copy into the served model) and `reset_prefix_cache`, against
  an engine registered for its base URL by `serve(base_url, model_path)`.

Every engine and client records its calls (`calls`, `syncs`), for tests that count generation calls per step.
"""

import importlib.machinery
import math
import types
from dataclasses import dataclass, field

import torch
from transformers import AutoModelForCausalLM, AutoTokenizer, LogitsProcessor, LogitsProcessorList

__version__ = "0.28.0"  # inside TRL 1.16's supported range (0.22-0.31), read by `trl.import_utils.is_vllm_available`

ENGINES: list["LLM"] = []  # every engine built, in order
SERVERS: dict[str, "LLM"] = {}  # base_url -> the engine a `trl vllm-serve` there would run


@dataclass
class Logprob:
    logprob: float
    rank: int | None = None
    decoded_token: str | None = None


@dataclass
class CompletionOutput:
    index: int
    text: str
    token_ids: list[int]
    cumulative_logprob: float | None
    logprobs: list[dict[int, Logprob]] | None
    finish_reason: str | None = None
    stop_reason: int | str | None = None


@dataclass
class RequestOutput:
    request_id: str
    prompt: str | None
    prompt_token_ids: list[int]
    outputs: list[CompletionOutput]
    finished: bool = True


@dataclass
class SamplingParams:
    n: int = 1
    repetition_penalty: float = 1.0
    temperature: float = 1.0
    top_p: float = 1.0
    top_k: int = 0
    min_p: float = 0.0
    max_tokens: int | None = 16
    logprobs: int | None = None
    stop: list[str] | None = None
    stop_token_ids: list[int] | None = None
    logit_bias: dict[int, float] | None = None
    allowed_token_ids: list[int] | None = None

    def __post_init__(self):
        if self.min_p:
            raise NotImplementedError("the fake vLLM supports min_p=0 only.")
        if self.logit_bias is not None:  # as vLLM: integer ids, bias clamped to the OpenAI range
            self.logit_bias = {int(t): min(100.0, max(-100.0, b)) for t, b in self.logit_bias.items()}


class _Bias(LogitsProcessor):
    """`logit_bias` and `allowed_token_ids` on the raw logits."""

    def __init__(self, bias: dict[int, float] | None, allowed: list[int] | None, vocab: int):
        self.add = torch.zeros(vocab)
        for token, value in (bias or {}).items():
            self.add[token] = value
        if allowed is not None:
            blocked = torch.ones(vocab, dtype=torch.bool)
            blocked[torch.tensor(allowed, dtype=torch.long)] = False
            self.add[blocked] = -math.inf

    def __call__(self, input_ids, scores):
        return scores + self.add.to(scores.device, scores.dtype)


class _Worker:
    """`llm_engine.model_executor.driver_worker.model_runner.model`: vLLM's `load_weights` takes HF names."""

    def __init__(self, engine: "LLM"):
        self.engine = engine
        self.model_runner = types.SimpleNamespace(model=self)

    def load_weights(self, weights):
        self.engine.load_weights(weights)


class LLM:
    """An in-process engine on `AutoModelForCausalLM.from_pretrained(model)` (float32, CPU)."""

    def __init__(self, model: str, tensor_parallel_size: int = 1, gpu_memory_utilization: float = 0.9,
                 max_model_len: int | None = None, max_num_seqs: int | None = None, enable_sleep_mode: bool = False,
                 model_impl: str = "auto", distributed_executor_backend: str | None = None, seed: int = 0,
                 max_num_batched_tokens: int | None = None, logprobs_mode: str = "raw_logprobs",
                 quantization: str | None = None, trust_remote_code: bool = False, enable_prefix_caching: bool = True,
                 dtype: str = "auto", enforce_eager: bool = False):
        if tensor_parallel_size != 1 or quantization is not None:
            raise NotImplementedError("the fake vLLM runs tensor_parallel_size=1 without quantization only.")
        self.init_args = dict(locals())
        self.init_args.pop("self")
        self.model = AutoModelForCausalLM.from_pretrained(model, dtype=torch.float32).eval()
        self.tokenizer = AutoTokenizer.from_pretrained(model)
        self.logprobs_mode = logprobs_mode
        self.max_model_len = max_model_len
        self.asleep: set[str] = set()  # the tags put to sleep: "weights", "kv_cache"
        self.calls: list[dict] = []  # one per generate: the prompts and the sampling parameters
        self.syncs = 0  # load_weights calls that covered every parameter (one full weight sync each)
        self._loaded: set[str] = set()
        config = types.SimpleNamespace(model=model, revision=None, dtype=torch.float32, seed=seed,
                                       get_vocab_size=lambda: self.model.config.get_text_config().vocab_size)
        executor = types.SimpleNamespace(driver_worker=_Worker(self))
        self.llm_engine = types.SimpleNamespace(model_config=config, model_executor=executor)
        ENGINES.append(self)

    # --- memory -------------------------------------------------------------------------------------------------

    def sleep(self, level: int = 1):
        self.asleep = {"weights", "kv_cache"}
        if level == 2:  # the weights are discarded; only a weight sync brings them back
            with torch.no_grad():
                for param in self.model.parameters():
                    param.fill_(float("nan"))

    def wake_up(self, tags: list[str] | None = None):
        self.asleep -= set(tags or ("weights", "kv_cache"))

    def reset_prefix_cache(self):
        return True

    def load_weights(self, weights):
        if "weights" in self.asleep:
            raise RuntimeError("load_weights while the weights sleep: vLLM would write unmapped memory.")
        params = dict(self.model.named_parameters())
        with torch.no_grad():
            for name, tensor in weights:
                if name not in params:
                    raise KeyError(f"the served model has no parameter {name!r}.")
                params[name].copy_(tensor.to(params[name].dtype))
                self._loaded.add(name)
        if self._loaded >= set(params):
            self.syncs += 1
            self._loaded = set()

    # --- generation ---------------------------------------------------------------------------------------------

    def generate(self, prompts, sampling_params: SamplingParams | None = None, use_tqdm: bool = True):
        if self.asleep:
            raise RuntimeError(f"generate while {sorted(self.asleep)} sleep.")
        params = sampling_params or SamplingParams()
        ids = [p["prompt_token_ids"] if isinstance(p, dict) else p for p in prompts]
        self.calls.append({"prompt_token_ids": [list(p) for p in ids], "sampling_params": params})
        return [RequestOutput(str(i), None, list(p), group) for i, (p, group) in
                enumerate(zip(ids, self._complete(ids, params), strict=True))]

    def _complete(self, prompts: list[list[int]], params: SamplingParams) -> list[list[CompletionOutput]]:
        """All prompts left-padded in one HF `generate`, `n` samples each."""
        if self.max_model_len is not None and max(map(len, prompts)) + params.max_tokens > self.max_model_len:
            raise ValueError(f"prompt + max_tokens exceed max_model_len={self.max_model_len}.")
        tokenizer, vocab = self.tokenizer, self.model.config.get_text_config().vocab_size
        pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
        width = max(map(len, prompts))
        rows = [p for p in prompts for _ in range(params.n)]  # n samples of a prompt, next to each other
        input_ids = torch.tensor([[pad] * (width - len(p)) + list(p) for p in rows])
        attention_mask = torch.tensor([[0] * (width - len(p)) + [1] * len(p) for p in rows])
        config_eos = self.model.generation_config.eos_token_id
        config_eos = [] if config_eos is None else [config_eos] if isinstance(config_eos, int) else config_eos
        stop_ids = list(dict.fromkeys([tokenizer.eos_token_id, *config_eos, *(params.stop_token_ids or [])]))
        greedy = params.temperature == 0
        processors = LogitsProcessorList([_Bias(params.logit_bias, params.allowed_token_ids, vocab)])
        out = self.model.generate(
            input_ids=input_ids, attention_mask=attention_mask, max_new_tokens=params.max_tokens,
            do_sample=not greedy, temperature=None if greedy else params.temperature,
            top_p=None if greedy else params.top_p, top_k=None if greedy or params.top_k in (0, -1) else params.top_k,
            repetition_penalty=params.repetition_penalty, eos_token_id=stop_ids,
            pad_token_id=pad, logits_processor=processors, use_cache=True, return_dict_in_generate=True,
            output_scores=params.logprobs is not None, output_logits=params.logprobs is not None,
        )
        groups = []
        for row, sequence in enumerate(out.sequences):
            new = sequence[width:].tolist()
            ended = next((i for i, t in enumerate(new) if t in stop_ids), None)
            token_ids = new if ended is None else new[: ended + 1]
            finish, stop_reason = ("length", None) if ended is None else ("stop", None)
            if ended is not None and token_ids[-1] != tokenizer.eos_token_id:
                stop_reason = token_ids[-1]  # a stop_token_ids hit, as vLLM reports it
            text = tokenizer.decode(token_ids, skip_special_tokens=True)
            for s in params.stop or []:
                if s in text:  # vLLM cuts the text before a stop string; the ids run to the token that matched
                    cut = next(i for i in range(1, len(token_ids) + 1)
                               if s in tokenizer.decode(token_ids[:i], skip_special_tokens=True))
                    token_ids, text = token_ids[:cut], text[: text.index(s)]
                    finish, stop_reason = "stop", s
                    break
            logprobs = None
            if params.logprobs is not None:
                logprobs = self._logprobs(out, row, token_ids, params.logprobs)
            completion = CompletionOutput(row % params.n, text, token_ids, None, logprobs, finish, stop_reason)
            if row % params.n == 0:
                groups.append([])
            groups[-1].append(completion)
        return groups

    def _logprobs(self, out, row: int, token_ids: list[int], top: int) -> list[dict[int, Logprob]]:
        """Per position: the sampled token and the `top` most likely, ranked; raw or processed as `logprobs_mode`."""
        steps = out.logits if self.logprobs_mode == "raw_logprobs" else out.scores
        positions = []
        for position, token in enumerate(token_ids):
            logprobs_V = torch.log_softmax(steps[position][row].float(), dim=-1)
            ranks = logprobs_V.argsort(descending=True)
            entry = {int(t): Logprob(logprobs_V[t].item(), rank + 1) for rank, t in enumerate(ranks[:top].tolist())}
            entry[token] = Logprob(logprobs_V[token].item(), int((logprobs_V > logprobs_V[token]).sum()) + 1)
            positions.append(entry)
        return positions


# --- server mode: `trl vllm-serve` behind `VLLMClient` ---------------------------------------------------------------


def serve(base_url: str, model: str, **engine_args) -> LLM:
    """Start the fake `trl vllm-serve` of `model` at `base_url`."""
    SERVERS[base_url.rstrip("/")] = engine = LLM(model, **engine_args)
    return engine


@dataclass
class FakeVLLMClient:
    """`trl.generation.vllm_client.VLLMClient` against a fake server registered with `serve`."""

    base_url: str | None = None
    host: str = "0.0.0.0"
    server_port: int = 8000
    group_port: int = 51216
    connection_timeout: float = 0.0
    calls: list[dict] = field(default_factory=list)

    def __post_init__(self):
        self.base_url = (self.base_url or f"http://{self.host}:{self.server_port}").rstrip("/")
        if self.base_url not in SERVERS:
            raise ConnectionError(f"The vLLM server can't be reached at {self.base_url} after "
                                  f"{self.connection_timeout} seconds.")
        self.engine = SERVERS[self.base_url]
        self.communicator = None

    def init_communicator(self, device=0):
        self.communicator = device

    def update_named_params(self, metadata, named_params):
        if self.communicator is None:
            raise RuntimeError("update_named_params before init_communicator.")
        pairs = list(named_params)
        if [name for name, *_ in metadata] != [name for name, _ in pairs]:
            raise RuntimeError("the streamed tensors differ from the announced metadata.")
        self.engine.load_weights(pairs)

    def reset_prefix_cache(self):
        return self.engine.reset_prefix_cache()

    def generate(self, prompts, features=None, n=1, repetition_penalty=1.0, temperature=1.0, top_p=1.0, top_k=0,
                 min_p=0.0, max_tokens=16, logprobs=0, structured_outputs_regex=None, generation_kwargs=None):
        if features is not None or structured_outputs_regex is not None:
            raise NotImplementedError("the fake server has no image features or structured outputs.")
        body = {"n": n, "repetition_penalty": repetition_penalty, "temperature": temperature, "top_p": top_p,
                "top_k": top_k, "min_p": min_p, "max_tokens": max_tokens, "logprobs": logprobs,
                **(generation_kwargs or {})}
        self.calls.append({"prompts": [list(p) for p in prompts], **body})
        outputs = self.engine.generate([{"prompt_token_ids": p} for p in prompts], SamplingParams(**body))
        completions = [c for request in outputs for c in request.outputs]
        ranked = None if logprobs is None else [
            [sorted(position.items(), key=lambda item: item[1].rank) for position in c.logprobs] for c in completions]
        return {
            "prompt_ids": [request.prompt_token_ids for request in outputs],
            "completion_ids": [list(c.token_ids) for c in completions],
            "logprobs": None if ranked is None else [[[lp.logprob for _, lp in pos] for pos in c] for c in ranked],
            "logprob_token_ids": None if ranked is None else [[[t for t, _ in pos] for pos in c] for c in ranked],
        }


def module() -> types.ModuleType:
    """A fresh `vllm` module object exposing the fakes (what `import vllm` finds while the fixture is active)."""
    fake = types.ModuleType("vllm")
    fake.__spec__ = importlib.machinery.ModuleSpec("vllm", loader=None)
    fake.__version__ = __version__
    for name in ("LLM", "SamplingParams", "RequestOutput", "CompletionOutput", "Logprob"):
        setattr(fake, name, globals()[name])
    return fake


def reset() -> None:
    ENGINES.clear()
    SERVERS.clear()


__all__ = ["LLM", "FakeVLLMClient", "RequestOutput", "SamplingParams", "module", "reset", "serve"]
