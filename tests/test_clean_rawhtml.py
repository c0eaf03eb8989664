"""Raw HTML that carries code or alternative texts, in every dialect."""

from __future__ import annotations

import textwrap

import pytest

from doctune.data.clean import clean_markdown
from doctune.data.rawhtml import code_span, strip_tags

ALL = ("mdx", "markdown", "mkdocs", "vitepress")


def clean(text: str, dialect: str) -> str:
    return clean_markdown(textwrap.dedent(text).lstrip("\n"), dialect=dialect).text


@pytest.mark.parametrize("dialect", ALL)
def test_code_element_becomes_one_inline_code_span(dialect: str) -> None:
    src = "- **Type:** <code>Omit&lt;<a href=\"/x\">Options</a>, 'input'&gt;</code>\n"
    assert clean(src, dialect) == "- **Type:** `Omit<Options, 'input'>`\n"


@pytest.mark.parametrize("dialect", ALL)
def test_sibling_elements_never_glue_into_one_word_or_one_code_span(dialect: str) -> None:
    # Texts a page shows one at a time (an API-style toggle) stay apart.
    src = ('<span class="options-api">the</span><span class="composition-api">The</span> '
           "option is <code>data</code><code>ref()</code>.\n")
    assert clean(src, dialect) == "the The option is `data` `ref()`.\n"


@pytest.mark.parametrize("dialect", ALL)
def test_sibling_rule_leaves_punctuation_alone_and_pipes_in_table_code_are_escaped(
        dialect: str) -> None:
    assert clean("<strong>Note</strong><em>:</em> read it.\n", dialect) == "Note: read it.\n"
    src = "| a | b |\n| - | - |\n| <code>x | y</code> | z |\n"
    assert clean(src, dialect) == "| a | b |\n| - | - |\n| `x \\| y` | z |\n"


@pytest.mark.parametrize("dialect", ALL)
def test_pre_element_becomes_a_fenced_block_with_its_text(dialect: str) -> None:
    src = """
    Start the server:

    <pre style="padding:2em"><code class="language-sh">$ vite
      <span style="color:green"><b>VITE</b></span> ready in <b>320</b> ms &amp; &lt;done&gt;
    </code></pre>

    Then open it.
    """
    assert clean(src, dialect) == (
        "Start the server:\n\n```sh\n$ vite\n  VITE ready in 320 ms & <done>\n```\n\nThen open it.\n")


def test_pre_without_code_keeps_its_lines_and_an_empty_pre_goes() -> None:
    src = "<pre>\n  a ``` b\n    c\n</pre>\n\n<pre id=\"out\"></pre>\n\nText.\n"
    assert clean(src, "markdown") == "````\n  a ``` b\n    c\n````\n\nText.\n"


def test_pre_inside_code_is_code() -> None:
    src = "```html\n<pre><code>x</code></pre>\n```\n"
    assert clean(src, "markdown") == src
    assert clean("Use `<pre>` and `<code>` tags.\n", "vitepress") == "Use `<pre>` and `<code>` tags.\n"


@pytest.mark.parametrize("dialect", ALL)
def test_br_keeps_words_apart_and_wbr_joins_them(dialect: str) -> None:
    assert clean("one<br>two<br/>three and super<wbr>long\n", dialect) == \
        "one two three and superlong\n"


def test_code_span_helper() -> None:
    assert code_span("a `b` c", jsx=False) == "``a `b` c``"
    assert code_span("`x`", jsx=False) == "`` `x` ``"
    assert code_span("  \n ", jsx=False) == ""
    assert code_span("Promise\\<<a href='#t'>T</a>\\>", jsx=True) == "`Promise<T>`"
    assert strip_tags("a < b <i>c</i> \\<d>", jsx=False) == "a < b c \\<d>"


@pytest.mark.parametrize("dialect", ALL)
def test_raw_html_code_output_is_idempotent(dialect: str) -> None:
    src = ("<p><code>a</code><code>b</code></p>\n\n<pre>\n<b>x</b> &lt;y&gt;\n</pre>\n\n"
           "<span>one</span><span>two</span>\n")
    once = clean_markdown(src, dialect=dialect).text
    assert clean_markdown(once, dialect=dialect).text == once
