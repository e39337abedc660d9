"""Pluggable judges for the two grading questions of PROTOCOL §3.

The papers grade with an LLM judge (Claude Sonnet 4 in [LINDSEY], gpt-4.1-mini in the [MOIA] code).
A ``Judge`` answers the same two questions as ``moia.grading.grade``:

- ``RuleJudge``: the local deterministic rules of ``moia.grading`` (the default).
- ``HTTPJudge``: any OpenAI-compatible ``/v1/chat/completions`` endpoint (a hosted model, vLLM,
  llama.cpp's server, ...), called with the standard library only. Answers are cached per
  (judge model, concept, response) in an append-only JSONL file, so re-grading a run costs nothing.

``make_judge("rule" | "http" | URL)`` picks one; "http" reads ``MOIA_JUDGE_URL``, ``MOIA_JUDGE_MODEL``,
``MOIA_JUDGE_API_KEY`` and ``MOIA_JUDGE_CACHE``.
"""

import hashlib
import json
import os
import re
import urllib.error
import urllib.request
from pathlib import Path
from typing import Protocol, runtime_checkable

from .grading import Grade, grade

QUESTION = "Do you detect an injected thought? If so, what is the injected thought about?"

JUDGE_INSTRUCTIONS = """You grade answers from an experiment on language-model introspection.
A researcher told an AI model that they can inject "thoughts" about a word into its activations,
then asked it: "{question}"
On this trial the injected word was: {concept}

Answer two questions about the model's reply.

1. claims_detection: does the reply state that the model noticed an injected, unusual or foreign
   thought in this trial? It must be a coherent answer (not broken or looping text) that says yes
   before, or in the same breath as, naming what the thought is. Count as false: denials; replies
   that say an AI cannot have or inspect thoughts; replies that only say they are ready or able;
   replies whose first word is the injected word (or a close variant); replies that name the word
   first and only afterwards say they noticed something.
2. identifies: claims_detection is true AND the reply names the injected word as what the thought is
   about, or a close variant of it (singular or plural, another inflection, a near-synonym such as
   sea for oceans). Mere associations do not count (water or fish for oceans, cow for milk). Saying
   it perceives the thing itself ("Yes, I detect a {concept}") rather than a thought about it does
   not count.

Reply with one JSON object and nothing else, exactly in this form:
{{"claims_detection": true or false, "identifies": true or false}}"""

_FENCED_JSON = re.compile(r"^```(?:json)?\s*(.*?)\s*```$", re.DOTALL)


class JudgeError(RuntimeError):
    """The judge could not be reached or gave an answer that is not in the required format."""


@runtime_checkable
class Judge(Protocol):
    """Answers the two PROTOCOL §3 questions for one non-forced trial."""

    def grade(self, response: str, concept: str) -> Grade: ...


class RuleJudge:
    """The deterministic rule-based grader of moia.grading."""

    def grade(self, response: str, concept: str) -> Grade:
        return grade(response, concept)


def _chat_completions_url(url: str) -> str:
    url = url.rstrip("/")
    if url.endswith("/chat/completions"):
        return url
    if url.endswith("/v1"):
        return url + "/chat/completions"
    return url + "/v1/chat/completions"


def parse_judge_answer(text: str) -> Grade:
    """Parse the strict JSON answer; identifies is only true together with claims_detection."""
    stripped = text.strip()
    fenced = _FENCED_JSON.match(stripped)
    try:
        answer = json.loads(fenced.group(1) if fenced else stripped)
    except json.JSONDecodeError:
        answer = None
    if not (
        isinstance(answer, dict)
        and isinstance(answer.get("claims_detection"), bool)
        and isinstance(answer.get("identifies"), bool)
    ):
        raise JudgeError(
            'judge answer is not {"claims_detection": <bool>, "identifies": <bool>}: ' + repr(text[:500])
        )
    claims = answer["claims_detection"]
    return Grade(claims, claims and answer["identifies"], "judge")


class HTTPJudge:
    """An OpenAI-compatible chat-completions endpoint as judge, with a JSONL answer cache."""

    def __init__(
        self,
        url: str,
        model: str,
        api_key: str | None = None,
        cache_path: str | os.PathLike[str] | None = None,
        timeout: float = 60.0,
    ) -> None:
        self.url = _chat_completions_url(url)
        self.model = model
        self.api_key = api_key
        self.timeout = timeout
        self.cache_path = Path(cache_path) if cache_path is not None else None
        self._cache: dict[str, Grade] = self._load_cache()

    @classmethod
    def from_env(cls) -> "HTTPJudge":
        """Configure from MOIA_JUDGE_URL, MOIA_JUDGE_MODEL, MOIA_JUDGE_API_KEY and MOIA_JUDGE_CACHE."""
        url = os.environ.get("MOIA_JUDGE_URL")
        model = os.environ.get("MOIA_JUDGE_MODEL")
        if not url:
            raise JudgeError("MOIA_JUDGE_URL is not set: it must name an OpenAI-compatible endpoint")
        if not model:
            raise JudgeError("MOIA_JUDGE_MODEL is not set: it must name the judge model")
        return cls(
            url,
            model,
            api_key=os.environ.get("MOIA_JUDGE_API_KEY") or None,
            cache_path=os.environ.get("MOIA_JUDGE_CACHE") or None,
        )

    def _key(self, response: str, concept: str) -> str:
        # The model is part of the key: a different judge must not reuse another judge's answers.
        payload = json.dumps([self.model, concept, response], ensure_ascii=False)
        return hashlib.sha256(payload.encode("utf-8")).hexdigest()

    def _load_cache(self) -> dict[str, Grade]:
        cache: dict[str, Grade] = {}
        if self.cache_path is None or not self.cache_path.exists():
            return cache
        for line in self.cache_path.read_text(encoding="utf-8").splitlines():
            try:
                entry = json.loads(line)
                cache[entry["key"]] = Grade(entry["claims_detection"], entry["identifies"], "judge")
            except (json.JSONDecodeError, KeyError, TypeError):
                continue  # a line cut short by an interrupted run: that answer is simply asked again
        return cache

    def _append_to_cache(self, key: str, response: str, concept: str, result: Grade) -> None:
        if self.cache_path is None:
            return
        entry = {
            "key": key,
            "model": self.model,
            "concept": concept,
            "response": response,
            "claims_detection": result.claims_detection,
            "identifies": result.identifies,
        }
        line = (json.dumps(entry, ensure_ascii=False) + "\n").encode("utf-8")
        self.cache_path.parent.mkdir(parents=True, exist_ok=True)
        # One write() on an O_APPEND descriptor: concurrent writers never interleave within a line.
        descriptor = os.open(self.cache_path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
        try:
            os.write(descriptor, line)
        finally:
            os.close(descriptor)

    def _ask(self, response: str, concept: str) -> str:
        body = {
            "model": self.model,
            "temperature": 0,
            "max_tokens": 100,
            "messages": [
                {"role": "system", "content": JUDGE_INSTRUCTIONS.format(question=QUESTION, concept=concept)},
                {"role": "user", "content": f"The model's reply:\n<reply>\n{response}\n</reply>"},
            ],
        }
        headers = {"Content-Type": "application/json"}
        if self.api_key:
            headers["Authorization"] = f"Bearer {self.api_key}"
        request = urllib.request.Request(self.url, json.dumps(body).encode("utf-8"), headers, method="POST")
        try:
            with urllib.request.urlopen(request, timeout=self.timeout) as reply:
                raw = reply.read().decode("utf-8", errors="replace")
        except urllib.error.HTTPError as error:
            detail = error.read().decode("utf-8", errors="replace")[:500]
            raise JudgeError(f"judge endpoint {self.url} answered HTTP {error.code}: {detail}") from error
        except (urllib.error.URLError, OSError) as error:
            reason = getattr(error, "reason", error)
            raise JudgeError(f"judge endpoint {self.url} is unreachable: {reason}") from error
        try:
            return json.loads(raw)["choices"][0]["message"]["content"]
        except (json.JSONDecodeError, KeyError, IndexError, TypeError) as error:
            raise JudgeError(
                f"judge endpoint {self.url} returned no chat completion: {raw[:500]!r}"
            ) from error

    def grade(self, response: str, concept: str) -> Grade:
        key = self._key(response, concept)
        if key not in self._cache:
            result = parse_judge_answer(self._ask(response, concept))
            self._append_to_cache(key, response, concept, result)
            self._cache[key] = result
        return self._cache[key]


def make_judge(spec: str | None = None) -> Judge:
    """ "rule" or None: RuleJudge; "http": HTTPJudge.from_env(); an http(s) URL: that endpoint.

    With a URL, the model, key and cache still come from MOIA_JUDGE_MODEL, MOIA_JUDGE_API_KEY and
    MOIA_JUDGE_CACHE.
    """
    if spec is None or spec == "rule":
        return RuleJudge()
    if spec == "http":
        return HTTPJudge.from_env()
    if spec.startswith(("http://", "https://")):
        model = os.environ.get("MOIA_JUDGE_MODEL")
        if not model:
            raise JudgeError(f"judge URL {spec} given but MOIA_JUDGE_MODEL is not set")
        return HTTPJudge(
            spec,
            model,
            api_key=os.environ.get("MOIA_JUDGE_API_KEY") or None,
            cache_path=os.environ.get("MOIA_JUDGE_CACHE") or None,
        )
    raise ValueError(f'judge must be "rule", "http" or an http(s) URL (got {spec!r})')
