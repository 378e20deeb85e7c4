"""The CoTD-PO API judge against a misbehaving local HTTP server (127.0.0.1 only): deadlines, size caps, malformed
replies and retries."""

import json
import math
import socket
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

from trl_reasoning_distill.cotd_po import APIJudgeScorer, JudgeAPIError, parse_judge_rating
from trl_reasoning_distill.cotd_po.api_judge import MAX_RESPONSE_BYTES

HANDLER_SECONDS = 8.0  # no reply is served for longer: every server thread ends by itself
CHUNK = 64 * 2**10  # the judge reads bodies this much at a time
SLACK = 0.75  # seconds a call may run past its deadline on a busy machine


def _completion(content="7", logprobs=None):
    choice = {"index": 0, "message": {"role": "assistant", "content": content}, "finish_reason": "stop"}
    if logprobs is not None:
        choice["logprobs"] = logprobs
    return {"id": "x", "object": "chat.completion", "choices": [choice]}


def _top(*pairs):
    """OpenAI's `logprobs` for a one-token reply whose alternatives are `(token, probability)` pairs."""
    top = [{"token": token, "logprob": math.log(p)} for token, p in pairs]
    return {"content": [{"token": pairs[0][0], "logprob": top[0]["logprob"], "top_logprobs": top}]}


# --- the server: each test lists the replies it serves, in order (the last one repeats) ------------------------------


class _Server(ThreadingHTTPServer):
    daemon_threads = True

    def __init__(self, replies):
        super().__init__(("127.0.0.1", 0), _Handler)
        self.replies = list(replies)
        self.requests: list[str] = []  # method and path of each request
        self.sent: list[int] = []  # body bytes each streamed reply got out before the client hung up
        self.stop = threading.Event()
        self.lock = threading.Lock()

    @property
    def base_url(self):
        return f"http://127.0.0.1:{self.server_address[1]}/v1"

    def handle_error(self, request, client_address):  # a client that hung up on purpose is not an error here
        pass


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def log_message(self, *args):
        pass

    def do_POST(self):
        self.rfile.read(int(self.headers["Content-Length"]))
        server = self.server
        with server.lock:
            server.requests.append(f"POST {self.path}")
            reply = server.replies.pop(0) if len(server.replies) > 1 else server.replies[0]
        reply(self)
        self.close_connection = True

    def do_GET(self):
        with self.server.lock:
            self.server.requests.append(f"GET {self.path}")
        _send(self, 200, _completion("9"))


def _send(handler, status, body, headers=()):
    body = body if isinstance(body, bytes) else json.dumps(body).encode()
    handler.send_response(status)
    for name, value in headers:
        handler.send_header(name, value)
    handler.send_header("Content-Length", str(len(body)))
    handler.send_header("Connection", "close")
    handler.end_headers()
    handler.wfile.write(body)


def reply(status=200, body=None, headers=()):
    return lambda handler: _send(handler, status, _completion() if body is None else body, headers)


def trickle(where="body", interval=0.1):
    """A 200 whose headers or body come one byte per `interval` seconds, for at most `HANDLER_SECONDS`."""

    def serve(handler):
        payload = json.dumps(_completion()).encode()
        head = b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: %d\r\n" % len(payload)
        head += b"X-Padding: " + b"a" * 200 + b"\r\n\r\n"
        fast, slow = (b"", head + payload) if where == "headers" else (head, payload)
        _stream(handler, fast, [slow[i:i + 1] for i in range(len(slow))], interval)

    return serve


def oversized(total, status=200, content_length=True):
    """A reply of `total` bytes of JSON-looking padding, sent 256 KiB at a time."""

    def serve(handler):
        piece = b" " * 2**18
        head = b"HTTP/1.1 %d X\r\nContent-Type: application/json\r\nConnection: close\r\n" % status
        head += (b"Content-Length: %d\r\n" % total if content_length else b"") + b"\r\n"
        _stream(handler, head, [piece] * (total // len(piece)), 0.0)

    return serve


def _stream(handler, head, pieces, interval):
    """Send `head`, then `pieces` with `interval` seconds between them, until the client hangs up or time is up."""
    server, sent, end = handler.server, 0, time.monotonic() + HANDLER_SECONDS
    try:
        handler.wfile.write(head)
        for piece in pieces:
            if server.stop.is_set() or time.monotonic() > end:
                break
            handler.wfile.write(piece)
            handler.wfile.flush()
            sent += len(piece)
            time.sleep(interval)
    except OSError:  # the client hung up
        pass
    with server.lock:
        server.sent.append(sent)


@pytest.fixture
def serve(monkeypatch):
    for name in ("http_proxy", "HTTP_PROXY", "https_proxy", "HTTPS_PROXY", "all_proxy", "ALL_PROXY"):
        monkeypatch.delenv(name, raising=False)  # nothing but 127.0.0.1 is ever contacted
    servers = []

    def start(*replies):
        server = _Server(replies)
        threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True).start()
        servers.append(server)
        return server

    yield start
    for server in servers:
        server.stop.set()
        server.shutdown()
        server.server_close()


@pytest.fixture
def received(monkeypatch):
    """Bytes the calling (main) thread reads off its sockets: what the judge took in, whatever it kept."""
    counts = []
    original = socket.socket.recv_into

    def counting(self, buffer, *args):
        n = original(self, buffer, *args)
        if threading.current_thread() is threading.main_thread():
            counts.append(n)
        return n

    monkeypatch.setattr(socket.socket, "recv_into", counting)
    return counts


def _rate(judge):
    return judge.score(["5+3=?"], [["\\boxed{8}"]])[0][0]


def _timed_failure(judge, match):
    start = time.monotonic()
    with pytest.raises(JudgeAPIError, match=match):
        _rate(judge)
    return time.monotonic() - start


# --- deadlines -------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("where", ["body", "headers"])
def test_a_trickling_server_cannot_stretch_an_attempt_past_timeout(serve, where):
    server = serve(trickle(where))
    judge = APIJudgeScorer(server.base_url, "judge", timeout=1.0, max_retries=0)
    elapsed = _timed_failure(judge, r"timed out \(timeout=1.0 s\)")
    assert 1.0 <= elapsed < 1.0 + SLACK
    assert len(server.requests) == 1


def test_total_timeout_bounds_the_retries_of_a_trickling_server(serve):
    server = serve(trickle())
    judge = APIJudgeScorer(server.base_url, "judge", timeout=0.6, max_retries=5, backoff=0.0, total_timeout=1.5)
    elapsed = _timed_failure(judge, r"timed out on attempt 3 of 6.*`total_timeout` \(1.5 s\)")
    assert 1.5 <= elapsed < 1.5 + SLACK
    assert len(server.requests) == 3 and judge.num_retries == 2


@pytest.fixture
def tls_trickler():
    """A TCP server on 127.0.0.1 that answers a TLS hello with a record header, then its body one byte per 0.1 s."""
    listener = socket.create_server(("127.0.0.1", 0))
    listener.settimeout(0.1)
    stop = threading.Event()

    def serve():
        end = time.monotonic() + HANDLER_SECONDS
        while not stop.is_set() and time.monotonic() < end:
            try:
                connection, _ = listener.accept()
            except TimeoutError:
                continue
            with connection:
                connection.settimeout(1.0)
                try:
                    connection.recv(4096)  # the client hello
                    connection.sendall(b"\x16\x03\x03\x40\x00")  # a 16 KiB handshake record follows...
                    while not stop.wait(0.1) and time.monotonic() < end:
                        connection.sendall(b"\x00")  # ...slowly
                except OSError:
                    pass

    thread = threading.Thread(target=serve, daemon=True)
    thread.start()
    yield f"https://127.0.0.1:{listener.getsockname()[1]}/v1"
    stop.set()
    thread.join(5)
    listener.close()


def test_a_trickled_tls_handshake_ends_at_the_attempt_deadline(tls_trickler):
    judge = APIJudgeScorer(tls_trickler, "judge", timeout=1.0, max_retries=0)
    elapsed = _timed_failure(judge, r"timed out \(timeout=1.0 s\)")
    assert 1.0 <= elapsed < 1.0 + SLACK


def test_default_total_timeout_is_the_longest_the_attempts_and_waits_can_take():
    judge = APIJudgeScorer("http://127.0.0.1:9/v1", "judge", timeout=2.0, max_retries=3, max_backoff=5.0)
    assert judge.total_timeout == 4 * 2.0 + 3 * 5.0
    assert judge.max_response_bytes == MAX_RESPONSE_BYTES


# --- the response size cap -------------------------------------------------------------------------------------------


@pytest.mark.parametrize("status, content_length, match", [
    (200, True, "announced a 67108864-byte reply"),
    (200, False, "over `max_response_bytes`"),
    (400, False, "HTTP 400"),
], ids=["content_length", "until_close", "error_body"])
def test_an_oversized_reply_is_refused_without_reading_it(serve, received, status, content_length, match):
    server = serve(oversized(64 * 2**20, status, content_length))
    judge = APIJudgeScorer(server.base_url, "judge", max_retries=0, timeout=10)
    elapsed = _timed_failure(judge, match)
    assert sum(received) < MAX_RESPONSE_BYTES + CHUNK
    assert elapsed < 5


def test_the_cap_admits_a_reply_of_exactly_max_response_bytes(serve):
    body = json.dumps(_completion()).encode()
    server = serve(reply(body=body + b" " * 100), reply(body=body + b" " * 101))
    judge = APIJudgeScorer(server.base_url, "judge", use_logprobs=False, max_response_bytes=len(body) + 100,
                           max_retries=0)
    assert _rate(judge) == 7.0
    with pytest.raises(JudgeAPIError, match=rf"over `max_response_bytes` \({len(body) + 100}\)"):
        _rate(judge)


# --- Retry-After -----------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("retry_after, wait", [
    ("nan", 0.05), ("-nan", 0.05), ("inf", 0.05), ("1e400", 0.05), ("soon", 0.05),  # unreadable: the backoff
    ("-5", 0.0), ("Fri, 31 Dec 1999 23:59:59 GMT", 0.0),  # in the past: at once
    ("99999999", 0.6), ("Fri, 31 Dec 9999 23:59:59 GMT", 0.6),  # huge: `max_backoff`
])
def test_retry_after_is_read_safely_and_clamped(serve, retry_after, wait):
    server = serve(reply(503, b"busy", [("Retry-After", retry_after)]), reply())
    judge = APIJudgeScorer(server.base_url, "judge", use_logprobs=False, backoff=0.05, max_backoff=0.6)
    start = time.monotonic()
    assert _rate(judge) == 7.0
    assert wait <= time.monotonic() - start < wait + 0.3
    assert len(server.requests) == 2 and judge.num_retries == 1


def test_a_retry_due_past_total_timeout_fails_at_once(serve):
    server = serve(reply(503, b"busy", [("Retry-After", "3600")]), reply())
    judge = APIJudgeScorer(server.base_url, "judge", max_backoff=600, total_timeout=2.0)
    elapsed = _timed_failure(judge, r"HTTP 503 on attempt 1 of 4.*due in 600.00 s.*`total_timeout` \(2.0 s\)")
    assert elapsed < 0.5 and len(server.requests) == 1


def test_http_500_then_success_is_retried(serve):
    server = serve(reply(500, b'{"error": "internal"}'), reply())
    judge = APIJudgeScorer(server.base_url, "judge", use_logprobs=False, backoff=0.01)
    assert _rate(judge) == 7.0
    assert len(server.requests) == 2 and judge.num_retries == 1


def test_redirects_are_not_followed(serve):
    server = serve(reply(302, b"moved", [("Location", "/elsewhere")]))
    with pytest.raises(JudgeAPIError, match="HTTP 302"):
        _rate(APIJudgeScorer(server.base_url, "judge", api_key="sk-secret"))
    assert server.requests == ["POST /v1/chat/completions"]


# --- malformed replies -----------------------------------------------------------------------------------------------


@pytest.mark.parametrize("body", [
    pytest.param(b"<html>proxy error</html>", id="html"),
    pytest.param(b"", id="empty"),
    pytest.param(b'{"choices": [\x80\x81]}', id="not_utf8"),
    pytest.param(b"[" * 100_000, id="nested_too_deep"),
    pytest.param(b'{"n": ' + b"1" * 5000 + b"}", id="5000_digit_integer"),
])
def test_a_body_that_is_not_json_raises_judge_api_error(serve, body):
    server = serve(reply(body=body))
    with pytest.raises(JudgeAPIError, match="invalid JSON"):
        _rate(APIJudgeScorer(server.base_url, "judge"))


@pytest.mark.parametrize("body", [
    pytest.param({"error": {"message": "quota"}}, id="error_object"),
    pytest.param([], id="list"),
    pytest.param(None, id="null"),
    pytest.param({"choices": []}, id="no_choice"),
    pytest.param({"choices": "7"}, id="choices_string"),
    pytest.param({"choices": [{"message": None}]}, id="null_message"),
    pytest.param({"choices": [{"text": "7"}]}, id="completion_not_chat"),
])
def test_a_reply_without_choices_raises_judge_api_error(serve, body):
    server = serve(reply(body=json.dumps(body).encode()))
    with pytest.raises(JudgeAPIError, match=r"Not a chat-completion response \(no choices\[0\].message.content\)"):
        _rate(APIJudgeScorer(server.base_url, "judge"))


@pytest.mark.parametrize("content", [7, 7.5, True, ["7"], {"text": "7"}, [{"type": "text", "text": "7"}]])
def test_non_string_content_raises_judge_api_error(serve, content):
    server = serve(reply(body=_completion(content)))
    with pytest.raises(JudgeAPIError, match="content is a .*, not a string"):
        _rate(APIJudgeScorer(server.base_url, "judge"))


def test_null_content_and_out_of_range_ratings_score_nan_and_are_counted(serve):
    server = serve(reply(body=_completion(None)), reply(body=_completion("12")), reply(body=_completion("0")),
                   reply(body=_completion("-3", _top(("10", 0.9), ("0", 0.1)))))
    judge = APIJudgeScorer(server.base_url, "judge")
    scores = judge.score(["5+3=?"], [["a", "b", "c", "d"]])[0]
    assert all(math.isnan(score) for score in scores)
    assert judge.num_parse_failures == 4 and judge.num_malformed_logprobs == 0


MALFORMED_LOGPROBS = [
    pytest.param("7", id="logprobs_string"),
    pytest.param([{"token": "7", "logprob": 0.0}], id="logprobs_list"),
    pytest.param({"content": "7"}, id="content_string"),
    pytest.param({"content": [7]}, id="content_entry_number"),
    pytest.param({"content": [{"logprob": 0.0}]}, id="token_missing"),
    pytest.param({"content": [{"token": 7, "top_logprobs": []}]}, id="token_number"),
    pytest.param({"content": [{"token": "7", "top_logprobs": "7"}]}, id="top_logprobs_string"),
    pytest.param({"content": [{"token": "7", "top_logprobs": [["7", 0.0]]}]}, id="top_entry_list"),
    pytest.param({"content": [{"token": "7", "top_logprobs": [{"token": "7"}]}]}, id="logprob_missing"),
    pytest.param({"content": [{"token": "7", "top_logprobs": [{"token": "7", "logprob": "-0.1"}]}]},
                 id="logprob_string"),
    pytest.param({"content": [{"token": "7", "top_logprobs": [{"token": "7", "logprob": 1000.0}]}]},
                 id="logprob_huge"),
    pytest.param({"content": [{"token": "7", "top_logprobs": [{"token": "7", "logprob": math.nan}]}]},
                 id="logprob_nan"),
    pytest.param({"content": [{"token": "7", "top_logprobs": [{"token": "3", "logprob": 0.5}]}]},
                 id="logprob_positive"),
]


@pytest.mark.parametrize("logprobs", MALFORMED_LOGPROBS)
def test_malformed_logprobs_fall_back_to_the_text_and_are_counted(serve, logprobs, caplog):
    server = serve(reply(body=_completion("7", logprobs)))
    judge = APIJudgeScorer(server.base_url, "judge")
    assert _rate(judge) == 7.0
    assert judge.num_malformed_logprobs == 1 and judge.num_parse_failures == 0
    assert "log-probs are malformed" in caplog.text
    assert parse_judge_rating(_completion("7", logprobs), 1, 9) == 7.0


def test_well_formed_logprobs_still_give_the_expected_rating(serve):
    other_digits = _top(("7", 0.5), ("²", 0.2), ("٣", 0.2), ("3", 0.1))  # a superscript and an Arabic-Indic digit
    server = serve(reply(body=_completion("7", other_digits)))
    judge = APIJudgeScorer(server.base_url, "judge")
    assert _rate(judge) == pytest.approx((7 * 0.5 + 3 * 0.1) / 0.6)
    assert judge.num_malformed_logprobs == 0


# --- configuration ---------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("kwargs, match", [
    ({"total_timeout": 0}, "total_timeout"),
    ({"total_timeout": math.inf}, "total_timeout"),
    ({"timeout": math.nan}, "timeout > 0"),
    ({"max_response_bytes": 0}, "max_response_bytes"),
    ({"max_response_bytes": 1.5}, "max_response_bytes"),
])
def test_bad_limits_are_refused(kwargs, match):
    with pytest.raises(ValueError, match=match):
        APIJudgeScorer("http://127.0.0.1:9/v1", "judge", **kwargs)

