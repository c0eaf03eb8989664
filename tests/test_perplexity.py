"""Evaluation: perplexity equals exp(mean token loss) computed by hand, per document and overall."""

from __future__ import annotations

import json
import math
import random
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from typer.testing import CliRunner

from doctune.cli import app
from doctune.data.chunk import windows as cut_windows
from doctune.data.prepare import prepare
from doctune.data.settings import DataSettings
from doctune.data.store import TokenStore
from doctune.inference import Loaded, load_for_inference
from doctune.perplexity import evaluate, evaluate_docs, settings_for
from runfolders import shared_run

WORDS = ["the", "model", "reads", "docs", "and", "writes", "text", "with", "care", "for", "every", "token", "in", "a", "window"]


@pytest.fixture(scope="module")
def docs(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("docs")
    (root / "guide").mkdir()
    (root / "install.md").write_text("# Install\n\nInstall the tool with pip, then run it on your docs.\n")
    (root / "guide" / "usage.md").write_text("# Usage\n\nCall the command with a prompt; it prints text as it comes.\n")
    rng = random.Random(0)
    long = " ".join(rng.choice(WORDS) for _ in range(150))
    (root / "guide" / "long.md").write_text(f"# Long page\n\n{long}.\n")
    return root


@pytest.fixture(scope="module")
def run(tmp_path_factory: pytest.TempPathFactory, tiny_gpt2_dir: Path) -> Path:
    return shared_run("lora", tmp_path_factory, tiny_gpt2_dir)


@pytest.fixture(scope="module")
def loaded(run: Path) -> Loaded:
    return load_for_inference(run, device="cpu", dtype="fp32")


def _store(loaded: Loaded, docs: Path, tmp: Path, s: DataSettings) -> TokenStore:
    prepare(docs, tmp, s, tokenizer=loaded.tokenizer)
    return TokenStore.open(tmp)


def _doc_ids(store: TokenStore, d: int) -> np.ndarray:
    doc = store.manifest["documents"][d]
    tokens = np.fromfile(store.directory / "tokens.bin", dtype=store.manifest["dtype"])
    return tokens[doc["offset"]: doc["offset"] + doc["n_tokens"]].astype(np.int64)


def _token_losses(model: torch.nn.Module, ids: np.ndarray) -> torch.Tensor:
    """Loss of each token 1..n-1 given the ones before it: (n-1,)."""
    with torch.no_grad():
        logits = model(input_ids=torch.from_numpy(ids)[None]).logits[0]
    return F.cross_entropy(logits[:-1], torch.from_numpy(ids[1:]), reduction="none")


def test_long_document_by_hand(loaded: Loaded, docs: Path, tmp_path: Path) -> None:
    """One document cut into overlapping windows: each token scored once, with its window's context."""
    s = DataSettings.of(block_size=32, overlap=8, val_fraction=0.0)
    result = evaluate_docs(loaded, docs / "guide" / "long.md", s, batch_size=8, precision="fp32")
    ids = _doc_ids(_store(loaded, docs / "guide" / "long.md", tmp_path, s), 0)  # tokens + EOS
    full, tail = cut_windows(len(ids), block_size=32, overlap=8)
    losses: list[torch.Tensor] = []
    for span in [*full, *([tail] if tail else [])]:
        per_token = _token_losses(loaded.model, ids[span.start:span.stop])  # targets start+1..stop-1
        first = max(span.loss_start, span.start + 1) - (span.start + 1)
        losses.append(per_token[first:])
    by_hand = torch.cat(losses)
    assert result.tokens == len(by_hand) == len(ids) - 1
    assert result.loss == pytest.approx(by_hand.mean().item(), rel=1e-5)
    assert result.ppl == pytest.approx(math.exp(by_hand.mean().item()), rel=1e-5)
    assert len(result.documents) == 1 and result.documents[0].rel == "long.md"


def test_packed_documents_by_hand(loaded: Loaded, docs: Path, tmp_path: Path) -> None:
    """Short documents share windows; each token's loss still goes to its own document."""
    s = DataSettings.of(block_size=48, overlap=8, val_fraction=0.0)
    result = evaluate_docs(loaded, docs, s, batch_size=8, precision="fp32")
    store = _store(loaded, docs, tmp_path, s)
    split = store.split("train")
    starts = [doc["offset"] for doc in store.manifest["documents"]]
    sums = np.zeros(len(starts))
    counts = np.zeros(len(starts), dtype=int)
    n_packed = 0
    for i in range(len(split)):
        w = split[i]
        per_token = _token_losses(loaded.model, w.ids).numpy()
        seg_lo, seg_hi = int(split.index[i][0]), int(split.index[i][1])
        owner = np.concatenate([np.full(ln, np.searchsorted(starts, off, side="right") - 1)
                                for off, ln in split.segments[seg_lo:seg_hi].tolist()])
        n_packed += len(set(owner.tolist())) > 1
        for p in range(max(1, w.loss_start), len(w.ids)):
            sums[owner[p]] += per_token[p - 1]
            counts[owner[p]] += 1
    assert n_packed >= 1  # the test covers a window shared by documents
    for d, doc in enumerate(result.documents):
        assert doc.tokens == counts[d]
        assert doc.loss == pytest.approx(sums[d] / counts[d], rel=1e-5)
    assert result.tokens == counts.sum()
    assert result.ppl == pytest.approx(math.exp(sums.sum() / counts.sum()), rel=1e-5)


def test_overall_equals_training_validation(loaded: Loaded, docs: Path, tmp_path: Path) -> None:
    from doctune.device import resolve_precision
    from doctune.train.validation import evaluate_loss

    s = settings_for(loaded)
    assert (s.block_size, s.overlap) == (64, 8)  # the run's data settings
    result = evaluate_docs(loaded, docs, s, batch_size=8, precision="fp32")
    split = _store(loaded, docs, tmp_path, s).split("train")
    loss, count = evaluate_loss(loaded.model, split, batch_size=4, device=torch.device("cpu"),
                                precision=resolve_precision("fp32", torch.device("cpu")), pad_id=50256)
    assert result.tokens == count and result.loss == pytest.approx(loss, rel=1e-6)


def test_settings_for_plain_model(tiny_gpt2_dir: Path) -> None:
    plain = load_for_inference(tiny_gpt2_dir, device="cpu", dtype="fp32")
    assert settings_for(plain).block_size == 256  # the schema default (512), capped by the context
    assert settings_for(plain, block_size=32, overlap=4).block_size == 32


def test_compare_and_cli(run: Path, docs: Path) -> None:
    result, base = evaluate(run, docs, compare="base", device="cpu", precision="fp32", batch_size=8)
    assert (base is not None and base.model.endswith("tiny-gpt20")) or base is not None
    assert [d.rel for d in base.documents] == [d.rel for d in result.documents]
    assert base.ppl != pytest.approx(result.ppl)  # the adapter changed the model
    runner = CliRunner()
    r = runner.invoke(app, ["eval", str(run), "--data", str(docs), "--compare", "base", "--json",
                            "--precision", "fp32"])
    assert r.exit_code == 0, r.output
    payload = json.loads(r.stdout)
    assert payload["ppl"] == pytest.approx(result.ppl, rel=1e-6)
    assert payload["compare"]["ppl"] == pytest.approx(base.ppl, rel=1e-6)
    r = runner.invoke(app, ["eval", str(run), "--data", str(docs), "--compare", "base", "--precision", "fp32"])
    assert r.exit_code == 0 and "overall" in r.stdout and "guide/usage.md" in r.stdout


def test_cli_errors(tiny_gpt2_dir: Path, docs: Path, tmp_path: Path) -> None:
    runner = CliRunner()
    r = runner.invoke(app, ["eval", str(tiny_gpt2_dir), "--data", str(docs), "--compare", "base"])
    assert r.exit_code == 2 and "--compare base` needs a run folder" in r.stderr
    (tmp_path / "empty").mkdir()
    r = runner.invoke(app, ["eval", str(tiny_gpt2_dir), "--data", str(tmp_path / "empty")])
    assert r.exit_code == 2 and "error:" in r.stderr
