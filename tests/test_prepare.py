"""``prepare`` end to end on small docs: windows, split, duplicates, cache, bad input, CLI."""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any

import pytest
from typer.testing import CliRunner

from doctune.data.prepare import format_summary, prepare
from doctune.data.settings import DataSettings
from doctune.data.store import TokenStore
from doctune.data.tokenize import load_tokenizer
from doctune.errors import DataError, ModelError

EOS = 50256
WORD = 4775  # GPT-2: "word"; " word" is 1573 and "\n" is 198


@pytest.fixture(scope="module")
def tok(gpt2_tokenizer_dir: Path) -> Any:
    return load_tokenizer(gpt2_tokenizer_dir)


@pytest.fixture()
def docs(tmp_path: Path, fixtures_dir: Path) -> Path:
    """A writable copy of the small docs fixtures (8 files, one exact duplicate)."""
    return Path(shutil.copytree(fixtures_dir / "docs", tmp_path / "docs"))


def _words(path: Path, k: int) -> None:
    """A plain Markdown file of exactly ``k + 1`` GPT-2 tokens: "word word ... word\\n"."""
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(" ".join(["word"] * k) + "\n", encoding="utf-8")


def _loss_ids(store: TokenStore, split: str) -> list[int]:
    ws = store.split(split)  # type: ignore[arg-type]
    return [t for i in range(len(ws)) for t in ws[i].ids[ws[i].loss_start:].tolist()]


def test_exact_windows_and_packing(tmp_path: Path, tok: Any) -> None:
    _words(tmp_path / "src" / "a.md", 39)  # 40 tokens + EOS = 41
    _words(tmp_path / "src" / "b.md", 8)  # 10 with EOS
    _words(tmp_path / "src" / "c.md", 1)  # 3 with EOS
    s = prepare(tmp_path / "src", tmp_path / "out", DataSettings.of(block_size=16, overlap=4, val_fraction=0.0), tokenizer=tok)
    assert s.tokens == {"train": 54, "val": 0, "total": 54}
    assert s.windows == {"train": 5, "val": 0, "total": 5}
    store = TokenStore.open(tmp_path / "out")
    train = store.split("train")
    shape = [(len(train[i].ids), train[i].loss_start, train[i].doc) for i in range(len(train))]
    # a: full windows at 0, 12, 24 (stride 12); its last token (EOS, position 40) is packed
    # after 4 tokens of context, then b, then the first token of c; the rest of c closes.
    assert shape == [(16, 0, 0), (16, 4, 0), (16, 4, 0), (16, 4, 0), (3, 1, 2)]
    packed = train[3].ids.tolist()
    assert packed[4] == EOS and packed[14] == EOS and packed[15] == WORD
    assert train[4].ids.tolist() == [WORD, 198, EOS]
    assert train.n_tokens == len(_loss_ids(store, "train")) == 54
    assert [d["rel"] for d in store.manifest["documents"]] == ["a.md", "b.md", "c.md"]
    assert [d["n_tokens"] for d in store.manifest["documents"]] == [41, 10, 3]


def test_fixture_docs_summary(docs: Path, tmp_path: Path, tok: Any) -> None:
    from doctune.data.clean import clean_markdown
    from doctune.data.dialect import detect_dialect

    s = prepare(docs, tmp_path / "out", DataSettings.of(block_size=128, overlap=16), tokenizer=tok)
    assert (s.files_found, s.files_used, s.files_skipped, s.duplicates_removed) == (8, 7, 0, 1)
    assert s.duplicates == [{"rel": "versioned/redux/compose.md", "same_as": "redux/compose.md",
                             "bytes": 1991}]
    assert s.bytes_before == 12804
    assert s.documents["train"] + s.documents["val"] == 7 and s.documents["val"] >= 1
    # Token counts equal cleaning + tokenising each used file by hand, plus one EOS each.
    expected, cleaned_bytes = 0, 0
    for rel in sorted(p.relative_to(docs).as_posix() for p in docs.rglob("*.md*")):
        if rel.startswith("versioned/"):
            continue
        text = (docs / rel).read_text(encoding="utf-8")
        out = clean_markdown(text, dialect=detect_dialect(docs / rel, docs, text), path=rel).text
        expected += len(tok(out)["input_ids"]) + 1
        cleaned_bytes += len(out.encode())
    assert s.tokens["total"] == expected
    assert s.bytes_after == cleaned_bytes
    store = TokenStore.open(tmp_path / "out")
    assert len(_loss_ids(store, "train")) + len(_loss_ids(store, "val")) == expected
    assert sum(len(store.split(n)) for n in ("train", "val")) == s.windows["total"]
    assert all(len(ws[i].ids) <= 128 for ws in (store.split("train"), store.split("val"))
               for i in range(len(ws)))
    assert "exact duplicates removed" in format_summary(s)


def test_split_is_stable_when_files_are_added(tmp_path: Path, tok: Any) -> None:
    src = tmp_path / "src"
    for i in range(30):
        _words(src / f"page{i:02d}.md", 3 + i)
    first = prepare(src, tmp_path / "out", DataSettings.of(block_size=32, overlap=8, val_fraction=0.2), tokenizer=tok)
    before = {d["rel"]: d["split"] for d in TokenStore.open(tmp_path / "out").manifest["documents"]}
    assert first.documents == {"train": 26, "val": 4, "total": 30}
    for i in range(30, 40):
        _words(src / f"page{i:02d}.md", 3 + i)
    prepare(src, tmp_path / "out", DataSettings.of(block_size=32, overlap=8, val_fraction=0.2), tokenizer=tok)
    after = {d["rel"]: d["split"] for d in TokenStore.open(tmp_path / "out").manifest["documents"]}
    assert {rel: after[rel] for rel in before} == before
    other = prepare(src, tmp_path / "out2", DataSettings.of(block_size=32, overlap=8, val_fraction=0.2, seed=1), tokenizer=tok)
    assert other.documents["val"] != 0
    assert {d["rel"]: d["split"] for d in TokenStore.open(tmp_path / "out2").manifest["documents"]} != after


def test_tiny_corpus_still_gets_a_validation_document(tmp_path: Path, tok: Any) -> None:
    _words(tmp_path / "src" / "a.md", 5)
    _words(tmp_path / "src" / "b.md", 6)
    s = prepare(tmp_path / "src", tmp_path / "out", DataSettings.of(block_size=16, overlap=2), tokenizer=tok)
    assert s.documents == {"train": 1, "val": 1, "total": 2}


def test_second_run_reuses_and_a_changed_file_is_the_only_one_redone(
        docs: Path, tmp_path: Path, tok: Any) -> None:
    out = tmp_path / "out"
    s1 = prepare(docs, out, DataSettings.of(block_size=64, overlap=8), tokenizer=tok)
    assert s1.cache == {"cleaned": 8, "clean_hits": 0, "tokenized": 7, "token_hits": 0}
    stamp = (out / "tokens.bin").stat().st_mtime_ns
    s2 = prepare(docs, out, DataSettings.of(block_size=64, overlap=8), tokenizer=tok)
    assert s2.cache == {"cleaned": 0, "clean_hits": 8, "tokenized": 0, "token_hits": 7}
    assert s2.store_reused and (out / "tokens.bin").stat().st_mtime_ns == stamp
    assert s2.tokens == s1.tokens and s2.windows == s1.windows

    old = TokenStore.open(out).manifest["documents"]
    with (docs / "redux" / "CoreConcepts.md").open("a", encoding="utf-8") as f:
        f.write("\nOne more paragraph about reducers.\n")
    s3 = prepare(docs, out, DataSettings.of(block_size=64, overlap=8), tokenizer=tok)
    assert s3.cache == {"cleaned": 1, "clean_hits": 7, "tokenized": 1, "token_hits": 6}
    assert not s3.store_reused and s3.tokens["total"] == s1.tokens["total"] + 9
    new = TokenStore.open(out).manifest["documents"]
    changed = [n["rel"] for o, n in zip(old, new, strict=True) if o["clean_hash"] != n["clean_hash"]]
    assert changed == ["redux/CoreConcepts.md"]

    # New window settings re-cut the store without cleaning or tokenising anything.
    s4 = prepare(docs, out, DataSettings.of(block_size=32, overlap=8), tokenizer=tok)
    assert s4.cache == {"cleaned": 0, "clean_hits": 8, "tokenized": 0, "token_hits": 7}
    assert not s4.store_reused and s4.tokens == s3.tokens and s4.windows["total"] > s3.windows["total"]


def test_worker_processes_give_the_same_store(docs: Path, tmp_path: Path, tok: Any) -> None:
    prepare(docs, tmp_path / "one", DataSettings.of(), tokenizer=tok, workers=1)
    prepare(docs, tmp_path / "two", DataSettings.of(), tokenizer=tok, workers=2)
    for name in ("tokens.bin", "train.windows.npy", "val.segments.npy"):
        assert (tmp_path / "one" / name).read_bytes() == (tmp_path / "two" / name).read_bytes()


def test_bad_files_are_skipped_with_reasons(tmp_path: Path, tok: Any) -> None:
    src = tmp_path / "src"
    _words(src / "good.md", 4)
    (src / "latin1.md").write_bytes("caf\xe9\n".encode("latin-1"))
    (src / "empty.md").write_bytes(b"")
    (src / "image.md").write_bytes(b"\x89PNG\r\n\x1a\n\x00\x00")
    (src / "only-imports.mdx").write_text("import X from './x'\n\n<X />\n", encoding="utf-8")
    s = prepare(src, tmp_path / "out", DataSettings.of(block_size=16, overlap=2), tokenizer=tok)
    assert (s.files_found, s.files_used) == (5, 1)
    reasons = {x["rel"]: x["reason"] for x in s.skipped}
    assert sorted(reasons) == ["empty.md", "image.md", "latin1.md", "only-imports.mdx"]
    assert reasons["empty.md"] == "empty file"
    assert reasons["image.md"].startswith("binary file")
    assert reasons["latin1.md"].startswith("not UTF-8 text")
    assert reasons["only-imports.mdx"] == "no text left after cleaning"


def test_no_usable_document_is_an_error(tmp_path: Path, tok: Any) -> None:
    src = tmp_path / "src"
    src.mkdir()
    (src / "empty.md").write_bytes(b"")
    with pytest.raises(DataError, match=r"no usable document .*empty\.md: empty file"):
        prepare(src, tmp_path / "out", DataSettings.of(), tokenizer=tok)
    with pytest.raises(DataError, match="does not exist"):
        prepare(tmp_path / "missing", tmp_path / "out", DataSettings.of(), tokenizer=tok)


@pytest.mark.parametrize(("kwargs", "match"), [
    ({"block_size": 64, "overlap": 64}, "smaller than `block_size`"),
    ({"val_fraction": 1.0}, "below 1, got 1.0"),
    ({"dialect": "rst"}, "one of auto, mdx, markdown, mkdocs, vitepress, got 'rst'"),
])
def test_bad_settings(tmp_path: Path, tok: Any, kwargs: dict[str, Any], match: str) -> None:
    with pytest.raises(DataError, match=match):
        prepare(tmp_path, tmp_path / "out", DataSettings.of().but(**kwargs), tokenizer=tok)


def test_tokenizer_errors_name_the_way_out(tmp_path: Path) -> None:
    with pytest.raises(ModelError, match="does not exist"):
        load_tokenizer(tmp_path / "nope")
    with pytest.raises(ModelError, match=r"holds no tokenizer .*scratch:tiny"):
        load_tokenizer(tmp_path)


def test_cli_prepare(docs: Path, tmp_path: Path, gpt2_tokenizer_dir: Path) -> None:
    from doctune.cli import app

    runner = CliRunner()
    out = tmp_path / "out"
    res = runner.invoke(app, ["prepare", str(docs), "--tokenizer", str(gpt2_tokenizer_dir),
                              "--out", str(out), "--block-size", "64", "--overlap", "8",
                              "--exclude", "versioned", "--json"])
    assert res.exit_code == 0, res.output
    summary = json.loads(res.stdout)
    assert set(summary) == {
        "src", "out", "files_found", "files_used", "files_skipped", "skipped",
        "duplicates_removed", "duplicates", "bytes_before", "bytes_after", "documents",
        "tokens", "windows", "cache", "store_reused", "tokenizer", "warnings", "dropped",
        "seconds", "timings"}
    assert (summary["files_found"], summary["duplicates_removed"]) == (7, 0)
    assert TokenStore.open(out).manifest["settings"]["block_size"] == 64

    res = runner.invoke(app, ["prepare", str(docs), "--tokenizer", str(gpt2_tokenizer_dir),
                              "--out", str(out), "--block-size", "64", "--overlap", "8",
                              "--exclude", "versioned"])
    assert res.exit_code == 0 and res.stdout.startswith(f"reused {out}")

    res = runner.invoke(app, ["prepare", str(docs), "--tokenizer", str(gpt2_tokenizer_dir),
                              "--out", str(out), "--overlap", "600"])
    assert res.exit_code == 2
    assert ("`data.overlap` must be smaller than `data.block_size`, got overlap=600, "
            "block_size=512." in res.stderr)

    res = runner.invoke(app, ["prepare", str(tmp_path / "missing"), "--tokenizer",
                              str(tmp_path / "no-tokenizer"), "--out", str(out)])
    assert res.exit_code == 2 and "does not exist" in res.stderr


def test_cli_prepare_reads_config_and_set_like_train(docs: Path, tmp_path: Path,
                                                     gpt2_tokenizer_dir: Path) -> None:
    from doctune.cli import app

    cfg = tmp_path / "doctune.yaml"
    cfg.write_text(f"data:\n  path: {docs}\n  block_size: 96\n  exclude: [versioned]\n"
                   f"model:\n  tokenizer: {gpt2_tokenizer_dir}\n", encoding="utf-8")
    runner = CliRunner()
    out = tmp_path / "store"
    res = runner.invoke(app, ["prepare", "--config", str(cfg), "--set", "data.overlap=4",
                              "--block-size", "40", "--out", str(out)])
    assert res.exit_code == 0, res.output
    settings = TokenStore.open(out).manifest["settings"]
    assert (settings["block_size"], settings["overlap"]) == (40, 4)  # option > --set > YAML

    res = runner.invoke(app, ["prepare", str(docs), "--out", str(out)])
    assert res.exit_code == 2
    assert "scratch:tiny trains its own tokenizer during `doctune train`" in res.stderr
    res = runner.invoke(app, ["prepare", "--config", str(cfg)])
    assert res.exit_code == 2 and "Pass `--out FOLDER` or set `data.cache_dir`" in res.stderr


def test_cli_help_defaults_match_the_config_schema() -> None:
    import re

    import typer.main

    from doctune.cli import app
    from doctune.config import DataConfig

    command = typer.main.get_command(app).commands["prepare"]  # type: ignore[attr-defined]
    shown = {p.name: re.search(r"\[default: (.+)\]", p.help or "") for p in command.params}
    defaults = DataConfig()
    checked = 0
    for name, found in shown.items():
        if found:
            assert found.group(1) == str(getattr(defaults, name)), name
            checked += 1
    assert checked == 5


def test_bare_gpt2_files_load_as_gpt2(fixtures_dir: Path) -> None:
    tok = load_tokenizer(fixtures_dir / "tokenizers" / "gpt2")
    assert tok("Hello world")["input_ids"] == [15496, 995]
    assert tok.eos_token_id == EOS
