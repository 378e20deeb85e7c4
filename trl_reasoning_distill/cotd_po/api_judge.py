"""The CoTD-PO scorer for a closed teacher: an OpenAI-compatible chat API judge that rates each candidate answer
(the paper's "scalar quality ratings" route, spec §2.9), over plain HTTP with timeouts, retries and a thread pool.
"""

import concurrent.futures
import http.client
import json
import logging
import math
import re
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Sequence
from typing import Any

from ._groups import Prompt, check_groups, prompt_messages, regroup

logger = logging.getLogger(__name__)

__all__ = ["JUDGE_PROMPT_TEMPLATE", "APIJudgeScorer", "JudgeAPIError", "parse_judge_rating"]


JUDGE_PROMPT_TEMPLATE = (
    "Please act as an impartial judge and rate the quality of the answer to the user's instruction below. Consider "
    "helpfulness, correctness, relevance and level of detail.\n\n"
    "[Instruction]\n{instruction}\n\n[Answer]\n{answer}\n\n"
    "Rate the answer on a scale from {low} to {high}, where {high} is best. Reply with the rating only: a single "
    "integer from {low} to {high}."
)
RETRY_STATUSES = (408, 409, 429, 500, 502, 503, 504)
_NUMBER = re.compile(r"-?\d+(?:\.\d+)?")


class JudgeAPIError(RuntimeError):
    """The judge API could not be reached or answered with an error or a malformed response."""


def parse_judge_rating(response: dict[str, Any], low: int, high: int, use_logprobs: bool = True) -> float:
    """
    Rating in `[low, high]` from an OpenAI-style chat-completion response; NaN when none can be read.

    With `use_logprobs` and `logprobs.content` in the response, the rating is the expectation over the first
    non-blank reply token's `top_logprobs` restricted to the rating tokens `low..high` (renormalised; equal tokens
    such as `"7"` and `" 7"` pooled), a finer score than the integer (spec §9.6). Otherwise, or when no rating token is
    among them, it is the first number of the reply text, if within `[low, high]`.

    Args:
        response (`dict`):
            Decoded JSON of a `/chat/completions` response.
        low (`int`), high (`int`):
            The rating scale.
        use_logprobs (`bool`, *optional*, defaults to `True`):
            Use the token log-probabilities when present.

    Returns:
        `float`: The rating, or NaN.
    """
    try:
        choice = response["choices"][0]
        text = choice["message"]["content"] or ""
    except (KeyError, IndexError, TypeError) as error:
        raise JudgeAPIError(
            f"Not a chat-completion response (no choices[0].message.content): {response!r:.300}"
        ) from error
    if use_logprobs:
        expected = _expected_rating(choice.get("logprobs"), low, high)
        if expected is not None:
            return expected
    match = _NUMBER.search(text)
    if match is None:
        return math.nan
    value = float(match.group())
    return value if low <= value <= high else math.nan


def _expected_rating(logprobs: dict | None, low: int, high: int) -> float | None:
    """Expectation of the rating under the first reply token's top log-probs, or None if there is none to read."""
    content = (logprobs or {}).get("content") or []
    first = next((entry for entry in content if str(entry.get("token", "")).strip()), None)
    if first is None:
        return None
    mass: dict[int, float] = {}
    for candidate in first.get("top_logprobs") or []:
        token = str(candidate.get("token", "")).strip()
        if token.isdigit() and low <= int(token) <= high:
            mass[int(token)] = mass.get(int(token), 0.0) + math.exp(float(candidate["logprob"]))
    total = sum(mass.values())
    if total <= 0:
        return None
    return sum(value * p for value, p in mass.items()) / total


def _retry_after(headers) -> float | None:
    value = headers.get("Retry-After") if headers is not None else None
    try:
        return max(float(value), 0.0) if value is not None else None
    except ValueError:
        return None


def _is_timeout(error: BaseException) -> bool:
    return isinstance(error, TimeoutError) or isinstance(getattr(error, "reason", None), TimeoutError)


class APIJudgeScorer:
    """
    `r_t(y | x)` as an absolute rating by a closed teacher behind an OpenAI-compatible `/chat/completions` API (the
    paper's "directly from the teacher if it can provide scalar quality ratings", §2.4; spec §9.6).

    One request per answer, pointwise: [`JUDGE_PROMPT_TEMPLATE`] shows the instruction and the answer (never the
    rationale, spec §7 item 11) and asks for an integer rating; [`parse_judge_rating`] reads it, as the expected rating
    under the first token's top log-probs when the API returns them. A reply without a rating scores NaN (counted in
    `num_parse_failures`; [`cotd_po_loss`] masks it). Timeouts, connection errors and HTTP 408/409/429/5xx are retried
    with exponential backoff (`Retry-After` honoured); other HTTP errors, malformed JSON and exhausted retries raise
    [`JudgeAPIError`].

    Args:
        base_url (`str`):
            API root, e.g. `"https://api.openai.com/v1"`; requests go to `{base_url}/chat/completions`.
        model (`str`):
            Model name sent in each request.
        api_key (`str` or `None`, *optional*, defaults to `None`):
            Sent as `Authorization: Bearer`; never logged.
        rating_scale (`tuple[int, int]`, *optional*, defaults to `(1, 9)`):
            Lowest and highest rating (ours: single digits, so each rating is one token and the log-prob expectation
            is exact whatever the teacher's tokenizer; the scale does not matter after min-max normalisation).
        use_logprobs (`bool`, *optional*, defaults to `True`):
            Ask for `logprobs`/`top_logprobs` and use them; needs a single-digit scale.
        top_logprobs (`int`, *optional*, defaults to `20`):
            Alternatives per token requested (OpenAI's maximum).
        timeout (`float`, *optional*, defaults to `60.0`):
            Seconds per socket operation of one attempt.
        max_retries (`int`, *optional*, defaults to `3`):
            Retries after the first attempt.
        backoff (`float`, *optional*, defaults to `1.0`):
            First retry delay in seconds, doubled on each retry, capped at `max_backoff`.
        max_backoff (`float`, *optional*, defaults to `30.0`):
            Longest delay between attempts.
        num_workers (`int`, *optional*, defaults to `1`):
            Concurrent requests.
        prompt_template (`str`, *optional*, defaults to `JUDGE_PROMPT_TEMPLATE`):
            Judge prompt with `{instruction}`, `{answer}`, `{low}` and `{high}` fields.
        max_tokens (`int`, *optional*, defaults to `8`):
            Reply length limit (the reply is a number).
    """

    def __init__(self, base_url: str, model: str, *, api_key: str | None = None,
                 rating_scale: tuple[int, int] = (1, 9), use_logprobs: bool = True, top_logprobs: int = 20,
                 timeout: float = 60.0, max_retries: int = 3, backoff: float = 1.0, max_backoff: float = 30.0,
                 num_workers: int = 1, prompt_template: str = JUDGE_PROMPT_TEMPLATE, max_tokens: int = 8):
        if not base_url.startswith(("http://", "https://")):
            raise ValueError(f"`base_url` must start with http:// or https://, got {base_url!r}.")
        low, high = rating_scale
        if not (isinstance(low, int) and isinstance(high, int) and low < high):
            raise ValueError(f"`rating_scale` must be two integers (low, high) with low < high, got {rating_scale}.")
        if use_logprobs and not 0 <= low < high <= 9:
            raise ValueError(f"`use_logprobs=True` needs single-digit ratings (0..9), got {rating_scale}; pass "
                             f"`use_logprobs=False` to parse the reply text only.")
        if timeout <= 0 or max_retries < 0 or backoff < 0 or num_workers < 1:
            raise ValueError(f"Need timeout > 0, max_retries >= 0, backoff >= 0, num_workers >= 1; got {timeout}, "
                             f"{max_retries}, {backoff}, {num_workers}.")
        for field in ("{instruction}", "{answer}"):
            if field not in prompt_template:
                raise ValueError(f"`prompt_template` must contain {field}.")
        self.url = base_url.rstrip("/") + "/chat/completions"
        self.model, self._api_key = model, api_key
        self.low, self.high = low, high
        self.use_logprobs, self.top_logprobs = use_logprobs, top_logprobs
        self.timeout, self.max_retries, self.backoff, self.max_backoff = timeout, max_retries, backoff, max_backoff
        self.num_workers, self.prompt_template, self.max_tokens = num_workers, prompt_template, max_tokens
        self._lock = threading.Lock()
        self.num_requests = self.num_retries = self.num_parse_failures = 0

    def score(
        self, prompts: Sequence[Prompt], candidates: Sequence[Sequence[str]], rationales: Sequence[str] | None = None
    ) -> list[list[float]]:
        """
        Args:
            prompts (`Sequence[str | list[dict]]`):
                Instructions `x`.
            candidates (`Sequence[Sequence[str]]`):
                The answers of each prompt.
            rationales (`Sequence[str]` or `None`, *optional*, defaults to `None`):
                Ignored: the judge rates `(x, y)` only (spec §7 item 11).

        Returns:
            `list[list[float]]`: Ratings in `[low, high]`, same nesting as `candidates`; NaN where none was given.
        """
        check_groups(prompts, candidates, rationales)
        jobs = [(_instruction_text(prompt), answer) for prompt, group in zip(prompts, candidates) for answer in group]
        if self.num_workers == 1:
            flat = [self.rate(instruction, answer) for instruction, answer in jobs]
        else:
            with concurrent.futures.ThreadPoolExecutor(max_workers=self.num_workers) as pool:
                flat = list(pool.map(lambda job: self.rate(*job), jobs))
        return regroup(flat, candidates)

    def rate(self, instruction: str, answer: str) -> float:
        """The teacher's rating of one answer (one request, with retries); NaN if the reply holds no rating."""
        content = self.prompt_template.format(instruction=instruction, answer=answer, low=self.low, high=self.high)
        payload: dict[str, Any] = {"model": self.model, "messages": [{"role": "user", "content": content}],
                                   "temperature": 0.0, "max_tokens": self.max_tokens}
        if self.use_logprobs:
            payload.update(logprobs=True, top_logprobs=self.top_logprobs)
        response = self._post(payload)
        rating = parse_judge_rating(response, self.low, self.high, self.use_logprobs)
        if math.isnan(rating):
            with self._lock:
                self.num_parse_failures += 1
            reply = response["choices"][0]["message"]["content"]
            logger.warning("The judge's reply holds no rating in [%d, %d]: %.80r; scored NaN.", self.low, self.high,
                           reply)
        return rating

    def _post(self, payload: dict[str, Any]) -> dict[str, Any]:
        """POST with retries; the decoded JSON response."""
        headers = {"Content-Type": "application/json", "Accept": "application/json"}
        if self._api_key:
            headers["Authorization"] = f"Bearer {self._api_key}"
        data = json.dumps(payload).encode()
        for attempt in range(self.max_retries + 1):
            with self._lock:
                self.num_requests += 1
                self.num_retries += attempt > 0
            request = urllib.request.Request(self.url, data=data, headers=headers, method="POST")
            delay = min(self.backoff * 2**attempt, self.max_backoff)
            try:
                with urllib.request.urlopen(request, timeout=self.timeout) as response:
                    body = response.read()
            except urllib.error.HTTPError as error:
                detail = error.read()[:300].decode(errors="replace")
                if error.code not in RETRY_STATUSES or attempt == self.max_retries:
                    raise JudgeAPIError(
                        f"{self.url} answered HTTP {error.code} ({error.reason}) on attempt {attempt + 1} of "
                        f"{self.max_retries + 1}: {detail}"
                    ) from error
                retry_after = _retry_after(error.headers)
                delay = min(retry_after, self.max_backoff) if retry_after is not None else delay
                logger.warning("Judge API HTTP %d; retrying in %.2f s.", error.code, delay)
            except (urllib.error.URLError, TimeoutError, ConnectionError, http.client.HTTPException) as error:
                if attempt == self.max_retries:
                    what = f"timed out (timeout={self.timeout} s)" if _is_timeout(error) else f"failed: {error}"
                    raise JudgeAPIError(
                        f"Request to {self.url} {what} on each of {self.max_retries + 1} attempts; check the server, "
                        f"or raise `timeout` / `max_retries`."
                    ) from error
                logger.warning("Judge API request failed (%s); retrying in %.2f s.", error, delay)
            else:
                try:
                    return json.loads(body)
                except json.JSONDecodeError as error:
                    raise JudgeAPIError(f"{self.url} returned invalid JSON: {body[:300]!r}") from error
            time.sleep(delay)
        raise AssertionError("unreachable: the last attempt returns or raises")


def _instruction_text(prompt: Prompt) -> str:
    """The instruction as the judge sees it: the text of a single user turn, else `Role: content` lines."""
    messages = prompt_messages(prompt)
    if len(messages) == 1:
        return messages[0]["content"]
    return "\n".join(f"{m.get('role', 'user').capitalize()}: {m['content']}" for m in messages)
