"""The studio in a real headless Chromium: the bundled docs, a tiny scratch run watched live,
stopped and resumed, a chat answer, a GGUF export; a refused path.

Needs Chromium (Debian: `apt-get install chromium`; `.ci/run` installs it) and Playwright's
Python package (the dev extra). Set DOCTUNE_STUDIO_SCREENSHOTS=docs/studio to write the
README's screenshots (1280x800) from this run.
"""

from __future__ import annotations

import os
import shutil
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

pytest.importorskip("starlette", reason="the studio extra is not installed")
sync_api = pytest.importorskip("playwright.sync_api", reason="playwright is not installed (dev extra)")

from studio_server import EXAMPLE_DOCS, Studio, running_studio  # noqa: E402

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
pytestmark = pytest.mark.skipif(CHROMIUM is None, reason="no Chromium on this machine "
                                "(apt-get install chromium); CI installs it")
TINY_RUN = ("data.block_size=32\ndata.overlap=0\ntrain.micro_batch_size=1\ntrain.grad_accum=1\n"
            "train.eval_every=5\ntrain.eval_batches=1\ntrain.save_every=5\ntrain.warmup_steps=2\n"
            "train.sample_every=20\ntrain.sample_max_new_tokens=8\ntrain.compile=off\n"
            "log.report=false\nlog.tensorboard=false")
WAIT_MS = 120_000


@pytest.fixture()
def page(tmp_path: Path) -> Iterator[tuple[Any, Studio, Path]]:
    """A 1280x800 page on a studio whose folders are ``tmp_path`` and the example docs."""
    with running_studio(tmp_path, "--root", ".", "--root", str(EXAMPLE_DOCS)) as studio, \
            sync_api.sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, args=["--no-sandbox"])
        pg = browser.new_page(viewport={"width": 1280, "height": 800})
        pg.set_default_timeout(WAIT_MS)
        pg.goto(studio.url)
        pg.wait_for_selector("body[data-ready=true]")
        try:
            yield pg, studio, tmp_path
        finally:
            browser.close()


def _shot(pg: Any, name: str) -> None:
    folder = os.environ.get("DOCTUNE_STUDIO_SCREENSHOTS")
    if folder:
        Path(folder).mkdir(parents=True, exist_ok=True)
        pg.screenshot(path=str(Path(folder) / f"{name}.png"))


def _points(pg: Any) -> int:
    return int(pg.get_attribute("#chart-loss", "data-points"))


def _docs(pg: Any) -> None:
    pg.fill("#docs-path", "/etc")
    pg.click("#docs-form button")
    pg.wait_for_selector("#docs-error:has-text('outside the folders this studio may use')")
    pg.fill("#docs-path", str(EXAMPLE_DOCS))
    pg.click("#docs-form button")
    pg.wait_for_selector("#docs-summary:has-text('kept')")
    assert "0 skipped" in pg.inner_text("#docs-summary") and "mdx" in pg.inner_text("#docs-summary")
    pg.click("#docs-kept tr[data-rel$='query-params.md']")
    pg.wait_for_selector("#docs-file-title:has-text('query-params.md')")
    before, after = pg.inner_text("#docs-before"), pg.inner_text("#docs-after")
    assert "Query Parameters" in after and before != after
    pg.evaluate("window.scrollTo(0, 0)")
    _shot(pg, "1-docs")


def _plan(pg: Any) -> None:
    pg.click("nav a[data-page=plan]")
    pg.fill("#model", "scratch:tiny")
    pg.click("#plan-form button")
    pg.wait_for_selector("#plan-verdict:has-text('Fits')")
    assert "doctune train" in pg.inner_text("#plan-command") and "--lora" in pg.inner_text("#plan-command")
    assert "tokens" in pg.inner_text("#plan-pass")
    _shot(pg, "2-plan")


def _train_stop_resume(pg: Any, workdir: Path) -> None:
    pg.click("nav a[data-page=train]")
    pg.fill("#run-out", "runs/tiny")
    pg.fill("#steps", "400")  # far more than the test waits for: it is stopped first
    pg.fill("#sets", TINY_RUN)
    pg.click("#train-start")
    pg.wait_for_function("() => +document.querySelector('#chart-loss').dataset.points >= 2")
    seen = _points(pg)
    pg.wait_for_function(f"() => +document.querySelector('#chart-loss').dataset.points > {seen}")
    assert pg.get_attribute("#run-status", "data-status") == "running"  # points came while it trained
    pg.click("#run-stop")
    pg.wait_for_selector("#run-status[data-status=stopped]")
    stopped = int(pg.get_attribute("#run-status", "data-step"))
    assert (workdir / "runs/tiny/checkpoints" / f"step-{stopped}").is_dir()  # saved on SIGTERM
    assert not (workdir / "runs/tiny/final").exists()
    pg.fill("#resume-steps", str(stopped + 6))
    pg.click("#run-resume")
    pg.wait_for_selector("#run-status[data-status=finished]")
    assert int(pg.get_attribute("#run-status", "data-step")) == stopped + 6
    assert (workdir / "runs/tiny/final").is_dir()
    pg.wait_for_function(f"() => +document.querySelector('#chart-loss').dataset.points >= {stopped + 6}")
    _shot(pg, "3-train")


def _chat(pg: Any) -> None:
    pg.click("nav a[data-page=chat]")
    pg.fill("#chat-q", "How do I declare a query parameter?")
    pg.click("#chat-form button")
    pg.wait_for_selector("#chat-tuned[data-done=true]")
    pg.wait_for_selector("#chat-base[data-done=true]")
    tuned, base = pg.inner_text("#chat-tuned"), pg.inner_text("#chat-base")
    assert tuned.startswith("How do I declare a query parameter?")  # a base model continues the text
    assert len(tuned) > len("How do I declare a query parameter?") and not base.startswith("(")
    _shot(pg, "5-chat")


def _ship(pg: Any, workdir: Path) -> None:
    pg.click("nav a[data-page=ship]")
    pg.select_option("#ship-quant", "q8_0")
    pg.fill("#ship-out", "exports/tiny")
    pg.click("#ship-form button")
    pg.wait_for_selector("#ship-result:not([hidden])")
    assert ".gguf (" in pg.inner_text("#ship-files") and "Modelfile" in pg.inner_text("#ship-files")
    gguf = next((workdir / "exports/tiny").glob("*.gguf"))
    assert gguf.read_bytes()[:4] == b"GGUF"
    assert "ollama create tiny -f Modelfile" in pg.inner_text("#ship-command")
    assert "\nFROM " in pg.inner_text("#ship-modelfile")
    _shot(pg, "6-ship")


def test_docs_to_gguf_in_the_browser(page: tuple[Any, Studio, Path]) -> None:
    pg, _, workdir = page
    _docs(pg)
    _plan(pg)
    _train_stop_resume(pg, workdir)
    _chat(pg)
    _ship(pg, workdir)


def test_a_fresh_browser_without_the_token_gets_nothing(page: tuple[Any, Studio, Path]) -> None:
    pg, studio, _ = page
    other = pg.context.browser.new_context()  # no cookie: as another user's browser would be
    response = other.new_page().goto(studio.base)
    assert response.status == 403
    other.close()
