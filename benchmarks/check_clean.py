"""Reference check of the cleaner on real docs sets, read by each dialect's own reader.

For every docs set (a sub-folder of --corpora) this cleans all files the way
``doctune clean`` does, then reads input and output with a reference reader:

* MDX sets (Docusaurus, Astro, react.dev): remark + remark-mdx for the input, remark
  (CommonMark + GFM) for the cleaned Markdown; run with node from benchmarks/remark
  (``cd benchmarks/remark && npm install`` once).
* MkDocs sets: Python-Markdown with the pymdown-extensions MkDocs Material uses, for
  both sides. ``{* file *}`` / ``--8<--`` includes and ``::: module`` API directives are
  taken out of the input first: MkDocs replaces them with content from other files.
* VitePress sets: markdown-it-py with VitePress's containers for the input, CommonMark
  for the output (benchmarks/vitepress_reader.py).

It reports, per set: code blocks kept verbatim (language, meta and content), the share of
the words a reader sees that are kept, the share of output words that are junk (words
the reader never saw: attribute values, expressions, front matter), and output lines
outside code that still carry tags, HTML comments, ``{/* */}``, import/export or heading
``{#id}`` anchors, both as the reader sees them ("bad_lines") and by a plain regex over
the raw lines ("raw_lines"; "anchors" counts the heading anchors among them). "code exact"
is the share of the input's code spans (backticks and raw ``<code>``) that come out as a
code span of their own, with the same text (two spans glued into one fail it).
For MDX sets it also counts inputs that are not valid MDX ("in_not_mdx", read as Markdown
then) and outputs that would not read back as MDX without JSX/expressions ("out_not_mdx").

    python benchmarks/check_clean.py [--corpora ../shared/corpora] [--show 5] [--reader R]
"""

from __future__ import annotations

import argparse
import html
import json
import re
import subprocess
import sys
import time
from collections import Counter
from dataclasses import dataclass, field
from html.parser import HTMLParser
from pathlib import Path

from doctune.data.blocks import code_blocks
from doctune.data.clean import clean_markdown
from doctune.data.cleantree import tree_dialects
from doctune.data.corpus import Skipped, find_docs, read_doc
from vitepress_reader import read_with_vitepress

REPO = Path(__file__).resolve().parent.parent
REMARK = REPO / "benchmarks" / "remark"
WORD = re.compile(r"\w+")
TARGETS = {"code": 1.0, "exact": 0.999, "words": 0.99, "junk": 0.005, "lines": 0}


# --- readers ------------------------------------------------------------------------

def read_with_remark(docs: list[tuple[str, str, bool]]) -> dict[str, dict]:
    """Run the node reader over (id, text, mdx) triples."""
    if not (REMARK / "node_modules").is_dir():
        sys.exit(f"run `npm install` in {REMARK} first (node and npm are needed)")
    feed = "".join(json.dumps({"id": i, "text": t, "mdx": m}) + "\n" for i, t, m in docs)
    proc = subprocess.run(["node", str(REMARK / "read.mjs")], input=feed, capture_output=True,
                          text=True, check=True)
    return {d["id"]: d for d in map(json.loads, proc.stdout.splitlines())}


MKDOCS_EXTENSIONS = [
    "abbr", "attr_list", "footnotes", "md_in_html", "tables", "toc", "admonition",
    "pymdownx.details", "pymdownx.superfences", "pymdownx.tabbed", "pymdownx.highlight",
    "pymdownx.inlinehilite", "pymdownx.keys", "pymdownx.mark", "pymdownx.tilde",
    "pymdownx.caret", "pymdownx.betterem", "pymdownx.blocks.admonition",
    "pymdownx.blocks.details", "pymdownx.blocks.tab",
]
MKDOCS_CONFIG = {
    "pymdownx.tabbed": {"alternate_style": True},
    "pymdownx.blocks.tab": {"alternate_style": True},
    "pymdownx.blocks.admonition": {"types": [
        "note", "attention", "caution", "danger", "error", "tip", "hint", "warning",
        "info", "check", "abstract", "success", "question", "failure", "bug", "example",
        "quote"]},
}
_INCLUDES = re.compile(
    r"^[ \t]*(?:\{\*.*\*\}|;?--8<--.*|:::[ \t]+[\w.]+(?:\n(?:[ \t]*\n)*[ \t]+\S.*)*)[ \t]*$", re.M
)


class _HtmlText(HTMLParser):
    def __init__(self) -> None:
        super().__init__(convert_charrefs=True)
        self.code: list[str] = []
        self.visible: list[str] = []
        self.junk: list[str] = []
        self.spans: list[str] = []
        self._span: list[str] | None = None
        self._pre = 0
        self._skip = 0
        self._buf: list[str] = []

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        self.junk.extend(v for k, v in attrs if v and k in ("title", "alt", "style", "href", "src"))
        if tag == "pre":
            self._pre += 1
            self._buf = []
        elif tag in ("script", "style"):
            self._skip += 1
        elif tag == "code" and not self._pre:
            self._span = []

    def handle_endtag(self, tag: str) -> None:
        if tag == "pre" and self._pre:
            self._pre -= 1
            self.code.append("".join(self._buf).rstrip("\n"))
        elif tag in ("script", "style") and self._skip:
            self._skip -= 1
        elif tag == "code" and self._span is not None:
            self.spans.append("".join(self._span))
            self._span = None

    def handle_data(self, data: str) -> None:
        if self._pre:
            self._buf.append(data)
        elif not self._skip:
            self.visible.append(data)
            if self._span is not None:
                self._span.append(data)


def read_with_python_markdown(text: str, *, is_input: bool) -> dict:
    import markdown

    if is_input:  # MkDocs takes front matter out and replaces includes with other files
        text = _INCLUDES.sub("", re.sub(r"\A---[ \t]*\n.*?\n---[ \t]*\n", "", text, flags=re.S))
    body = markdown.markdown(text, extensions=MKDOCS_EXTENSIONS,
                             extension_configs=MKDOCS_CONFIG)
    p = _HtmlText()
    p.feed(body)
    return {"code": [["", "", html.unescape(c)] for c in p.code], "spans": p.spans,
            "visible": " ".join(p.visible), "junk": " ".join(p.junk), "flagged": [],
            "error": None}


# --- raw line check -----------------------------------------------------------------

RAW_CHECKS = {
    "tag": re.compile(r"(?<!\\)</?[A-Za-z][\w.:-]*(?:\s[^<>]*)?/?>"),
    "html_comment": re.compile(r"<!--"),
    "mdx_comment": re.compile(r"\{/\*"),
    "esm": re.compile(r"^(?:import|export)\s.*(?:from\s*['\"]|=)"),
    "heading_anchor": re.compile(r"^[ \t]{0,3}#{1,6}[ \t].*\{#[\w.:-]+\}[ \t]*$"),
}
_CODE_SPAN = re.compile(r"(`+)(?!`).*?(?<!`)\1(?!`)", re.S)


def raw_flags(text: str) -> list[tuple[int, str]]:
    """Lines outside code blocks and code spans that still carry MDX/HTML syntax."""
    lines = text.split("\n")
    code = [False] * len(lines)
    for b in code_blocks(lines, indented_code=True, html_blocks=True):
        code[b.start : b.end] = [True] * (b.end - b.start)
    prose = "\n".join("" if c else ln for ln, c in zip(lines, code, strict=True))
    prose = prose.replace("\\`", "  ")  # an escaped backtick opens no code span
    blank_code_spans = lambda m: re.sub(r"[^\n]", " ", m.group())  # noqa: E731
    prose = "".join(_CODE_SPAN.sub(blank_code_spans, part)
                    for part in re.split(r"(\n[ \t]*\n)", prose))
    found = []
    for no, line in enumerate(prose.split("\n"), 1):
        found.extend((no, kind) for kind, rx in RAW_CHECKS.items() if rx.search(line))
    return found


# --- metrics ------------------------------------------------------------------------

@dataclass
class SetReport:
    name: str
    reader: str
    files: int = 0
    skipped: int = 0
    seconds: float = 0.0
    code_in: int = 0
    code_kept: int = 0
    words_in: int = 0
    words_kept: int = 0
    words_out: int = 0
    junk_out: int = 0
    spans_in: int = 0
    spans_exact: int = 0
    flagged: Counter[str] = field(default_factory=Counter)
    raw: Counter[str] = field(default_factory=Counter)
    parse_errors: int = 0
    out_not_mdx: int = 0
    examples: dict[str, list[str]] = field(default_factory=dict)

    def add_example(self, kind: str, text: str) -> None:
        self.examples.setdefault(kind, []).append(text)


def front_matter_title(text: str) -> str:
    """The front-matter title: the cleaner may turn it into the page's ``# Title``."""
    import yaml

    m = re.match(r"---[ \t]*\n(.*?)\n(?:---|\.\.\.)[ \t]*(?:\n|$)", text, re.S)
    try:
        data = yaml.safe_load(m.group(1)) if m else None
    except yaml.YAMLError:
        return ""
    title = data.get("title") if isinstance(data, dict) else None
    return str(title) if isinstance(title, (str, int, float)) else ""


def compare(rep: SetReport, rel: str, src: dict, dst: dict, in_text: str, out_text: str,
            titled: bool) -> None:
    want = Counter(tuple(c) for c in src["code"])
    have = Counter(tuple(c) for c in dst["code"])
    kept = sum((want & have).values())
    rep.code_in += sum(want.values())
    rep.code_kept += kept
    for c in (want - have):
        rep.add_example("code", f"{rel}: lost code block {c[0]!r} {c[2][:60]!r}")
    spans_in = Counter(" ".join(x.split()) for x in src.get("spans", []) if x.strip())
    spans_out = Counter(" ".join(x.split()) for x in dst.get("spans", []) if x.strip())
    rep.spans_in += sum(spans_in.values())
    rep.spans_exact += sum((spans_in & spans_out).values())
    for c in list(spans_in - spans_out)[:3]:
        rep.add_example("spans", f"{rel}: code span not kept on its own: {c[:60]!r}")
    visible = src["visible"]
    title = front_matter_title(in_text)
    if title and titled:  # the title heading the cleaner added shows what the page shows
        visible += " " + title
    vin = Counter(w.lower() for w in WORD.findall(visible))
    vout = Counter(w.lower() for w in WORD.findall(dst["visible"]))
    junk = Counter(w.lower() for w in WORD.findall(src["junk"]))
    rep.words_in += sum(vin.values())
    k = sum((vin & vout).values())
    rep.words_kept += k
    rep.words_out += sum(vout.values())
    extra = vout - vin
    j = sum((extra & junk).values())
    rep.junk_out += j
    lost = sum(vin.values()) - k
    if lost:
        rep.add_example("words", f"{lost:5d} words lost in {rel}: {sorted((vin - vout).items(), key=lambda x: -x[1])[:8]}")
    if j:
        rep.add_example("junk", f"{j:5d} junk words in {rel}: {sorted((extra & junk).items(), key=lambda x: -x[1])[:8]}")
    for line, kind in dst["flagged"]:
        rep.flagged[kind] += 1
        rep.add_example("flagged", f"{rel}:{line}: {kind}: {out_text.split(chr(10))[line - 1][:100]!r}")
    for line, kind in raw_flags(out_text):
        rep.raw[kind] += 1
        rep.add_example("raw", f"{rel}:{line}: {kind}: {out_text.split(chr(10))[line - 1][:100]!r}")


def check_set(folder: Path, reader: str | None = None) -> SetReport:
    docs, skipped = find_docs(folder)
    texts, kept = [], []
    for d in docs:
        t = read_doc(d)
        if isinstance(t, Skipped):
            skipped.append(t)
        else:
            texts.append(t)
            kept.append(d)
    dialects = tree_dialects(kept, texts, folder)
    set_dialect = Counter(x for x in dialects if x != "markdown").most_common(1)
    reader = reader or (set_dialect[0][0] if set_dialect else "markdown")
    rep = SetReport(folder.name, reader, files=len(kept), skipped=len(skipped))
    start = time.perf_counter()
    outs = [clean_markdown(t, dialect=x, path=d.rel).text
            for d, t, x in zip(kept, texts, dialects, strict=True)]
    rep.seconds = time.perf_counter() - start
    titled = [o != clean_markdown(t, dialect=x, title_heading=False).text
              for t, x, o in zip(texts, dialects, outs, strict=True)]
    if reader in ("mkdocs", "vitepress"):
        read = read_with_python_markdown if reader == "mkdocs" else read_with_vitepress
        for d, t, o, h in zip(kept, texts, outs, titled, strict=True):
            compare(rep, d.rel, read(t, is_input=True), read(o, is_input=False), t, o, h)
        return rep
    feed = [(f"in:{d.rel}", t, reader == "mdx") for d, t in zip(kept, texts, strict=True)]
    feed += [(f"out:{d.rel}", o, False) for d, o in zip(kept, outs, strict=True)]
    # The output is Markdown, but it should read the same as MDX too: no JSX, no errors.
    feed += [(f"outmdx:{d.rel}", o, True) for d, o in zip(kept, outs, strict=True)]
    parsed = read_with_remark(feed)
    for d, t, o, h in zip(kept, texts, outs, titled, strict=True):
        src = parsed[f"in:{d.rel}"]
        if src["error"]:
            rep.parse_errors += 1
            rep.add_example("parse", f"{d.rel}: input is not valid MDX ({src['error']}); read as Markdown")
        compare(rep, d.rel, src, parsed[f"out:{d.rel}"], t, o, h)
        as_mdx = parsed[f"outmdx:{d.rel}"]
        if as_mdx["error"] or as_mdx["flagged"]:
            rep.out_not_mdx += 1
            rep.add_example("out_as_mdx", f"{d.rel}: {as_mdx['error'] or as_mdx['flagged'][:3]}")
    return rep


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--corpora", type=Path, default=REPO.parent / "shared" / "corpora",
                    help="folder whose sub-folders are docs sets (default: ../shared/corpora)")
    ap.add_argument("--show", type=int, default=0, help="print up to N examples of each problem")
    ap.add_argument("--json", action="store_true", help="print the numbers as JSON")
    ap.add_argument("--reader", choices=["mdx", "markdown", "mkdocs", "vitepress"],
                    help="read every set with this reference reader instead of the one its "
                         "dialect picks (to measure an older cleaner against a new reader)")
    args = ap.parse_args(argv)
    sets = sorted(p for p in args.corpora.iterdir() if p.is_dir())
    if not sets:
        sys.exit(f"no docs sets under {args.corpora}")
    reports = [check_set(p, args.reader) for p in sets]
    rows = []
    ok = True
    for r in reports:
        code = r.code_kept / r.code_in if r.code_in else 1.0
        words = r.words_kept / r.words_in if r.words_in else 1.0
        junk = r.junk_out / r.words_out if r.words_out else 0.0
        lines = sum(r.flagged.values())
        exact = r.spans_exact / r.spans_in if r.spans_in else 1.0
        ok &= code >= TARGETS["code"] and words >= TARGETS["words"] and junk < TARGETS["junk"] and lines == 0
        ok &= exact >= TARGETS["exact"] and r.raw["heading_anchor"] == 0
        rows.append({"set": r.name, "reader": r.reader, "files": r.files, "skipped": r.skipped,
                     "clean_s": round(r.seconds, 2), "code_kept": f"{r.code_kept}/{r.code_in}",
                     "code_pct": round(100 * code, 2), "exact_pct": round(100 * exact, 2),
                     "words_pct": round(100 * words, 2),
                     "junk_pct": round(100 * junk, 3), "bad_lines": lines,
                     "raw_lines": sum(r.raw.values()), "anchors": r.raw["heading_anchor"],
                     "in_not_mdx": r.parse_errors,
                     "out_not_mdx": r.out_not_mdx if r.reader == "mdx" else "-"})
    if args.json:
        print(json.dumps(rows, indent=2))
    else:
        cols = list(rows[0])
        widths = {c: max(len(c), *(len(str(row[c])) for row in rows)) for c in cols}
        print("  ".join(c.ljust(widths[c]) for c in cols))
        for row in rows:
            print("  ".join(str(row[c]).ljust(widths[c]) for c in cols))
        print("targets: code 100%, code exact >= 99.9%, words >= 99%, junk < 0.5%, bad lines 0, "
              f"anchors 0 -> {'met' if ok else 'NOT met'}")
    if args.show:
        for r in reports:
            for kind, ex in r.examples.items():
                print(f"\n[{r.name}] {kind} ({len(ex)})")
                for e in sorted(ex, reverse=kind in ("words", "junk"))[: args.show]:
                    print("  " + e)
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
