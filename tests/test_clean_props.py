"""Property tests: the cleaner never raises, is idempotent and never changes code blocks."""

from __future__ import annotations

from collections import Counter

from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from doctune.data.blocks import block_parser
from doctune.data.clean import clean_markdown
from vitepress_blocks import vitepress_fences

DIALECTS = ("mdx", "markdown", "mkdocs", "vitepress")
PROPS = settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])

# Text made mostly of the characters that mean something to Markdown, MDX or MkDocs.
SPECIAL = st.text(
    alphabet=st.sampled_from(list("<>{}/\\`'\"*_[]()!#-=:;|~+.0123 \t\naAbZx\r\u00a0é")),
    max_size=300,
)

TOKENS = st.sampled_from([
    "word", "Hello,", "docs.", "<Tag>", "</Tag>", "<Note>", "</Note>", '<Tag a="x/>y" b={{c: 1}} />',
    "<br/>", "<b>bold</b>", "{expr}", "{/* c */}", "{'\\n'}", "{'  '}", "{Infinity}",
    "`code <X>`", "``a ` b``", "\\<", "\\{", "\\*", "<!-- c -->", "<", "{", "}", ">", "*em*",
    "[link](/a/{b})", "<https://x.y/z>", "&lt;", "a:b", "(< 1.0)", "<>", "</>", "x={1}",
    "{{ v }}", "{{", "}}", "<code>a</code>", "<code>`b`</code>", "</span><span>", "<wbr>",
    '<span v-pre>{{ x }}</span>', '<Badge text="new" />', "[<Badge />](#a)", "[[toc]]", ".",
])
PROSE = st.lists(TOKENS, min_size=1, max_size=8).map(" ".join)
CODE_LINE = st.text(
    alphabet=st.sampled_from(list("abc <>{}/=;'\"`-#:*\t")), max_size=30,
).filter(lambda s: not s.lstrip().startswith(("```", "~~~")))
LANG = st.sampled_from(["", "js", "astro title=\"a.astro\"", "py {1,3}", "tsx [[1, 1, '']]",
                        "ts twoslash [a.ts] {1}", "js{4}", "[label]"])


@st.composite
def fence(draw: st.DrawFn, indent: str = "") -> str:
    ticks = draw(st.sampled_from(["```", "````", "~~~"]))
    body = draw(st.lists(st.one_of(CODE_LINE, st.sampled_from(
        ["import x from 'y'", "export default 1", "---", "<Tabs>", "{/* c */}", ":::note",
         "<!-- c -->", "    indented"])), max_size=5))
    lines = [f"{ticks}{draw(LANG)}", *body, ticks]
    return "\n".join(indent + ln if ln else ln for ln in lines)


@st.composite
def block(draw: st.DrawFn, depth: int = 0) -> str:
    kind = draw(st.sampled_from(
        ["para", "heading", "list", "fence", "admonition", "jsx", "import", "listfence", "quote",
         "container", "pre", "script"]
        if depth < 2 else ["para", "fence", "list"]))
    if kind == "para":
        return "\n".join(draw(st.lists(PROSE, min_size=1, max_size=3)))
    if kind == "heading":
        return f"## {draw(PROSE)}"
    if kind == "list":
        return "\n".join(f"- {p}" for p in draw(st.lists(PROSE, min_size=1, max_size=3)))
    if kind == "fence":
        return draw(fence())
    if kind == "listfence":
        return f"1. {draw(PROSE)}\n\n{draw(fence(indent='    '))}"
    if kind == "admonition":
        return f":::{draw(st.sampled_from(['note', 'tip[Title]', 'caution Title']))}\n{draw(PROSE)}\n:::"
    if kind == "quote":
        return f"> {draw(PROSE)}"
    if kind == "container":  # VitePress
        name = draw(st.sampled_from(["tip Title {open}", "code-group", "v-pre", "details"]))
        colons = draw(st.sampled_from([":::", "::::"]))
        body = "\n\n".join(draw(st.lists(block(depth + 1), min_size=1, max_size=2)))
        return f"{colons} {name}\n{body}\n{colons}"
    if kind == "pre":
        return f"<pre><code class=\"language-sh\">{draw(CODE_LINE)}\n{draw(PROSE)}</code></pre>"
    if kind == "script":
        return "<script setup>\nimport A from './a.vue'\n\nconst b = `{{ c }}`\n</script>"
    if kind == "import":
        return "import A from 'a'\nexport const b = {\n  c: 1,\n}"
    inner = draw(st.lists(block(depth + 1), min_size=1, max_size=3))
    pad = draw(st.sampled_from(["", "  ", "    "]))
    body = "\n\n".join("\n".join(pad + ln if ln else ln for ln in b.split("\n")) for b in inner)
    return f"<Tabs>\n{pad}<TabItem label=\"a\">\n{body}\n{pad}</TabItem>\n</Tabs>"


@st.composite
def document(draw: st.DrawFn) -> str:
    head = draw(st.sampled_from(["", "---\ntitle: 'A: B'\n---\n\n", "+++\ntitle = \"T\"\n+++\n\n"]))
    return head + "\n\n".join(draw(st.lists(block(), min_size=1, max_size=6))) + "\n"


def fences(text: str, *, mdx: bool) -> list[tuple[str, str]]:
    md = block_parser(indented_code=not mdx, html_blocks=not mdx)
    return [(t.info, t.content) for t in md.parse(text) if t.type == "fence"]


@PROPS
@given(text=SPECIAL, dialect=st.sampled_from(DIALECTS))
def test_never_raises_and_output_is_tidy(text: str, dialect: str) -> None:
    result = clean_markdown(text, dialect=dialect)
    assert result.text == "" or result.text.endswith("\n")
    assert not result.text.endswith("\n\n")
    assert "\r" not in result.text


@PROPS
@given(text=SPECIAL, dialect=st.sampled_from(DIALECTS))
def test_idempotent_on_any_text(text: str, dialect: str) -> None:
    once = clean_markdown(text, dialect=dialect).text
    assert clean_markdown(once, dialect=dialect).text == once


@PROPS
@given(doc=document(), dialect=st.sampled_from(DIALECTS))
def test_idempotent_on_documents(doc: str, dialect: str) -> None:
    once = clean_markdown(doc, dialect=dialect).text
    assert clean_markdown(once, dialect=dialect).text == once


@PROPS
@given(doc=document())
def test_mdx_code_blocks_come_out_unchanged(doc: str) -> None:
    out = clean_markdown(doc, dialect="mdx").text
    # Read the MDX way before, and the CommonMark way after: same fences, same content
    # (and one more for each <pre> element that holds text).
    if "<pre" in doc:
        assert not Counter(fences(doc, mdx=True)) - Counter(fences(out, mdx=False))
    else:
        assert fences(out, mdx=False) == fences(doc, mdx=True)


@PROPS
@given(doc=document())
# found by a draw: the escaped ``` and the fence joined the list once <Tabs> was gone
@example(doc='word\n\n- word\n\n<Tabs>\n  <TabItem label="a">\n  ```\n\n  ```\n  </TabItem>\n</Tabs>\n')
# and once a code group's label, a blank line above its fence, was left alone in a list item
# whose marker an HTML tag shared (the fence fell out of the item, an indented code block)
@example(doc="word\n\n::: code-group\n1. <Tag>\n\n    ```tsx [[1, 1, '']]\n    x = 1\n    ```\n:::\n")
# and once a fence left open to the end was taken as closed by its last line, an indented
# "```" (4 spaces: not a closer), which the dedent of the <Tabs> content above then moved
@example(doc='word\n\n<Tabs>\n    <TabItem label="a">\n    word\n    </TabItem>\n</Tabs>\n\n'
             '<Tabs>\n<TabItem label="a">\n```\n\n```\n</TabItem>\n</Tabs>\n\n1. word\n\n'
             '    ```\n    ```\n')
def test_vitepress_code_blocks_come_out_unchanged(doc: str) -> None:
    out = clean_markdown(doc, dialect="vitepress").text
    # Every fence VitePress sees comes out with the same code, read the CommonMark way.
    after = Counter(code for _, code in fences(out, mdx=False))
    assert not Counter(vitepress_fences(doc)) - after
