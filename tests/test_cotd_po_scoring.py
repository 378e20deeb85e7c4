"""CoTD-PO teacher scorers (spec §2.9, §9.6) on tiny models, and the API judge against a real local HTTP server."""

import json
import math
import re
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest
import reference_cotd_po as ref
import torch
from transformers import GPT2Config, GPT2LMHeadModel, Qwen2Config, Qwen2ForSequenceClassification

from trl_reasoning_distill.cotd_po import (
    APIJudgeScorer,
    JudgeAPIError,
    LogProbTeacherScorer,
    RewardModelScorer,
    TeacherScorer,
    ToyCorrectnessScorer,
    parse_judge_rating,
    rescale_rewards,
)
from trl_reasoning_distill.toy import load_toy_teacher, load_toy_tokenizer, parse_problem, solution, toy_dataset
from trl_reasoning_distill.toy.models import padded_vocab_size

PROMPTS = ["47+38-19=?", [{"role": "user", "content": "5+3=?"}], "12-30+4=?"]
CANDIDATES = [
    ["<think>47+38=85\n85-19=66</think>\\boxed{66}", "\\boxed{65}", "no idea"],
    ["\\boxed{8}"],
    ["<think>12-30=-18\n-18+4=-14</think>\\boxed{-14}", "<think>12-30=18</think>\\boxed{22}", "", "\\boxed{-14}"],
]


def _encode(tokenizer, text):
    return tokenizer(text, add_special_tokens=False)["input_ids"]


def _messages(prompt):
    return [{"role": "user", "content": prompt}] if isinstance(prompt, str) else prompt


def _context_ids(tokenizer, prompt, rationale=""):
    text = tokenizer.apply_chat_template(_messages(prompt), tokenize=False, add_generation_prompt=True)
    return _encode(tokenizer, text + rationale)


def _answer_ids(tokenizer, answer):
    return _encode(tokenizer, answer) + [tokenizer.eos_token_id]


def _shape(scores):
    return [len(group) for group in scores]


# --- open-weights teacher log-likelihood (spec §9.6) ----------------------------------------------------------------


@pytest.mark.parametrize("length_normalize", [True, False])
@pytest.mark.parametrize("batch_size", [1, 3, 16])
def test_log_prob_scorer_matches_unpadded_reference(tokenizer, tiny_teacher, length_normalize, batch_size):
    scorer = LogProbTeacherScorer(tiny_teacher, tokenizer, length_normalize=length_normalize, batch_size=batch_size)
    rationales = ["My thought: add then subtract.My answer:", "", "My thought: left to right.My answer:"]
    scores = scorer.score(PROMPTS, CANDIDATES, rationales)
    assert _shape(scores) == _shape(CANDIDATES)
    for prompt, rationale, group, row in zip(PROMPTS, rationales, CANDIDATES, scores):
        context = _context_ids(tokenizer, prompt, rationale)
        for answer, value in zip(group, row):
            total, mean = ref.teacher_log_likelihood_ref(tiny_teacher, context, _answer_ids(tokenizer, answer))
            assert value == pytest.approx(mean if length_normalize else total, rel=1e-5, abs=1e-5)


def test_log_prob_scorer_gives_absolute_position_models_their_own_positions(tokenizer):
    """RoPE is blind to the shift that left padding causes; GPT-2's learned absolute positions are not, so batched
    scores equal unpadded ones only if each row's positions start at 0."""
    torch.manual_seed(4)
    config = GPT2Config(vocab_size=padded_vocab_size(len(tokenizer), 16), n_positions=256, n_embd=32, n_layer=2,
                        n_head=4, pad_token_id=tokenizer.pad_token_id, eos_token_id=tokenizer.eos_token_id)
    model = GPT2LMHeadModel(config).eval()  # no dropout in the reference's forward either
    scores = LogProbTeacherScorer(model, tokenizer, batch_size=8).score(PROMPTS, CANDIDATES)
    for prompt, group, row in zip(PROMPTS, CANDIDATES, scores):
        context = _context_ids(tokenizer, prompt)
        for answer, value in zip(group, row):
            _, mean = ref.teacher_log_likelihood_ref(model, context, _answer_ids(tokenizer, answer))
            assert value == pytest.approx(mean, rel=1e-5, abs=1e-5)


def test_log_prob_scorer_conditions_on_the_rationale_and_restores_training_mode(tokenizer, tiny_teacher):
    tiny_teacher.train()
    scorer = LogProbTeacherScorer(tiny_teacher, tokenizer)
    plain = scorer.score(PROMPTS[:1], CANDIDATES[:1])
    with_rationale = scorer.score(PROMPTS[:1], CANDIDATES[:1], ["My thought: 47+38=85My answer:"])
    assert all(abs(a - b) > 1e-4 for a, b in zip(plain[0], with_rationale[0]))
    assert tiny_teacher.training


def test_log_prob_scorer_without_eos_and_length_errors(tokenizer, tiny_teacher):
    scorer = LogProbTeacherScorer(tiny_teacher, tokenizer, append_eos=False)
    scores = scorer.score(PROMPTS[2:], CANDIDATES[2:])
    assert math.isnan(scores[0][2])  # the empty answer has no token to score
    context = _context_ids(tokenizer, PROMPTS[2])
    _, mean = ref.teacher_log_likelihood_ref(tiny_teacher, context, _encode(tokenizer, CANDIDATES[2][0]))
    assert scores[0][0] == pytest.approx(mean, rel=1e-5)
    with pytest.raises(ValueError, match="max_length"):
        LogProbTeacherScorer(tiny_teacher, tokenizer, max_length=20).score(PROMPTS[:1], CANDIDATES[:1])
    with pytest.raises(ValueError, match="candidate lists"):
        scorer.score(PROMPTS, CANDIDATES[:2])


@pytest.fixture(scope="module")
def toy_teacher():
    return load_toy_teacher()


@pytest.fixture(scope="module")
def toy_tokenizer():
    return load_toy_tokenizer()


def _toy_problems(n=6, seed=3):
    rows = toy_dataset("test", n=n, seed=seed)
    return [row["prompt"] for row in rows], [parse_problem(row["prompt"][0]["content"]) for row in rows]


def _wrong(problem):
    return solution(problem, "ltr").replace(f"\\boxed{{{problem.answer}}}", f"\\boxed{{{problem.answer + 7}}}")


def test_trained_toy_teacher_prefers_correct_solutions(toy_teacher, toy_tokenizer):
    prompts, problems = _toy_problems()
    candidates = [[solution(p, "ltr"), _wrong(p)] for p in problems]
    scores = LogProbTeacherScorer(toy_teacher, toy_tokenizer, batch_size=4).score(prompts, candidates)
    assert all(correct > wrong for correct, wrong in scores)


# --- sequence reward model (paper §2.9) -----------------------------------------------------------------------------


def _tiny_reward_model(tokenizer, num_labels=1, pad=True):
    torch.manual_seed(5)
    config = Qwen2Config(
        vocab_size=padded_vocab_size(len(tokenizer), 16), hidden_size=32, intermediate_size=64, num_hidden_layers=2,
        num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=256, num_labels=num_labels,
        pad_token_id=tokenizer.pad_token_id if pad else None,
    )
    return Qwen2ForSequenceClassification(config)


def _chat_ids(tokenizer, prompt, answer):
    chat = [*_messages(prompt), {"role": "assistant", "content": answer}]
    return _encode(tokenizer, tokenizer.apply_chat_template(chat, tokenize=False))


@pytest.mark.parametrize("batch_size", [1, 4])
def test_reward_model_scorer_matches_unpadded_reference(tokenizer, batch_size):
    model = _tiny_reward_model(tokenizer)
    scores = RewardModelScorer(model, tokenizer, batch_size=batch_size).score(PROMPTS, CANDIDATES)
    assert _shape(scores) == _shape(CANDIDATES)
    for prompt, group, row in zip(PROMPTS, CANDIDATES, scores):
        for answer, value in zip(group, row):
            assert value == pytest.approx(ref.reward_model_ref(model, _chat_ids(tokenizer, prompt, answer)), abs=1e-5)
    assert len({v for row in scores for v in row}) > 1  # a random RM still tells answers apart


def test_reward_model_never_sees_the_rationale(tokenizer):
    scorer = RewardModelScorer(_tiny_reward_model(tokenizer), tokenizer)
    assert scorer.score(PROMPTS, CANDIDATES) == scorer.score(PROMPTS, CANDIDATES, ["My thought: x"] * 3)


def test_reward_model_loads_from_a_local_directory(tokenizer, tmp_path):
    model = _tiny_reward_model(tokenizer)
    model.save_pretrained(tmp_path)
    tokenizer.save_pretrained(tmp_path)
    loaded = RewardModelScorer.from_pretrained(str(tmp_path), dtype=torch.float32)
    # next to a Qwen2 config, AutoTokenizer loads the toy tokenizer as a Qwen2 one: compare with the loaded tokenizer
    expected = RewardModelScorer(model, loaded.tokenizer).score(PROMPTS, CANDIDATES)
    for row, expected_row in zip(loaded.score(PROMPTS, CANDIDATES), expected):
        assert row == pytest.approx(expected_row, abs=1e-6)


def test_reward_model_scorer_errors(tokenizer):
    with pytest.raises(ValueError, match="one scalar score"):
        RewardModelScorer(_tiny_reward_model(tokenizer, num_labels=2), tokenizer).score(PROMPTS, CANDIDATES)
    with pytest.raises(ValueError, match="pad_token_id"):
        RewardModelScorer(_tiny_reward_model(tokenizer, pad=False), tokenizer, batch_size=2)
    with pytest.raises(ValueError, match="max_length"):
        RewardModelScorer(_tiny_reward_model(tokenizer), tokenizer, max_length=10).score(PROMPTS, CANDIDATES)


# --- toy correctness (verify/) --------------------------------------------------------------------------------------


def test_toy_correctness_scorer_against_the_dataset_answers():
    rows = toy_dataset("validation", n=8, seed=1)
    prompts = [row["prompt"] for row in rows]
    candidates = []
    for row in rows:
        problem = parse_problem(row["prompt"][0]["content"])
        candidates.append([solution(problem, style) for style in ("ltr", "grouped", "verbose", "split")]
                          + [_wrong(problem), f"the answer is {row['answer']}"])
    scorer = ToyCorrectnessScorer()
    scores = scorer.score(prompts, candidates)
    for row, group, values in zip(rows, candidates, scores):
        boxed = [re.findall(r"\\boxed\{(-?\d+)\}", answer) for answer in group]
        expected = [1.0 if found and int(found[-1]) == int(row["answer"]) else 0.0 for found in boxed]
        assert values == expected == [1.0, 1.0, 1.0, 1.0, 0.0, 0.0]
    assert scorer.num_unboxed == len(rows)
    assert ToyCorrectnessScorer(correct_reward=2.0, incorrect_reward=-1.0).score(["5+3=?"], [["\\boxed{8}", "8"]]) == [
        [2.0, -1.0]]
    with pytest.raises(ValueError, match="not a toy problem"):
        scorer.score(["What is the capital of France?"], [["Paris"]])


def test_every_scorer_satisfies_the_protocol(tokenizer, tiny_teacher):
    scorers = [
        LogProbTeacherScorer(tiny_teacher, tokenizer),
        RewardModelScorer(_tiny_reward_model(tokenizer), tokenizer),
        APIJudgeScorer("http://127.0.0.1:9/v1", "judge"),
        ToyCorrectnessScorer(),
    ]
    assert all(isinstance(s, TeacherScorer) for s in scorers)
    assert not isinstance(object(), TeacherScorer)


# --- rescaling of score lists (spec §2.4) ---------------------------------------------------------------------------


@pytest.mark.parametrize("method", ["minmax", "none", "zscore"])
def test_rescale_rewards_matches_reference_on_ragged_lists(method):
    rewards = [[0.3, 2.0, math.nan, -1.0], [4.0], [], [1.0, 1.0], [7.0, -math.inf, 5.0]]
    out = rescale_rewards(rewards, method=method, scale=5.0, eps=1e-3)
    assert [len(r) for r in out] == [len(r) for r in rewards]
    for group, values in zip(rewards, out):
        if not group:
            continue
        tensor = torch.tensor([group], dtype=torch.float64)
        expected = ref.normalize_rewards_ref(tensor, torch.isfinite(tensor), method, 5.0, 1e-3)[0].tolist()
        for raw, value, exp in zip(group, values, expected):
            assert math.isnan(value) if not math.isfinite(raw) else value == pytest.approx(exp, abs=1e-12)
    assert rescale_rewards([[0.0, 1.0]])[0][1] == pytest.approx(5 / 1.001)


# --- the API judge's parsing (spec §9.6) ----------------------------------------------------------------------------


def _response(content, top=None):
    choice = {"index": 0, "message": {"role": "assistant", "content": content}, "finish_reason": "stop"}
    if top is not None:
        choice["logprobs"] = {"content": [
            {"token": " ", "logprob": -0.01, "top_logprobs": []},
            {"token": content, "logprob": -0.1, "top_logprobs": [{"token": t, "logprob": lp} for t, lp in top]},
        ]}
    return {"id": "x", "object": "chat.completion", "choices": [choice]}


def test_parse_judge_rating_from_logprobs_and_text():
    top = [("7", math.log(0.5)), (" 7", math.log(0.1)), ("3", math.log(0.2)), ("10", math.log(0.1)), ("ok", -1.0)]
    assert parse_judge_rating(_response("7", top), 1, 9) == pytest.approx((7 * 0.6 + 3 * 0.2) / 0.8)
    assert parse_judge_rating(_response("7", top), 1, 9, use_logprobs=False) == 7.0
    assert parse_judge_rating(_response("Rating: 4/9", [("Rating", 0.0)]), 1, 9) == 4.0  # no rating token: text
    assert math.isnan(parse_judge_rating(_response("12"), 1, 9))
    assert math.isnan(parse_judge_rating(_response("cannot say"), 1, 9))
    with pytest.raises(JudgeAPIError, match="chat-completion"):
        parse_judge_rating({"error": "nope"}, 1, 9)


def test_api_judge_rejects_bad_configuration():
    with pytest.raises(ValueError, match="single-digit"):
        APIJudgeScorer("http://127.0.0.1:9/v1", "judge", rating_scale=(1, 10))
    with pytest.raises(ValueError, match="base_url"):
        APIJudgeScorer("127.0.0.1:9/v1", "judge")
    with pytest.raises(ValueError, match="instruction"):
        APIJudgeScorer("http://127.0.0.1:9/v1", "judge", prompt_template="rate {answer}")


# --- the API judge against a real HTTP server ------------------------------------------------------------------------

JUDGE_REQUEST = re.compile(r"\[Instruction\]\n(.*)\n\n\[Answer\]\n(.*)\n\nRate the answer on a scale from (\d+) to "
                           r"(\d+)", re.DOTALL)


class _JudgeServer(ThreadingHTTPServer):
    daemon_threads = True

    def __init__(self, scorer_fn):
        super().__init__(("127.0.0.1", 0), _JudgeHandler)
        self.scorer_fn = scorer_fn  # (instruction, answer, low, high) -> (reply text, top logprobs or None)
        self.requests: list[dict] = []
        self.failures: list[tuple[int, bytes]] = []  # (status, body) served before any success
        self.hang = False
        self.release = threading.Event()
        self.lock = threading.Lock()

    @property
    def base_url(self):
        return f"http://127.0.0.1:{self.server_address[1]}/v1"

    def handle_error(self, request, client_address):  # a client that gave up (timeout test) is not an error here
        pass


class _JudgeHandler(BaseHTTPRequestHandler):
    def log_message(self, *args):
        pass

    def _send(self, status, body, headers=()):
        self.send_response(status)
        for name, value in headers:
            self.send_header(name, value)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def do_POST(self):
        server = self.server
        body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
        with server.lock:
            server.requests.append({"path": self.path, "body": body, "auth": self.headers.get("Authorization")})
            failure = server.failures.pop(0) if server.failures else None
        if server.hang:
            server.release.wait(10)
            return
        if failure is not None:
            self._send(failure[0], failure[1], [("Retry-After", "0")])
            return
        if self.path != "/v1/chat/completions":
            self._send(404, b'{"error": "not found"}')
            return
        instruction, answer, low, high = JUDGE_REQUEST.search(body["messages"][0]["content"]).groups()
        with server.lock:
            text, top = server.scorer_fn(instruction, answer, int(low), int(high))
        self._send(200, json.dumps(_response(text, top if body.get("logprobs") else None)).encode(),
                   [("Content-Type", "application/json")])


@pytest.fixture
def judge_server():
    servers = []

    def start(scorer_fn):
        server = _JudgeServer(scorer_fn)
        threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True).start()
        servers.append(server)
        return server

    yield start
    for server in servers:
        server.release.set()
        server.shutdown()
        server.server_close()


def _toy_teacher_rating(teacher, tokenizer):
    """The toy teacher as a judge: P(rating `high`) = its mean per-token probability of the answer (geometric mean),
    the rest on `low`; the expected rating is `low + (high - low) · exp(mean log-likelihood)`."""

    def rate(instruction, answer, low, high):
        context = _context_ids(tokenizer, instruction)
        _, mean = ref.teacher_log_likelihood_ref(teacher, context, _answer_ids(tokenizer, answer))
        p = math.exp(mean)
        top = [(str(high), math.log(p)), (str(low), math.log1p(-p)), ("The", -5.0)]
        return str(high if p >= 0.5 else low), top

    return rate


def test_api_judge_scores_with_the_toy_teacher_behind_a_real_server(judge_server, toy_teacher, toy_tokenizer):
    server = judge_server(_toy_teacher_rating(toy_teacher, toy_tokenizer))
    prompts, problems = _toy_problems(n=4)
    candidates = [[solution(p, "ltr"), _wrong(p), solution(p, "verbose")] for p in problems]
    judge = APIJudgeScorer(server.base_url, "toy-teacher", api_key="sk-test", timeout=10, num_workers=3)
    scores = judge.score(prompts, candidates, rationales=["SECRET RATIONALE"] * 4)
    for prompt, group, row in zip(prompts, candidates, scores):
        context = _context_ids(toy_tokenizer, prompt)
        for answer, value in zip(group, row):
            _, mean = ref.teacher_log_likelihood_ref(toy_teacher, context, _answer_ids(toy_tokenizer, answer))
            assert value == pytest.approx(1 + 8 * math.exp(mean), rel=1e-9)
    # the judge ranks answers as the teacher's own log-likelihood does
    likelihoods = LogProbTeacherScorer(toy_teacher, toy_tokenizer).score(prompts, candidates)
    for row, own in zip(scores, likelihoods):
        assert sorted(range(3), key=row.__getitem__) == sorted(range(3), key=own.__getitem__)
    assert all(row[0] > row[1] for row in scores)  # correct over wrong
    assert len(server.requests) == 12 and judge.num_requests == 12 and judge.num_retries == 0
    request = server.requests[0]
    assert request["path"] == "/v1/chat/completions" and request["auth"] == "Bearer sk-test"
    assert request["body"]["model"] == "toy-teacher" and request["body"]["logprobs"] is True
    assert request["body"]["top_logprobs"] == 20 and request["body"]["temperature"] == 0.0
    assert not any("SECRET" in json.dumps(r["body"]) for r in server.requests)  # the judge never sees the rationale


def _correctness_rating(instruction, answer, low, high):
    """The toy world's exact correctness as a text-only judge."""
    found = re.findall(r"\\boxed\{(-?\d+)\}", answer)
    correct = bool(found) and int(found[-1]) == parse_problem(instruction).answer
    return str(high if correct else low), None


def test_api_judge_parses_text_ratings_and_counts_failures(judge_server):
    def rate(instruction, answer, low, high):
        return ("I would rather not say.", None) if "refuse" in answer else _correctness_rating(
            instruction, answer, low, high)

    server = judge_server(rate)
    judge = APIJudgeScorer(server.base_url, "judge", use_logprobs=False, rating_scale=(0, 10))
    scores = judge.score(["5+3=?", "9-4=?"], [["\\boxed{8}", "\\boxed{9}", "refuse"], ["\\boxed{5}"]])
    assert scores[0][:2] == [10.0, 0.0] and math.isnan(scores[0][2]) and scores[1] == [10.0]
    assert judge.num_parse_failures == 1
    assert "logprobs" not in server.requests[0]["body"] and server.requests[0]["auth"] is None


def test_api_judge_retries_transient_errors_then_succeeds(judge_server):
    server = judge_server(_correctness_rating)
    server.failures = [(503, b'{"error": "overloaded"}'), (429, b'{"error": "slow down"}')]
    judge = APIJudgeScorer(server.base_url, "judge", backoff=0.01, max_retries=2)
    assert judge.score(["5+3=?"], [["\\boxed{8}"]]) == [[9.0]]
    assert len(server.requests) == 3 and judge.num_retries == 2


def test_api_judge_gives_up_after_the_last_retry(judge_server):
    server = judge_server(_correctness_rating)
    server.failures = [(503, b"busy")] * 3
    judge = APIJudgeScorer(server.base_url, "judge", backoff=0.0, max_retries=1)
    with pytest.raises(JudgeAPIError, match="HTTP 503.*attempt 2 of 2"):
        judge.score(["5+3=?"], [["\\boxed{8}"]])
    assert len(server.requests) == 2


def test_api_judge_does_not_retry_client_errors(judge_server):
    server = judge_server(_correctness_rating)
    server.failures = [(400, b'{"error": "bad model"}')]
    with pytest.raises(JudgeAPIError, match="HTTP 400.*bad model"):
        APIJudgeScorer(server.base_url, "judge", backoff=0.0).score(["5+3=?"], [["\\boxed{8}"]])
    assert len(server.requests) == 1


def test_api_judge_reports_invalid_json(judge_server):
    server = judge_server(lambda *args: ("9", None))
    server.failures = [(200, b"<html>proxy error</html>")]
    with pytest.raises(JudgeAPIError, match="invalid JSON"):
        APIJudgeScorer(server.base_url, "judge", backoff=0.0).score(["5+3=?"], [["\\boxed{8}"]])


def test_api_judge_times_out_on_a_hanging_server(judge_server):
    server = judge_server(_correctness_rating)
    server.hang = True
    judge = APIJudgeScorer(server.base_url, "judge", timeout=0.3, max_retries=1, backoff=0.0)
    start = time.monotonic()
    with pytest.raises(JudgeAPIError, match=r"timed out \(timeout=0.3 s\) on each of 2 attempts"):
        judge.score(["5+3=?"], [["\\boxed{8}"]])
    assert 0.5 < time.monotonic() - start < 5
    assert len(server.requests) == 2


def test_api_judge_reports_an_unreachable_server(judge_server):
    server = judge_server(_correctness_rating)
    url = server.base_url
    server.shutdown()
    server.server_close()
    with pytest.raises(JudgeAPIError, match="failed.*2 attempts"):
        APIJudgeScorer(url, "judge", max_retries=1, backoff=0.0, timeout=2).score(["5+3=?"], [["\\boxed{8}"]])
