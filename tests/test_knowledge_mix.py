"""Mixed training: proportions, what is never trained, and a tiny model that learns its
trained questions end to end."""

from __future__ import annotations

import itertools
import json
import math
from importlib import resources
from pathlib import Path

import numpy as np
import pytest
import torch

from doctune.config import load_config
from doctune.data.store import Window
from doctune.errors import ConfigError, DataError
from doctune.knowledge.mix import (
    SOURCES,
    MixedWindows,
    control_excludes,
    general_text,
    mix_counts,
)
from doctune.knowledge.synth import synthesize

DOCS = {
    "server.md": "# Server\n\nThe dev server starts in 300 ms on most machines.\n\n## Options\n\n"
                 "`server.port` defaults to `5173`. Pass `--host` to listen on all addresses.\n",
    "build.md": "# Build\n\nThe build writes files to the `dist` folder. A chunk larger than "
                "500 kB gives a warning.\n\n`build.target` defaults to `modules`. Use `--watch` "
                "to rebuild on changes.\n",
    "cache.md": "# Cache\n\nThe cache keeps entries for 30 days. `cache.dir` defaults to "
                "`node_modules/.vite`.\n\nRun with `--force` to ignore the cache.\n",
    "plugins.md": "# Plugins\n\nA plugin hook runs 2 times per build. `plugins.order` defaults "
                  "to `pre`. Pass `--debug` to trace the hooks.\n",
}


class FakeDocs:
    """Docs windows: window ``i`` holds the single id ``1000 + i``."""

    def __init__(self, n: int) -> None:
        self.n = n

    def __len__(self) -> int:
        return self.n

    def __getitem__(self, i: int) -> Window:
        return Window(ids=np.array([1000 + i, 1]), loss_start=0, doc=i)


def _extra(n: int, base: int) -> list[Window]:
    return [Window(ids=np.array([base + i, 1]), loss_start=1, doc=-1) for i in range(n)]


def test_mix_counts_exact() -> None:
    # docs take 0.6: the pass must hold 10 docs windows (17) and 7 questions (24): 24
    counts = mix_counts({"docs": 10, "qa": 7, "rephrasings": 0, "replay": 50},
                        {"qa": 0.3, "rephrasings": 0.0, "replay": 0.1})
    assert counts == {"docs": 15, "qa": 7, "rephrasings": 0, "replay": 2}
    counts = mix_counts({"docs": 40, "qa": 5, "rephrasings": 9, "replay": 3},
                        {"qa": 0.25, "rephrasings": 0.15, "replay": 0.1})
    assert counts == {"docs": 40, "qa": 20, "rephrasings": 12, "replay": 8}
    assert mix_counts({"docs": 3}, {}) == {"docs": 3, "qa": 0, "rephrasings": 0, "replay": 0}
    with pytest.raises(DataError, match="no qa examples"):
        mix_counts({"docs": 3, "qa": 0}, {"qa": 0.5})


def test_once_counts_take_each_example_once_and_replay_its_share() -> None:
    from doctune.knowledge.mix import once_counts

    got = once_counts({"docs": 10, "qa": 7, "rephrasings": 13, "replay": 50},
                      {"qa": 0.6, "rephrasings": 0.3, "replay": 0.2})
    assert got == {"docs": 10, "qa": 7, "rephrasings": 13, "replay": 8}  # 30 * 0.2 / 0.8 = 7.5
    assert once_counts({"docs": 10, "qa": 7, "rephrasings": 13}, {"qa": 0.6}) == \
        {"docs": 10, "qa": 7, "rephrasings": 0, "replay": 0}  # a source without a share: none
    with pytest.raises(DataError, match="no qa examples"):
        once_counts({"docs": 3, "qa": 0}, {"qa": 0.5})


def test_mixed_windows_hold_the_counts_and_every_example() -> None:
    counts = {"docs": 40, "qa": 20, "rephrasings": 12, "replay": 8}
    extra = {"qa": _extra(5, 2000), "rephrasings": _extra(9, 3000), "replay": _extra(3, 4000)}
    mixed = MixedWindows(FakeDocs(40), extra, counts, seed=7)
    assert len(mixed) == 80
    sources = [mixed.source_of(i) for i in range(len(mixed))]
    assert {s: sources.count(s) for s in SOURCES} == counts
    firsts = {int(mixed[i].ids[0]) for i in range(len(mixed))}
    assert set(range(1000, 1040)) | set(range(2000, 2005)) | set(range(3000, 3009)) <= firsts
    # each question 4 times exactly (whole rounds), rephrasings 1 or 2 times
    qa_ids = [int(mixed[i].ids[0]) for i in range(80) if sources[i] == "qa"]
    assert sorted(qa_ids) == sorted(list(range(2000, 2005)) * 4)
    again = MixedWindows(FakeDocs(40), extra, counts, seed=7)
    assert np.array_equal(again.entries, mixed.entries)
    other = MixedWindows(FakeDocs(40), extra, counts, seed=8)
    assert not np.array_equal(other.entries, mixed.entries)
    # a resume checks the mix's fingerprint: the same mix gives the same one; another draw,
    # another token or another loss start in an extra window gives another
    assert again.fingerprint() == mixed.fingerprint() != other.fingerprint()
    changed = {**extra, "qa": [*extra["qa"][:-1], Window(ids=extra["qa"][-1].ids + 1,
                                                         loss_start=1, doc=-1)]}
    moved = {**extra, "qa": [*extra["qa"][:-1], Window(ids=extra["qa"][-1].ids,
                                                       loss_start=0, doc=-1)]}
    assert MixedWindows(FakeDocs(40), changed, counts, seed=7).fingerprint() != mixed.fingerprint()
    assert MixedWindows(FakeDocs(40), moved, counts, seed=7).fingerprint() != mixed.fingerprint()


def test_packed_text_windows_hold_every_text_once_in_nearly_full_windows(
        gpt2_tokenizer_dir: Path) -> None:
    from doctune.data.tokenize import load_tokenizer
    from doctune.knowledge.mix import text_windows

    tok = load_tokenizer(gpt2_tokenizer_dir)
    # long texts first, then short ones (restatements, then amplified lists): packed in
    # that order, each long text has a window to itself
    texts = ([f"Fact number {i}: option {i} defaults to {i * 7}." + " More words." * 8
              for i in range(30)]
             + [f"Fact number {i}: option {i} is on." for i in range(30, 60)])
    alone = text_windows(tok, texts, block_size=64)
    packed = text_windows(tok, texts, block_size=64, pack=True, seed=3)
    assert len(alone) == 60
    assert {len(w.ids) for w in alone[:30]} == {35} and {len(w.ids) for w in alone[30:]} == {10}
    assert all(len(w.ids) <= 64 and w.loss_start == 0 for w in packed)
    # every text's tokens, whole, in exactly one window: the windows are a partition of them
    runs = sorted(tuple(w.ids.tolist()) for w in alone)
    cut = []
    for w in packed:
        ids = w.ids.tolist()
        starts = [k for k, t in enumerate(ids) if t == ids[0]] + [len(ids)]  # each 'Fact'
        cut += [tuple(ids[a:b]) for a, b in itertools.pairwise(starts)]
    assert sorted(cut) == runs
    # two long texts never share a window, so 30 windows is the least; packed in the given
    # order (as before) the long ones leave 29 tokens empty each: 30 + 5 windows
    assert len(_greedy([len(w.ids) for w in alone], 64)) == 35
    assert len(packed) <= 32
    again = text_windows(tok, texts, block_size=64, pack=True, seed=3)
    other = text_windows(tok, texts, block_size=64, pack=True, seed=4)
    assert [w.ids.tolist() for w in again] == [w.ids.tolist() for w in packed]
    assert [w.ids.tolist() for w in other] != [w.ids.tolist() for w in packed]


def test_best_fit_bins_hold_every_item_once_and_leave_one_half_empty_bin_at_most() -> None:
    from doctune.knowledge.mix import pack_best_fit

    rng = np.random.default_rng(0)
    for seed in range(20):
        sizes = rng.integers(1, 101, size=60).tolist()
        bins = pack_best_fit(sizes, 100, seed=seed)
        assert sorted(i for b in bins for i in b) == list(range(60))
        fills = [sum(sizes[i] for i in b) for b in bins]
        assert max(fills) <= 100
        # a bin is opened only for an item no open bin has room for, so two bins both at
        # most half full cannot happen (the later one's first item fitted the earlier one)
        assert sum(f <= 50 for f in fills) <= 1
    assert pack_best_fit([50] * 6, 100, seed=1) == pack_best_fit([50] * 6, 100, seed=1)
    assert len(pack_best_fit([50] * 6, 100, seed=1)) == 3
    with pytest.raises(ValueError, match="does not fit"):
        pack_best_fit([11], 10, seed=0)


def _greedy(sizes: list[int], block: int) -> list[int]:
    out, cur = [], 0
    for n in sizes:
        if cur and cur + n > block:
            out.append(cur)
            cur = 0
        cur += n
    return out + ([cur] if cur else [])


def test_control_excludes_quote_glob_characters() -> None:
    assert control_excludes(["a/b.md", "x[1]*.md"]) == ["a/b.md", "x[[]1][*].md"]


def test_general_text_parts_do_not_overlap() -> None:
    replay, dev, held = general_text("replay"), general_text("dev"), general_text("eval")
    assert len(replay) > 70_000 and len(dev) > 9_000 and len(held) > 15_000
    paras = [set(part.split("\n\n")) for part in (replay, dev, held)]
    assert not (paras[0] & paras[1]) and not (paras[0] & paras[2]) and not (paras[1] & paras[2])
    # the evaluation's part is the book's last fifth of paragraphs, as before the dev part
    book = (resources.files("doctune.knowledge") / "general" / "alice.txt").read_text("utf-8")
    every = book.split("\n\n")
    assert held == "\n\n".join(every[int(len(every) * 0.8):])
    assert "\n\n".join([replay, dev, held]) == book


def test_shares_need_room_for_docs_and_a_source() -> None:
    with pytest.raises(ConfigError, match="must be below 1"):
        load_config(None, ["knowledge.auto=true", "knowledge.qa_share=0.6",
                           "knowledge.replay_share=0.4"])
    with pytest.raises(ConfigError, match="need questions and rephrasings"):
        load_config(None, ["knowledge.qa_share=0.3"])
    assert not load_config(None, []).knowledge.enabled
    # one pass of everything: the other shares only switch a source on, replay is a share
    once = load_config(None, ["knowledge.auto=true", "knowledge.mix=once", "knowledge.qa_share=0.6",
                              "knowledge.rephrase_share=0.3", "knowledge.replay_share=0.2"])
    assert once.knowledge.replay_share == 0.2


@pytest.fixture(scope="module")
def docs(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("kdocs")
    for name, text in DOCS.items():
        (root / name).write_text(text, encoding="utf-8")
    return root


def _tiny_model(folder: Path, gpt2_tokenizer_dir: Path, hidden: int) -> Path:
    from transformers import AutoTokenizer, GPT2Config, GPT2LMHeadModel

    torch.manual_seed(0)
    cfg = GPT2Config(n_layer=2, n_embd=hidden, n_head=2, n_positions=256, vocab_size=50257,
                     resid_pdrop=0.0, embd_pdrop=0.0, attn_pdrop=0.0,
                     bos_token_id=50256, eos_token_id=50256)
    GPT2LMHeadModel(cfg).save_pretrained(folder)
    AutoTokenizer.from_pretrained(gpt2_tokenizer_dir).save_pretrained(folder)
    return folder


def _cfg(docs: Path, model: Path, out: Path, *overrides: str) -> list[str]:
    return [f"data.path={docs}", f"model.name={model}", f"train.output_dir={out}",
            "data.block_size=128", "data.overlap=16", "data.val_fraction=0",
            "train.micro_batch_size=8", "train.grad_accum=1", "train.precision=fp32",
            "train.device=cpu", "train.eval_every=0", "train.save_every=0",
            "train.sample_max_new_tokens=2", "log.tensorboard=false", "log.progress=false",
            "log.report=false", "train.warmup_steps=5", *overrides]


def test_training_windows_leave_out_heldout_questions_and_control_docs(
        docs: Path, tmp_path: Path, gpt2_tokenizer_dir: Path) -> None:
    from doctune.config import resolve
    from doctune.rundir import RunDir
    from doctune.train.dist import DistEnv
    from doctune.train.inputs import load_inputs

    synth = tmp_path / "synth"
    summary = synthesize(docs, synth, seed=3, control_fraction=0.3, heldout_fraction=0.3)
    assert summary.control_docs and len(summary.control_docs) < len(DOCS)
    model = _tiny_model(tmp_path / "model", gpt2_tokenizer_dir, 32)
    cfg = load_config(None, _cfg(docs, model, tmp_path / "run", f"knowledge.synth_dir={synth}",
                                 "knowledge.qa_share=0.3", "knowledge.rephrase_share=0.2",
                                 "knowledge.replay_share=0.1", "train.max_steps=1"))
    inputs = load_inputs(resolve(cfg), DistEnv(), RunDir(tmp_path / "run"), resume=False)
    train, tok = inputs.train, inputs.tokenizer
    texts = [tok.decode(train[i].ids.tolist()) for i in range(len(train))]
    qa = [json.loads(x) for x in (synth / "qa.jsonl").read_text().splitlines()]
    trained = {q["question"] for q in qa if q["split"] == "trained"}
    held = {q["question"] for q in qa if q["split"] != "trained"} - trained
    assert held and trained
    joined = "\n".join(texts)
    assert not [q for q in held if q in joined]
    assert all(q in joined for q in trained)  # every trained question comes at least once
    reph = [json.loads(x) for x in (synth / "rephrasings.jsonl").read_text().splitlines()]
    assert {r["split"] for r in reph} >= {"trained", "heldout"}
    # a held-out fact is learnt from its document alone: none of its restatements is trained
    assert not [r for r in reph if r["split"] != "trained" and r["text"] in joined]
    assert all(r["text"] in joined for r in reph if r["split"] == "trained")
    for rel in summary.control_docs:  # no sentence of a control document anywhere
        body = DOCS[rel].split("\n\n")[1]
        assert body[:40] not in joined, rel
    assert inputs.knowledge is not None
    facts = inputs.knowledge.summary
    assert facts["control_docs"] == summary.control_docs
    counts = facts["counts"]
    assert sum(counts.values()) == len(train)
    avail = facts["available"]
    assert avail["qa"] == len(trained)
    n = max(math.ceil(avail["docs"] / 0.4), math.ceil(avail["qa"] / 0.3),
            math.ceil(avail["rephrasings"] / 0.2))
    assert len(train) == n
    assert counts == {"qa": round(n * 0.3), "rephrasings": round(n * 0.2),
                      "replay": round(n * 0.1), "docs": n - sum(round(n * x) for x in (0.3, 0.2, 0.1))}
    assert "<|im_end|>" in tok.get_vocab() and tok.chat_template


def test_tiny_model_learns_its_trained_questions(tmp_path: Path) -> None:
    """A 2-layer model (hidden 64, a 600-token BPE vocabulary) trained on 3 short docs and
    their questions answers the trained questions exactly and stops; the base does neither.
    The run records the mix and the evaluation compares base and tuned."""
    from transformers import GPT2Config, GPT2LMHeadModel

    from doctune.knowledge.exam import GAP_KEYS, evaluate_run, save_result
    from doctune.modeling import train_tokenizer
    from doctune.rundir import RunDir
    from doctune.train.loop import train

    docs = tmp_path / "docs"
    docs.mkdir()
    for name in ("server.md", "build.md", "cache.md"):
        (docs / name).write_text(DOCS[name], encoding="utf-8")
    synthesize(docs, tmp_path / "synth", seed=0, control_fraction=0)  # what auto will make
    qa = [json.loads(x) for x in (tmp_path / "synth" / "qa.jsonl").read_text().splitlines()]
    tok = train_tokenizer([*DOCS.values(), *(q["question"] + " " + q["answer"] for q in qa)], 600)
    torch.manual_seed(0)
    GPT2LMHeadModel(GPT2Config(
        n_layer=2, n_embd=64, n_head=2, n_positions=256, vocab_size=len(tok), resid_pdrop=0.0,
        embd_pdrop=0.0, attn_pdrop=0.0, bos_token_id=tok.eos_token_id,
        eos_token_id=tok.eos_token_id)).save_pretrained(tmp_path / "model")
    tok.save_pretrained(tmp_path / "model")
    out = tmp_path / "run"
    train(load_config(None, _cfg(docs, tmp_path / "model", out, "knowledge.auto=true",
                                 "knowledge.control_fraction=0", "knowledge.qa_share=0.6",
                                 "train.max_steps=250", "train.lr=5e-3")), quiet=True)

    result = evaluate_run(out, device="cpu")
    tuned, base = result["tuned"], result["base"]
    natural = [q for q in qa if q["source"] == "natural"]
    assert tuned["trained_em_n"] == sum(q["split"] == "trained" for q in natural) == 12
    assert tuned["trained_template_em_n"] == sum(q["split"] == "trained" for q in qa) - 12 == 30
    # the fill-in-the-blank questions are learnt by rote; the natural ones, in more
    # phrasings and both directions, more slowly
    assert tuned["trained_template_em"] >= 0.9 and tuned["trained_em"] >= 0.45, tuned
    assert base["trained_em"] == 0.0 and tuned["trained_template_f1"] > 0.9
    assert tuned["stop_rate"] == 1.0 and base["stop_rate"] == 0.0
    assert result["change"]["trained_em"] == pytest.approx(100 * tuned["trained_em"])
    # the open book: the base with each question's section in its prompt, questions only
    assert result["open_book"]["trained_em_n"] == 12 and "general_ppl" not in result["open_book"]
    assert set(result["gap_closed"]) == set(GAP_KEYS)
    # one line per generated question (12 trained, 3 held out), each model's answer
    assert len(result["answers"]) == 15
    line = result["answers"][0]
    assert {"question", "expected", "base_answer", "open_book_answer", "tuned_answer",
            "base_right", "tuned_right", "tuned_exact", "set"} <= set(line)
    facts = json.loads((out / "run.json").read_text())["knowledge"]
    assert facts["shares"] == {"docs": 0.4, "qa": 0.6, "rephrasings": 0.0, "replay": 0.0}
    assert facts["counts"]["qa"] == 42 and facts["heldout_questions"] == 11
    save_result(RunDir.open(out), result)
    assert len((out / "knowledge_answers.jsonl").read_text().splitlines()) == 15
    assert "answers" not in json.loads((out / "knowledge_eval.json").read_text())
    saved = json.loads((out / "final" / "tokenizer_config.json").read_text())
    assert "<|im_start|>" in str(saved.get("chat_template") or
                                 (out / "final" / "chat_template.jinja").read_text())
