"""The teacher client against a local fake OpenAI-compatible server: retries, JSON
fallbacks, answer checks, the resumable cache and the API key kept out of files."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from doctune.errors import ConfigError
from doctune.knowledge.sections import Section, split_sections
from doctune.knowledge.teacher import (
    Teacher,
    TeacherConfig,
    cache_key,
    parse_reply,
    supported,
)
from fake_openai import fake_openai

SECRET = "sk-test-SECRET-0123456789"
PORT = Section("config.md", ("Server", "server.port"),
               "## server.port\n\n- **Default:** `5173`\n\nSpecify the server port.\n", 0)
HOST = Section("config.md", ("Server", "server.host"),
               "## server.host\n\n- **Default:** `'localhost'`\n\nThe IP addresses to listen "
               "on.\n", 60)
GOOD = json.dumps({"qa": [{"question": "What is the default port?", "answer": "5173"},
                          {"question": "What is the port?", "answer": "8080"}],
                   "rephrasings": ["The port defaults to 5173."]})


@pytest.fixture(autouse=True)
def _env(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("DOCTUNE_TEACHER_API_KEY", SECRET)
    monkeypatch.delenv("OPENAI_API_KEY", raising=False)
    for var in ("HTTP_PROXY", "HTTPS_PROXY", "ALL_PROXY", "http_proxy", "https_proxy",
                "all_proxy"):
        monkeypatch.delenv(var, raising=False)


def _teacher(url: str, cache: Path, sleeps: list[float], **kw: Any) -> Teacher:
    cfg = TeacherConfig(base_url=url, model="teacher-7b", **{"max_workers": 2, **kw})
    return Teacher(cfg, cache, sleep=sleeps.append)


def test_429_then_success_with_backoff(tmp_path: Path) -> None:
    def answer(body: dict[str, Any], n: int) -> tuple[int, Any]:
        if n == 1:
            return 429, {"error": {"message": "slow down", "type": "rate_limit"}}
        return 200, GOOD

    sleeps: list[float] = []
    with fake_openai(answer) as server:
        (res,) = _teacher(server.url, tmp_path, sleeps).run([PORT])
    assert sleeps == [1.0] and res.requests == 2 and res.error is None
    assert res.qa == [{"question": "What is the default port?", "answer": "5173"}]
    assert res.dropped == [{"question": "What is the port?", "answer": "8080"}]  # not in text
    assert res.rephrasings == ["The port defaults to 5173."]
    body = server.requests[-1]
    assert body["model"] == "teacher-7b" and body["response_format"]["type"] == "json_schema"
    assert "Specify the server port." in body["messages"][1]["content"]


def test_malformed_json_is_asked_again_and_5xx_gives_up(tmp_path: Path) -> None:
    replies = iter([(200, "Sure! {\"qa\": [oops"), (200, "```json\n" + GOOD + "\n```")])
    sleeps: list[float] = []
    with fake_openai(lambda body, n: next(replies)) as server:
        (res,) = _teacher(server.url, tmp_path / "a", sleeps).run([PORT])
    assert res.requests == 2 and len(res.qa) == 1 and sleeps == [1.0]

    sleeps = []
    with fake_openai(lambda body, n: (503, {"error": {"message": "busy"}})) as server:
        (res,) = _teacher(server.url, tmp_path / "b", sleeps, max_attempts=4).run([PORT])
    assert len(server.requests) == 4 and sleeps == [1.0, 2.0, 4.0]
    assert res.qa == [] and res.error is not None and "InternalServerError" in res.error
    assert list((tmp_path / "b").iterdir()) == []  # a failed section is not cached


def test_cache_makes_a_second_run_send_nothing(tmp_path: Path) -> None:
    progress: list[tuple[int, int]] = []
    with fake_openai(lambda body, n: (200, GOOD)) as server:
        first = _teacher(server.url, tmp_path, []).run([PORT, HOST], progress=lambda d, t:
                                                       progress.append((d, t)))
        assert len(server.requests) == 2 and sorted(progress) == [(1, 2), (2, 2)]
        again = _teacher(server.url, tmp_path, []).run([PORT, HOST])
        assert len(server.requests) == 2  # zero new requests
        assert all(r.cached for r in again)
        assert [r.qa for r in again] == [r.qa for r in first]
        changed = Section(HOST.doc, HOST.path, HOST.text + "It is a string.\n", HOST.start)
        _teacher(server.url, tmp_path, []).run([PORT, changed])
        assert len(server.requests) == 3  # only the changed section
        other = TeacherConfig(base_url=server.url, model="another-model")
        assert cache_key(PORT, other) != cache_key(PORT, TeacherConfig(server.url, "teacher-7b"))


def test_key_is_sent_but_never_written_or_shown(tmp_path: Path) -> None:
    with fake_openai(lambda body, n: (200, GOOD)) as server:
        _teacher(server.url, tmp_path, []).run([PORT, HOST])
    assert server.headers[0]["authorization"] == f"Bearer {SECRET}"
    files = list(tmp_path.iterdir())
    assert len(files) == 2
    for f in files:
        text = f.read_text(encoding="utf-8")
        assert SECRET not in text and "sk-test" not in text
        data = json.loads(text)
        assert data["model"] == "teacher-7b" and data["prompt_version"] == "2"
    leak = {"error": {"message": f"Incorrect API key provided: {SECRET}"}}
    with fake_openai(lambda body, n: (401, leak)) as server:
        (res,) = _teacher(server.url, tmp_path / "x", []).run([PORT])
    assert res.error is not None and SECRET not in res.error and "***" in res.error
    assert len(server.requests) == 1  # 401 is not retried


def test_falls_back_to_plain_content_when_schema_is_refused(tmp_path: Path) -> None:
    def answer(body: dict[str, Any], n: int) -> tuple[int, Any]:
        if "response_format" in body:
            return 400, {"error": {"message": "response_format is not supported"}}
        return 200, "Here you go:\n" + GOOD
    with fake_openai(answer) as server:
        results = _teacher(server.url, tmp_path, [], max_workers=1).run([PORT, HOST])
    assert [len(r.qa) for r in results] == [1, 0]
    # json_schema refused, then json_object refused: plain content from then on
    assert [b.get("response_format", {}).get("type") for b in server.requests] == [
        "json_schema", "json_object", None, None]


def test_llama_cpp_python_server_gets_json_object_with_the_schema(tmp_path: Path) -> None:
    """llama-cpp-python's server answers an unknown response_format with a 500 naming it, and
    constrains the reply by a schema given with json_object."""
    def answer(body: dict[str, Any], n: int) -> tuple[int, Any]:
        kind = body.get("response_format", {}).get("type")
        if kind == "json_schema":
            return 500, {"error": {"message": "[{'type': 'literal_error', 'loc': ('body', "
                                   "'response_format', 'type'), 'msg': \"Input should be 'text' "
                                   "or 'json_object'\"}]"}}
        assert kind == "json_object" and body["response_format"]["schema"]["type"] == "object"
        return 200, GOOD
    with fake_openai(answer) as server:
        results = _teacher(server.url, tmp_path, [], max_workers=1).run([PORT, HOST])
    assert [len(r.qa) for r in results] == [1, 0] and all(r.error is None for r in results)
    assert [b["response_format"]["type"] for b in server.requests] == [
        "json_schema", "json_object", "json_object"]  # no retries, no backoff


def test_parse_reply_and_supported() -> None:
    assert parse_reply('{"qa": []}') == {"qa": []}
    assert parse_reply('text ```json\n{"a": 1}\n``` more') == {"a": 1}
    assert parse_reply('so: {"a": {"b": 2}} ok') == {"a": {"b": 2}}
    with pytest.raises(ValueError):
        parse_reply("[1, 2]")
    text = "The  default port is `5173`.\nIt listens on\nlocalhost."
    assert supported("5173", text) and supported("`5173`.", text)
    assert supported("LISTENS ON localhost", text)
    assert not supported("8080", text) and not supported("  ", text)


def test_config_errors_and_sections() -> None:
    with pytest.raises(ConfigError, match="http://"):
        TeacherConfig(base_url="localhost:11434", model="m").check()
    with pytest.raises(ConfigError, match="model name"):
        TeacherConfig(base_url="http://x/v1", model=" ").check()
    text = "Intro words.\n\n# A\n\nText a.\n\n```\n# not a heading\n```\n\n## B\n\nText b.\n"
    secs = split_sections(text, "d.md")
    assert [s.path for s in secs] == [(), ("A",), ("A", "B")]
    assert "".join(s.text for s in secs) == text
    assert all(text[s.start:s.start + len(s.text)] == s.text for s in secs)
    long = "# T\n\n" + "\n\n".join(f"Paragraph {k} " + "word " * 30 for k in range(20))
    parts = split_sections(long, "l.md", max_chars=500)
    assert len(parts) > 1 and all(len(p.text) <= 500 for p in parts)
    assert "".join(p.text for p in parts) == long


def test_which_errors_are_retried() -> None:
    import openai

    from doctune.knowledge.teacher import _retryable

    try:  # openai 3.x builds on httpx2, earlier releases on httpx
        import httpx2 as httpx  # type: ignore[import-not-found]
    except ImportError:
        import httpx

    req = httpx.Request("POST", "http://127.0.0.1/v1/chat/completions")

    def status(code: int) -> openai.APIStatusError:
        return openai.APIStatusError("x", response=httpx.Response(code, request=req), body=None)

    assert _retryable(openai.APITimeoutError(request=req))
    assert _retryable(openai.APIConnectionError(request=req))
    assert _retryable(status(500)) and _retryable(status(502))
    assert not _retryable(status(400)) and not _retryable(status(404))
    assert not _retryable(ValueError("x"))


def test_a_torn_cache_file_is_asked_again(tmp_path: Path) -> None:
    with fake_openai(lambda body, n: (200, GOOD)) as server:
        teacher = _teacher(server.url, tmp_path, [])
        teacher.run([PORT])
        (cache_file,) = tmp_path.iterdir()
        cache_file.write_text('{"qa": [', encoding="utf-8")
        (res,) = teacher.run([PORT])
        assert not res.cached and len(server.requests) == 2 and len(res.qa) == 1
        assert json.loads(cache_file.read_text(encoding="utf-8"))["qa"] == res.qa


def test_rephrasings_must_be_about_their_section(tmp_path: Path) -> None:
    from doctune.knowledge.teacher import grounded

    section = "The dev server listens on port `5173` by default. Set `server.port` to change it."
    assert grounded("By default the dev server uses port 5173; change it with server.port.", section)
    assert not grounded("...", section)  # a small teacher echoing the prompt's example
    assert not grounded("Port 5173.", section)  # too short to be a rephrasing
    assert not grounded("Kubernetes pods restart after their liveness probes fail repeatedly.", section)
    reply = json.dumps({"qa": [], "rephrasings": ["...", "The dev server listens on 5173 unless server.port says otherwise."]})
    with fake_openai(lambda body, n: (200, reply)) as server:
        (res,) = _teacher(server.url, tmp_path, []).run([PORT])
    assert res.rephrasings == ["The dev server listens on 5173 unless server.port says otherwise."]
    assert res.dropped_rephrasings == ["..."]
