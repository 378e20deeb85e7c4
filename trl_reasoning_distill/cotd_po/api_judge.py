"""The CoTD-PO scorer for a closed teacher: an OpenAI-compatible chat API judge that rates each candidate answer
(the paper's "scalar quality ratings" route, spec §2.9), over plain HTTP with deadlines, a response size cap, retries
and a thread pool.
"""

import concurrent.futures
import datetime
import email.utils
import functools
import http.client
import io
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
MAX_RESPONSE_BYTES = 4 * 2**20  # default cap on one reply's body (a rating with 20 top log-probs is a few KB)
_CHUNK_BYTES = 64 * 2**10  # the body is read this much at a time
_ERROR_DETAIL_BYTES = 300  # bytes of an HTTP error's body quoted in the exception
_NUMBER = re.compile(r"-?\d+(?:\.\d+)?")


class JudgeAPIError(RuntimeError):
    """The judge API could not be reached or answered with an error or a malformed response."""


def parse_judge_rating(response: dict[str, Any], low: int, high: int, use_logprobs: bool = True) -> float:
    """
    Rating in `[low, high]` from an OpenAI-style chat-completion response; NaN when none can be read.

    With `use_logprobs` and `logprobs.content` in the response, the rating is the expectation over the first
    non-blank reply token's `top_logprobs` restricted to the rating tokens `low..high` (renormalised; equal tokens
    such as `"7"` and `" 7"` pooled), a finer score than the integer (spec §9.6). Otherwise, when no rating token is
    among them, or when the log-probs are not shaped as OpenAI's (an entry that is not an object, a token that is not
    a string, a log-prob that is not a number <= 0), it is the first number of the reply text, if within `[low, high]`.

    Args:
        response (`dict`):
            Decoded JSON of a `/chat/completions` response.
        low (`int`), high (`int`):
            The rating scale.
        use_logprobs (`bool`, *optional*, defaults to `True`):
            Use the token log-probabilities when present.

    Returns:
        `float`: The rating, or NaN.

    Raises:
        [`JudgeAPIError`]: When `response` has no `choices[0].message.content`, or that content is neither a string
        nor null.
    """
    text, logprobs = _read_reply(response)
    return _rating(text, logprobs if use_logprobs else None, low, high)[0]


def _read_reply(response: Any) -> tuple[str, Any]:
    """The reply text (`""` for a null content) and the raw `logprobs` of a chat-completion response."""
    try:
        choice = response["choices"][0]
        text = choice["message"]["content"]
    except (KeyError, IndexError, TypeError) as error:
        raise JudgeAPIError(
            f"Not a chat-completion response (no choices[0].message.content): {response!r:.300}"
        ) from error
    if text is not None and not isinstance(text, str):
        raise JudgeAPIError(f"Not a chat-completion response: choices[0].message.content is a "
                            f"{type(text).__name__}, not a string: {text!r:.100}")
    return text or "", choice.get("logprobs")


def _rating(text: str, logprobs: Any, low: int, high: int) -> tuple[float, str | None]:
    """The rating (see [`parse_judge_rating`]) and, when the log-probs were present but malformed, what was wrong."""
    problem = None
    try:
        expected = _expected_rating(logprobs, low, high)
    except ValueError as error:
        expected, problem = None, str(error)
    if expected is not None:
        return expected, None
    match = _NUMBER.search(text)
    value = float(match.group()) if match is not None else math.nan
    return (value if low <= value <= high else math.nan), problem


def _expected_rating(logprobs: Any, low: int, high: int) -> float | None:
    """
    Expectation of the rating under the first reply token's top log-probs, or None if there is none to read.
    Raises `ValueError`, naming the problem, when `logprobs` is present but not shaped as OpenAI's.
    """
    if logprobs is None:
        return None
    if not isinstance(logprobs, dict):
        raise ValueError(f"`logprobs` is a {type(logprobs).__name__}, not an object")
    first = next((entry for entry in _entries(logprobs.get("content"), "logprobs.content")
                  if _token(entry).strip()), None)
    if first is None:
        return None
    ratings = {str(value): value for value in range(low, high + 1)}
    mass: dict[int, float] = {}
    for candidate in _entries(first.get("top_logprobs"), "top_logprobs"):
        token, probability = _token(candidate).strip(), math.exp(_logprob(candidate))
        if token in ratings:
            mass[ratings[token]] = mass.get(ratings[token], 0.0) + probability
    total = sum(mass.values())
    if total <= 0:
        return None
    return sum(value * p for value, p in mass.items()) / total


def _entries(value: Any, name: str) -> list[dict]:
    """A list of objects (`None` reads as empty); `ValueError` for anything else."""
    if value is None:
        return []
    if not isinstance(value, list) or not all(isinstance(entry, dict) for entry in value):
        raise ValueError(f"`{name}` is not a list of objects: {value!r:.100}")
    return value


def _token(entry: dict) -> str:
    token = entry.get("token")
    if not isinstance(token, str):
        raise ValueError(f"a log-prob entry's `token` is not a string: {entry!r:.100}")
    return token


def _logprob(entry: dict) -> float:
    value = entry.get("logprob")
    if isinstance(value, bool) or not isinstance(value, int | float) or not value <= 0:
        raise ValueError(f"a log-prob entry's `logprob` is not a number <= 0: {entry!r:.100}")
    return float(value)


def _retry_after(headers) -> float | None:
    """
    Seconds the server asks to wait (`Retry-After`: seconds or an HTTP date, RFC 9110 §10.2.3), at least 0; None when
    the header is missing or unreadable (not a number nor a date, NaN, infinite).
    """
    value = headers.get("Retry-After") if headers is not None else None
    if value is None:
        return None
    try:
        seconds = float(value)
    except ValueError:
        try:
            when = email.utils.parsedate_to_datetime(value)
        except (TypeError, ValueError, IndexError):
            return None
        when = when if when.tzinfo is not None else when.replace(tzinfo=datetime.UTC)
        seconds = (when - datetime.datetime.now(datetime.UTC)).total_seconds()
    return max(seconds, 0.0) if math.isfinite(seconds) else None


def _time_left(deadline: float) -> float:
    """Seconds until `deadline` (`time.monotonic()` time); `TimeoutError` once it has passed."""
    left = deadline - time.monotonic()
    if left <= 0:
        raise TimeoutError("the request's deadline passed")
    return left


def _is_timeout(error: BaseException) -> bool:
    return isinstance(error, TimeoutError) or isinstance(getattr(error, "reason", None), TimeoutError)


class APIJudgeScorer:
    """
    `r_t(y | x)` as an absolute rating by a closed teacher behind an OpenAI-compatible `/chat/completions` API (the
    paper's "directly from the teacher if it can provide scalar quality ratings", §2.4; spec §9.6).

    One request per answer, pointwise: [`JUDGE_PROMPT_TEMPLATE`] shows the instruction and the answer (never the
    rationale, spec §7 item 11) and asks for an integer rating; [`parse_judge_rating`] reads it, as the expected rating
    under the first token's top log-probs when the API returns them. A reply without a rating scores NaN (counted in
    `num_parse_failures`; [`cotd_po_loss`] masks it); malformed log-probs are set aside for the reply text (counted
    in `num_malformed_logprobs`). Timeouts, connection errors and HTTP 408/409/429/5xx are retried with exponential
    backoff (a readable `Retry-After` honoured, clamped to `[0, max_backoff]`); other HTTP errors (redirects included:
    none is followed), a reply over `max_response_bytes`, a body that is not JSON or not a chat completion, a retry due
    past `total_timeout`, and exhausted retries raise [`JudgeAPIError`].

    Every attempt ends within `timeout` seconds however slowly the server sends (each socket read gets only the time
    left), and every rating within `total_timeout` seconds, retries and waits included; name resolution (DNS) is the
    one step bounded by the system resolver instead.

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
            Seconds one attempt may take in all: connecting, sending the request and reading the whole reply.
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
        total_timeout (`float` or `None`, *optional*, defaults to `None`):
            Seconds one rating may take in all, every attempt and wait included; `None` means `(max_retries + 1) *
            timeout + max_retries * max_backoff`, the longest the attempts and waits can take anyway.
        max_response_bytes (`int`, *optional*, defaults to `4 * 2**20`):
            Largest reply body read, in bytes; a larger one (by its `Content-Length`, or once that much has been read)
            is refused without reading the rest.
    """

    def __init__(self, base_url: str, model: str, *, api_key: str | None = None,
                 rating_scale: tuple[int, int] = (1, 9), use_logprobs: bool = True, top_logprobs: int = 20,
                 timeout: float = 60.0, max_retries: int = 3, backoff: float = 1.0, max_backoff: float = 30.0,
                 num_workers: int = 1, prompt_template: str = JUDGE_PROMPT_TEMPLATE, max_tokens: int = 8,
                 total_timeout: float | None = None, max_response_bytes: int = MAX_RESPONSE_BYTES):
        if not base_url.startswith(("http://", "https://")):
            raise ValueError(f"`base_url` must start with http:// or https://, got {base_url!r}.")
        low, high = rating_scale
        if not (isinstance(low, int) and isinstance(high, int) and low < high):
            raise ValueError(f"`rating_scale` must be two integers (low, high) with low < high, got {rating_scale}.")
        if use_logprobs and not 0 <= low < high <= 9:
            raise ValueError(f"`use_logprobs=True` needs single-digit ratings (0..9), got {rating_scale}; pass "
                             f"`use_logprobs=False` to parse the reply text only.")
        if not (timeout > 0 and max_retries >= 0 and backoff >= 0 and max_backoff >= 0 and num_workers >= 1):
            raise ValueError(f"Need timeout > 0, max_retries >= 0, backoff >= 0, max_backoff >= 0, num_workers >= 1; "
                             f"got {timeout}, {max_retries}, {backoff}, {max_backoff}, {num_workers}.")
        if total_timeout is None:
            total_timeout = (max_retries + 1) * timeout + max_retries * max_backoff
        if not (total_timeout > 0 and math.isfinite(total_timeout) and math.isfinite(timeout)):
            raise ValueError(f"`timeout` and `total_timeout` must be finite numbers of seconds > 0, got {timeout} and "
                             f"{total_timeout}.")
        if isinstance(max_response_bytes, bool) or not isinstance(max_response_bytes, int) or max_response_bytes < 1:
            raise ValueError(f"`max_response_bytes` must be a positive integer, got {max_response_bytes!r}.")
        for field in ("{instruction}", "{answer}"):
            if field not in prompt_template:
                raise ValueError(f"`prompt_template` must contain {field}.")
        self.url = base_url.rstrip("/") + "/chat/completions"
        self.model, self._api_key = model, api_key
        self.low, self.high = low, high
        self.use_logprobs, self.top_logprobs = use_logprobs, top_logprobs
        self.timeout, self.max_retries, self.backoff, self.max_backoff = timeout, max_retries, backoff, max_backoff
        self.num_workers, self.prompt_template, self.max_tokens = num_workers, prompt_template, max_tokens
        self.total_timeout, self.max_response_bytes = total_timeout, max_response_bytes
        self._lock = threading.Lock()
        self.num_requests = self.num_retries = self.num_parse_failures = self.num_malformed_logprobs = 0

    def identity(self) -> dict:
        """What decides the ratings: the API's address and model, the scale, the prompt and the reply settings (never
        the API key)."""
        import hashlib

        return {"scorer": type(self).__name__, "url": self.url, "model": self.model,
                "rating_scale": [self.low, self.high],
                "use_logprobs": self.use_logprobs, "top_logprobs": self.top_logprobs, "max_tokens": self.max_tokens,
                "prompt_template": hashlib.sha256(self.prompt_template.encode()).hexdigest()[:16]}

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
                flat = list(pool.map(lambda job: self.rate(*job), jobs))  # the first error cancels the rest
        return regroup(flat, candidates)

    def rate(self, instruction: str, answer: str) -> float:
        """The teacher's rating of one answer (one request, with retries); NaN if the reply holds no rating."""
        content = self.prompt_template.format(instruction=instruction, answer=answer, low=self.low, high=self.high)
        payload: dict[str, Any] = {"model": self.model, "messages": [{"role": "user", "content": content}],
                                   "temperature": 0.0, "max_tokens": self.max_tokens}
        if self.use_logprobs:
            payload.update(logprobs=True, top_logprobs=self.top_logprobs)
        text, logprobs = _read_reply(self._post(payload))
        rating, logprob_problem = _rating(text, logprobs if self.use_logprobs else None, self.low, self.high)
        if logprob_problem is not None:
            with self._lock:
                self.num_malformed_logprobs += 1
            logger.warning("The judge's log-probs are malformed (%s); the reply text is read instead.",
                           logprob_problem)
        if math.isnan(rating):
            with self._lock:
                self.num_parse_failures += 1
            logger.warning("The judge's reply holds no rating in [%d, %d]: %.80r; scored NaN.", self.low, self.high,
                           text)
        return rating

    def _post(self, payload: dict[str, Any]) -> Any:
        """POST with retries, all within `total_timeout`; the decoded JSON response."""
        headers = {"Content-Type": "application/json", "Accept": "application/json"}
        if self._api_key:
            headers["Authorization"] = f"Bearer {self._api_key}"
        data = json.dumps(payload).encode()
        deadline = time.monotonic() + self.total_timeout
        for attempt in range(self.max_retries + 1):
            with self._lock:
                self.num_requests += 1
                self.num_retries += attempt > 0
            delay = min(self.backoff * 2**attempt, self.max_backoff)
            try:
                body = self._attempt(data, headers, min(time.monotonic() + self.timeout, deadline))
            except urllib.error.HTTPError as error:
                detail = _error_detail(error)
                if error.code not in RETRY_STATUSES or attempt == self.max_retries:
                    raise JudgeAPIError(
                        f"{self.url} answered HTTP {error.code} ({error.reason}) on attempt {attempt + 1} of "
                        f"{self.max_retries + 1}: {detail}"
                    ) from error
                retry_after = _retry_after(error.headers)
                delay = min(retry_after, self.max_backoff) if retry_after is not None else delay
                failure = f"HTTP {error.code}"
            except (OSError, http.client.HTTPException) as error:
                if attempt == self.max_retries:
                    what = f"timed out (timeout={self.timeout} s)" if _is_timeout(error) else f"failed: {error}"
                    raise JudgeAPIError(
                        f"Request to {self.url} {what} on each of {self.max_retries + 1} attempts; check the server, "
                        f"or raise `timeout` / `max_retries`."
                    ) from error
                failure = "timed out" if _is_timeout(error) else f"failed ({error})"
            else:
                return _decode_json(body, self.url)
            if time.monotonic() + delay >= deadline:
                raise JudgeAPIError(
                    f"Request to {self.url} {failure} on attempt {attempt + 1} of {self.max_retries + 1}, and the "
                    f"next attempt, due in {delay:.2f} s, would pass `total_timeout` ({self.total_timeout} s); check "
                    f"the server, or raise `total_timeout`."
                )
            logger.warning("Judge API request %s; retrying in %.2f s.", failure, delay)
            time.sleep(delay)
        raise AssertionError("unreachable: the last attempt returns or raises")

    def _attempt(self, data: bytes, headers: dict[str, str], deadline: float) -> bytes:
        """One POST, ended by `deadline` (`time.monotonic()` time); the body, at most `max_response_bytes` of it."""
        request = urllib.request.Request(self.url, data=data, headers=headers, method="POST")
        opener = urllib.request.build_opener(
            _NoRedirectHandler, _DeadlineHTTPHandler(deadline), _DeadlineHTTPSHandler(deadline)
        )
        with opener.open(request, timeout=_time_left(deadline)) as response:
            if response.length is not None and response.length > self.max_response_bytes:
                raise JudgeAPIError(
                    f"{self.url} announced a {response.length}-byte reply (Content-Length), over `max_response_bytes` "
                    f"({self.max_response_bytes}); refused unread. Raise `max_response_bytes` if that is expected."
                )
            body = _read_at_most(response, self.max_response_bytes)
        if body is None:
            raise JudgeAPIError(
                f"{self.url} sent a reply over `max_response_bytes` ({self.max_response_bytes} bytes); refused "
                f"without reading the rest. Raise `max_response_bytes` if that is expected."
            )
        return body


def _read_at_most(stream, limit: int) -> bytes | None:
    """All of `stream`, read `_CHUNK_BYTES` at a time, or None as soon as it proves longer than `limit` bytes."""
    body = bytearray()
    while piece := stream.read(min(_CHUNK_BYTES, limit + 1 - len(body))):
        body += piece
        if len(body) > limit:
            return None
    return bytes(body)


def _error_detail(error: urllib.error.HTTPError) -> str:
    """The start of an HTTP error's body (what the server said), read within the attempt's deadline."""
    try:
        with error:
            return error.read(_ERROR_DETAIL_BYTES).decode(errors="replace")
    except (OSError, http.client.HTTPException, ValueError):
        return "(body unreadable)"


def _decode_json(body: bytes, url: str) -> Any:
    try:
        return json.loads(body)
    except (ValueError, RecursionError) as error:  # not JSON, not UTF-8, over-long integers, nesting too deep
        raise JudgeAPIError(f"{url} returned invalid JSON ({type(error).__name__}): {body[:300]!r}") from error


# --- the transport: urllib with a deadline on every socket read ------------------------------------------------------


class _DeadlineReader(io.RawIOBase):
    """A socket's byte stream whose every read waits only until `deadline`: a trickling server cannot stretch it."""

    def __init__(self, sock, deadline: float):
        self._sock, self._raw, self._deadline = sock, sock.makefile("rb", buffering=0), deadline

    def readable(self) -> bool:
        return True

    def readinto(self, buffer) -> int:
        self._sock.settimeout(_time_left(self._deadline))
        return self._raw.readinto(buffer)

    def close(self) -> None:
        if not self.closed:
            self._raw.close()
        super().close()


class _DeadlineSocket:
    """A connected socket whose `makefile` streams are [`_DeadlineReader`]s; every other use goes to the socket."""

    def __init__(self, sock, deadline: float):
        self._sock, self._deadline = sock, deadline

    def __getattr__(self, name: str):
        return getattr(self._sock, name)

    def makefile(self, mode: str = "rb", *args, **kwargs):
        if mode != "rb":
            raise ValueError(f"only binary reads are bounded by the deadline, got mode {mode!r}")
        return io.BufferedReader(_DeadlineReader(self._sock, self._deadline))


class _DeadlineConnectionMixin:
    """An `http.client` connection that sends and reads within `deadline` (connecting gets urllib's `timeout`)."""

    def __init__(self, *args, deadline: float, **kwargs):
        super().__init__(*args, **kwargs)
        self._deadline = deadline

    def connect(self) -> None:
        super().connect()  # TCP (and TLS, whose handshake CPython bounds in total by the socket timeout)
        self.sock = _DeadlineSocket(self.sock, self._deadline)

    def send(self, data) -> None:
        if self.sock is None:
            self.connect()
        self.sock.settimeout(_time_left(self._deadline))  # `sendall` is bounded in total by the socket timeout
        super().send(data)


class _DeadlineHTTPConnection(_DeadlineConnectionMixin, http.client.HTTPConnection):
    pass


class _DeadlineHTTPSConnection(_DeadlineConnectionMixin, http.client.HTTPSConnection):
    pass


class _DeadlineHTTPHandler(urllib.request.HTTPHandler):
    def __init__(self, deadline: float):
        super().__init__()
        self._deadline = deadline

    def http_open(self, req):
        return self.do_open(functools.partial(_DeadlineHTTPConnection, deadline=self._deadline), req)


class _DeadlineHTTPSHandler(urllib.request.HTTPSHandler):
    def __init__(self, deadline: float):
        super().__init__()
        self._deadline = deadline

    def https_open(self, req):
        return self.do_open(functools.partial(_DeadlineHTTPSConnection, deadline=self._deadline), req,
                            context=self._context)


class _NoRedirectHandler(urllib.request.HTTPRedirectHandler):
    """Redirects are not followed (urllib would resend the API key to the new host, as a GET): they raise HTTP 3xx."""

    def redirect_request(self, *args, **kwargs):
        return None


def _instruction_text(prompt: Prompt) -> str:
    """The instruction as the judge sees it: the text of a single user turn, else `Role: content` lines."""
    messages = prompt_messages(prompt)
    if len(messages) == 1:
        return messages[0]["content"]
    return "\n".join(f"{m.get('role', 'user').capitalize()}: {m['content']}" for m in messages)
