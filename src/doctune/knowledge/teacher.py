"""Question/answer pairs and rephrasings from a teacher model behind any OpenAI-compatible
chat endpoint (Ollama, llama.cpp's server, vLLM, hosted APIs), through the ``openai`` client.

Per section of the docs the teacher is asked for JSON holding question/answer pairs and
rephrasings (``response_format`` with a JSON schema; when the server refuses that, plain
content from which the JSON object is read). A pair is kept only when its answer is a
verbatim span of the section, compared with white space collapsed and case folded; the
others are counted as dropped. Rate limits (429), server errors (5xx), timeouts and
connection errors are retried with exponential backoff.

The API key comes only from the environment: ``TeacherConfig.api_key_env`` (default
``DOCTUNE_TEACHER_API_KEY``), else ``OPENAI_API_KEY``; a local server that needs none gets
a placeholder. The key is never written to a file and is removed from any error message.

Cache: one JSON file per (section text hash, teacher model, :data:`PROMPT_VERSION`, counts
asked) under ``cache_dir``, written atomically as each section finishes, so an interrupted
run loses nothing and a re-run after a docs change asks only about changed sections.
A cache file holds ``model``, ``prompt_version``, ``section_hash``, ``doc``, ``section``,
``qa`` (kept ``{"question", "answer"}``), ``dropped`` (pairs whose answer the section does
not support) and ``rephrasings``.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import time
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor, as_completed
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from doctune.atomic import write_json
from doctune.errors import ConfigError, DataError
from doctune.knowledge.sections import Section

PROMPT_VERSION = "2"  # 2: rephrasings checked against the section
DEFAULT_KEY_ENV = "DOCTUNE_TEACHER_API_KEY"
FALLBACK_KEY_ENV = "OPENAI_API_KEY"
NO_KEY = "not-needed"
"""Sent when no key is set: local servers (Ollama, llama.cpp, vLLM) ignore it."""

SYSTEM_PROMPT = ("You write study material from software documentation. You only use facts "
                 "stated in the text you are given. You reply with one JSON object only.")
USER_PROMPT = """Documentation page `{doc}`, section "{title}":

<section>
{text}
</section>

Write up to {n_qa} questions that a reader can answer from this section alone. Each answer
must be short (a name, a value, a flag, a phrase) and copied word for word from the section.
Then write {n_reph} rephrasings of the whole section: the same facts in different words.
Reply as JSON: {{"qa": [{{"question": "...", "answer": "..."}}], "rephrasings": ["..."]}}"""

RESPONSE_SCHEMA: dict[str, Any] = {
    "type": "object",
    "properties": {
        "qa": {"type": "array", "items": {
            "type": "object",
            "properties": {"question": {"type": "string"}, "answer": {"type": "string"}},
            "required": ["question", "answer"], "additionalProperties": False}},
        "rephrasings": {"type": "array", "items": {"type": "string"}},
    },
    "required": ["qa", "rephrasings"],
    "additionalProperties": False,
}


@dataclass(frozen=True)
class TeacherConfig:
    """Where the teacher is and how to ask it."""

    base_url: str
    """The OpenAI-compatible API root, e.g. ``http://localhost:11434/v1`` (Ollama)."""
    model: str
    """The model name the server knows, e.g. ``qwen2.5:7b-instruct``."""
    api_key_env: str = DEFAULT_KEY_ENV
    """The environment variable holding the key (``OPENAI_API_KEY`` is the fallback)."""
    questions_per_section: int = 5
    rephrasings_per_section: int = 2
    max_workers: int = 4
    """Sections asked about at the same time."""
    max_attempts: int = 5
    """Tries per section (rate limits, server errors, timeouts, unreadable JSON)."""
    backoff_s: float = 1.0
    """The first retry waits this long, each next one twice as long (at most 60 s)."""
    timeout_s: float = 600.0
    """Seconds one request may take: a local server on a CPU writes a dozen tokens a second,
    and queues the requests beyond its slots, so a long wait is not a failure."""
    temperature: float = 0.3
    max_tokens: int = 2048

    def check(self) -> None:
        """Raise :class:`ConfigError` for an unusable setting."""
        if not self.base_url.startswith(("http://", "https://")):
            raise ConfigError(f"teacher base URL must start with http:// or https://, got "
                              f"{self.base_url!r}; e.g. http://localhost:11434/v1 for Ollama.")
        if not self.model.strip():
            raise ConfigError("teacher model name is empty; pass the name the server serves, "
                              "e.g. `qwen2.5:7b-instruct`.")
        if self.max_workers < 1 or self.max_attempts < 1:
            raise ConfigError(f"teacher max_workers and max_attempts must be >= 1, got "
                              f"{self.max_workers} and {self.max_attempts}.")


@dataclass
class SectionResult:
    """What the teacher gave for one section."""

    section: Section
    qa: list[dict[str, str]] = field(default_factory=list)
    dropped: list[dict[str, str]] = field(default_factory=list)
    rephrasings: list[str] = field(default_factory=list)
    dropped_rephrasings: list[str] = field(default_factory=list)
    cached: bool = False
    requests: int = 0
    error: str | None = None
    """Why the section has no result (after all attempts); such a section is not cached."""


def api_key(config: TeacherConfig) -> str | None:
    """The key from the environment, or None."""
    return os.environ.get(config.api_key_env) or os.environ.get(FALLBACK_KEY_ENV) or None


def open_client(config: TeacherConfig, key: str | None) -> Any:
    """An ``openai.OpenAI`` client for the teacher (no retries of its own: callers retry)."""
    from openai import OpenAI

    return OpenAI(base_url=config.base_url, api_key=key or NO_KEY, max_retries=0,
                  timeout=config.timeout_s)


def make_cache_dir(path: Path) -> None:
    """Create a teacher cache folder, or raise :class:`DataError` saying why not."""
    try:
        path.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise DataError(f"cannot create the teacher cache folder `{path}` ({e.strerror}); "
                        "pass a folder you can write to.") from e


def retry_wait(config: TeacherConfig, attempt: int) -> float:
    """Seconds to wait before try ``attempt`` (from 1): doubling from ``backoff_s``, at most 60."""
    return min(60.0, config.backoff_s * 2 ** (attempt - 1))


def _norm(text: str) -> str:
    return " ".join(text.split()).casefold()


def supported(answer: str, section_text: str) -> bool:
    """Whether ``answer`` (surrounding quotes, backticks and end punctuation removed) is a
    span of ``section_text``, white space collapsed and case folded."""
    core = answer.strip().strip("\"'`").rstrip(".;:,!").strip()
    return bool(core) and _norm(core) in _norm(section_text)


MIN_REPHRASING_WORDS = 5
GROUNDED_SHARE = 0.4


def grounded(rephrasing: str, section_text: str) -> bool:
    """Whether a rephrasing is about its section: at least :data:`MIN_REPHRASING_WORDS` words,
    and at least :data:`GROUNDED_SHARE` of its distinct words of 3+ letters found in the
    section (a rewording keeps the names and terms; an echo of the prompt's "..." or a made-up
    paragraph does not)."""
    words = re.findall(r"[a-z0-9_]+", rephrasing.lower())
    if len(words) < MIN_REPHRASING_WORDS:
        return False
    distinct = {w for w in words if len(w) >= 3}
    section = set(re.findall(r"[a-z0-9_]+", section_text.lower()))
    return bool(distinct) and len(distinct & section) >= GROUNDED_SHARE * len(distinct)


def parse_reply(content: str) -> dict[str, Any]:
    """The JSON object in a reply: the whole content, a fenced ```json block, or the text
    from the first ``{`` to the last ``}``. Raises ValueError when there is none."""
    candidates = [content]
    fence = re.search(r"```(?:json)?\s*(.*?)```", content, re.DOTALL)
    if fence:
        candidates.append(fence.group(1))
    if "{" in content:
        candidates.append(content[content.index("{"):content.rindex("}") + 1])
    for text in candidates:
        try:
            data = json.loads(text)
        except ValueError:
            continue
        if isinstance(data, dict):
            return data
    raise ValueError("the reply holds no JSON object")


def cache_key(section: Section, config: TeacherConfig) -> str:
    """The cache file's name (without ``.json``) for one section and teacher."""
    key = "\0".join((section.content_hash, config.model, PROMPT_VERSION,
                     str(config.questions_per_section), str(config.rephrasings_per_section)))
    return hashlib.sha256(key.encode("utf-8")).hexdigest()[:32]


def _scrub(message: str, key: str | None) -> str:
    return message.replace(key, "***") if key else message


def _pairs(data: dict[str, Any]) -> tuple[list[dict[str, str]], list[str]]:
    qa = [{"question": str(p["question"]).strip(), "answer": str(p["answer"]).strip()}
          for p in data.get("qa") or [] if isinstance(p, dict)
          and isinstance(p.get("question"), str) and isinstance(p.get("answer"), str)]
    reph = [r.strip() for r in data.get("rephrasings") or [] if isinstance(r, str) and r.strip()]
    return [p for p in qa if p["question"] and p["answer"]], reph


class Teacher:
    """Asks a teacher model about sections, with retries, a thread pool and the cache.

    ``client`` is an ``openai.OpenAI`` (built from the config when omitted); ``sleep`` is
    what waits between retries (tests pass one that records instead of sleeping).
    """

    def __init__(self, config: TeacherConfig, cache_dir: Path, *, client: Any = None,
                 sleep: Callable[[float], None] = time.sleep) -> None:
        config.check()
        self.config = config
        self.cache_dir = Path(cache_dir)
        self._sleep = sleep
        self._key = api_key(config)
        self._format = 0  # index into FORMATS: raised when a server refuses one
        self._client = client if client is not None else open_client(config, self._key)

    def run(self, sections: Sequence[Section],
            progress: Callable[[int, int], None] | None = None) -> list[SectionResult]:
        """Results for ``sections``, in their order; cached ones are read, not asked.

        ``progress(done, total)`` is called from this thread after each section.
        """
        make_cache_dir(self.cache_dir)
        results: list[SectionResult | None] = [None] * len(sections)
        todo = []
        for k, sec in enumerate(sections):
            hit = self._read_cache(sec)
            if hit is not None:
                results[k] = hit
            else:
                todo.append(k)
        done = len(sections) - len(todo)
        if progress and done:
            progress(done, len(sections))
        with ThreadPoolExecutor(max_workers=self.config.max_workers) as pool:
            futures = {pool.submit(self._ask, sections[k]): k for k in todo}
            for fut in as_completed(futures):
                results[futures[fut]] = fut.result()
                done += 1
                if progress:
                    progress(done, len(sections))
        return [r for r in results if r is not None]

    def _path(self, section: Section) -> Path:
        return self.cache_dir / f"{cache_key(section, self.config)}.json"

    def _read_cache(self, section: Section) -> SectionResult | None:
        path = self._path(section)
        try:
            data = json.loads(path.read_text(encoding="utf-8"))
            return SectionResult(section, qa=list(data["qa"]), dropped=list(data["dropped"]),
                                 rephrasings=list(data["rephrasings"]),
                                 dropped_rephrasings=list(data.get("dropped_rephrasings", [])),
                                 cached=True)
        except (OSError, ValueError, KeyError, TypeError):
            return None  # absent, torn or edited by hand: ask again

    def _write_cache(self, result: SectionResult) -> None:
        sec = result.section
        data = {"model": self.config.model, "prompt_version": PROMPT_VERSION,
                "section_hash": sec.content_hash, "doc": sec.doc, "section": list(sec.path),
                "qa": result.qa, "dropped": result.dropped, "rephrasings": result.rephrasings,
                "dropped_rephrasings": result.dropped_rephrasings}
        write_json(self._path(sec), data)

    def _ask(self, section: Section) -> SectionResult:
        result = SectionResult(section)
        for attempt in range(self.config.max_attempts):
            if attempt:
                self._sleep(retry_wait(self.config, attempt))
            result.requests += 1
            try:
                content = self._complete(section)
                qa, reph = _pairs(parse_reply(content))
            except ValueError as e:  # unreadable JSON: ask again
                result.error = f"{section.doc}: {e}"
                continue
            except Exception as e:
                if not _retryable(e):
                    result.error = _scrub(f"{section.doc}: {type(e).__name__}: {e}", self._key)
                    return result
                result.error = _scrub(f"{section.doc}: {type(e).__name__}: {e}", self._key)
                continue
            result.qa = [p for p in qa if supported(p["answer"], section.text)]
            result.dropped = [p for p in qa if not supported(p["answer"], section.text)]
            result.rephrasings = [r for r in reph if grounded(r, section.text)]
            result.dropped_rephrasings = [r for r in reph if not grounded(r, section.text)]
            result.error = None
            self._write_cache(result)
            return result
        return result

    def _complete(self, section: Section) -> str:
        from openai import BadRequestError, InternalServerError, UnprocessableEntityError

        cfg = self.config
        prompt = USER_PROMPT.format(doc=section.doc, title=" > ".join(section.path) or section.doc,
                                    text=section.text, n_qa=cfg.questions_per_section,
                                    n_reph=cfg.rephrasings_per_section)
        kwargs: dict[str, Any] = {
            "model": cfg.model, "temperature": cfg.temperature, "max_tokens": cfg.max_tokens,
            "messages": [{"role": "system", "content": SYSTEM_PROMPT},
                         {"role": "user", "content": prompt}]}
        while (k := self._format) < len(FORMATS) - 1:
            try:
                reply = self._client.chat.completions.create(response_format=FORMATS[k], **kwargs)
                return str(reply.choices[0].message.content or "")
            except (BadRequestError, UnprocessableEntityError, InternalServerError) as e:
                # a server that does not take this response_format: the next, simpler one.
                # (llama.cpp's Python server answers an unknown one with a 500.)
                if isinstance(e, InternalServerError) and "response_format" not in str(e):
                    raise
                self._format = max(self._format, k + 1)  # another thread may be past it
        reply = self._client.chat.completions.create(**kwargs)
        return str(reply.choices[0].message.content or "")


FORMATS: tuple[dict[str, Any] | None, ...] = (
    {"type": "json_schema", "json_schema": {"name": "study_material", "schema": RESPONSE_SCHEMA,
                                            "strict": True}},  # OpenAI, vLLM, Ollama, llama-server
    {"type": "json_object", "schema": RESPONSE_SCHEMA},  # llama-cpp-python's server
    None,  # plain text: the reply is parsed as JSON all the same
)
"""The ``response_format`` asked for, in order; a server that refuses one gets the next."""


def _retryable(error: Exception) -> bool:
    """Rate limits, server errors, timeouts and dropped connections are worth retrying."""
    import openai

    if isinstance(error, (openai.APITimeoutError, openai.APIConnectionError,
                          openai.RateLimitError)):
        return True
    return isinstance(error, openai.APIStatusError) and error.status_code >= 500
