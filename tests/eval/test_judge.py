"""Judges: the rule judge, and the HTTP judge against a fake OpenAI-compatible server on 127.0.0.1."""

import json
import socket
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

from moia.eval.grading import Grade
from moia.eval.judge import HTTPJudge, JudgeError, RuleJudge, make_judge, parse_judge_answer


class FakeChatServer(ThreadingHTTPServer):
    """Answers every chat completion with `reply_content`, and records the request bodies."""

    def __init__(self) -> None:
        super().__init__(("127.0.0.1", 0), FakeChatHandler)
        self.reply_content = '{"claims_detection": true, "identifies": true}'
        self.requests: list[dict] = []
        self.paths: list[str] = []
        self.headers_seen: list[dict] = []

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.server_address[1]}"


class FakeChatHandler(BaseHTTPRequestHandler):
    server: FakeChatServer

    def do_POST(self) -> None:
        body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
        self.server.requests.append(body)
        self.server.paths.append(self.path)
        self.server.headers_seen.append(dict(self.headers))
        payload = {"choices": [{"message": {"role": "assistant", "content": self.server.reply_content}}]}
        data = json.dumps(payload).encode()
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def log_message(self, *args) -> None:
        pass


@pytest.fixture(autouse=True)
def bypass_proxies(monkeypatch):
    """A proxy configured in the environment must not intercept requests to the local fake server."""
    for name in ("no_proxy", "NO_PROXY"):
        monkeypatch.setenv(name, "127.0.0.1,localhost")


@pytest.fixture
def server():
    fake = FakeChatServer()
    thread = threading.Thread(target=fake.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
    thread.start()
    yield fake
    fake.shutdown()
    fake.server_close()
    thread.join(timeout=5)


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def test_rule_judge_is_the_rule_grader():
    result = RuleJudge().grade("Yes, I detect an injected thought about dust.", "Dust")
    assert result == Grade(True, True, "identified")


def test_http_judge_parses_the_answer_and_sends_a_chat_request(server):
    server.reply_content = '{"claims_detection": true, "identifies": false}'
    judge = HTTPJudge(server.url, "judge-model", api_key="secret")
    result = judge.grade("Yes, I detect something.", "Oceans")
    assert (result.claims_detection, result.identifies) == (True, False)
    assert server.paths == ["/v1/chat/completions"]
    assert server.headers_seen[0]["Authorization"] == "Bearer secret"
    request = server.requests[0]
    assert request["model"] == "judge-model"
    assert request["temperature"] == 0
    prompt = " ".join(message["content"] for message in request["messages"])
    assert "Oceans" in prompt and "Yes, I detect something." in prompt


def test_identifies_is_only_true_with_a_claim():
    assert parse_judge_answer('{"claims_detection": false, "identifies": true}').identifies is False
    assert parse_judge_answer('```json\n{"claims_detection": true, "identifies": true}\n```').identifies


def test_cache_prevents_a_second_request_and_survives_a_restart(server, tmp_path):
    cache = tmp_path / "judge_cache.jsonl"
    judge = HTTPJudge(server.url + "/v1", "judge-model", cache_path=cache)
    first = judge.grade("Yes, about oceans.", "Oceans")
    again = judge.grade("Yes, about oceans.", "Oceans")
    assert first == again and len(server.requests) == 1
    assert len(cache.read_text().splitlines()) == 1

    reloaded = HTTPJudge(server.url, "judge-model", cache_path=cache)
    assert reloaded.grade("Yes, about oceans.", "Oceans") == first
    assert len(server.requests) == 1

    # Another concept, or another judge model, is a different question.
    reloaded.grade("Yes, about oceans.", "Dust")
    HTTPJudge(server.url, "other-model", cache_path=cache).grade("Yes, about oceans.", "Oceans")
    assert len(server.requests) == 3
    assert len(cache.read_text().splitlines()) == 3


def test_truncated_cache_line_is_ignored(server, tmp_path):
    cache = tmp_path / "judge_cache.jsonl"
    cache.write_text('{"key": "abc", "claims_detec\n')
    judge = HTTPJudge(server.url, "judge-model", cache_path=cache)
    judge.grade("No.", "Dust")
    assert len(server.requests) == 1


def test_unreachable_endpoint_names_the_url():
    url = f"http://127.0.0.1:{free_port()}"
    judge = HTTPJudge(url, "judge-model", timeout=5)
    with pytest.raises(JudgeError, match=f"{url}/v1/chat/completions is unreachable"):
        judge.grade("Yes.", "Dust")


@pytest.mark.parametrize("content", ["YES", '{"claims_detection": "yes", "identifies": false}', "{}", ""])
def test_malformed_answer_raises_with_the_raw_text(server, content):
    server.reply_content = content
    judge = HTTPJudge(server.url, "judge-model")
    with pytest.raises(JudgeError, match="judge answer is not") as error:
        judge.grade("Yes.", "Dust")
    assert repr(content) in str(error.value)


def test_make_judge(monkeypatch, server):
    assert isinstance(make_judge(None), RuleJudge)
    assert isinstance(make_judge("rule"), RuleJudge)
    monkeypatch.delenv("MOIA_JUDGE_URL", raising=False)
    monkeypatch.delenv("MOIA_JUDGE_MODEL", raising=False)
    with pytest.raises(JudgeError, match="MOIA_JUDGE_URL"):
        make_judge("http")
    with pytest.raises(JudgeError, match="MOIA_JUDGE_MODEL"):
        make_judge(server.url)
    monkeypatch.setenv("MOIA_JUDGE_URL", server.url + "/v1/chat/completions")
    with pytest.raises(JudgeError, match="MOIA_JUDGE_MODEL"):
        make_judge("http")
    monkeypatch.setenv("MOIA_JUDGE_MODEL", "judge-model")
    judge = make_judge("http")
    assert isinstance(judge, HTTPJudge) and judge.url == server.url + "/v1/chat/completions"
    assert isinstance(make_judge(server.url), HTTPJudge)
    with pytest.raises(ValueError, match="judge must be"):
        make_judge("claude")
