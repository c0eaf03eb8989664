"""Exact cleaning rules, one construct at a time, and the warnings for bad input."""

from __future__ import annotations

import textwrap
import time
from pathlib import Path

import pytest

from doctune.data.clean import CleanResult, clean_markdown, detect_dialect
from doctune.data.dialect import sniff_dialect
from doctune.data.jsx import esm_end, expression_text, scan_tag, skip_braces


def clean(text: str, dialect: str = "mdx", **kw: object) -> str:
    return clean_markdown(textwrap.dedent(text).lstrip("\n"), dialect=dialect, **kw).text  # type: ignore[arg-type]


# --- front matter and title ------------------------------------------------------------

def test_yaml_front_matter_title_becomes_h1_when_there_is_none() -> None:
    assert clean("---\ntitle: 'A: B'\ndate: 2024-01-01\n---\n\nText.\n") == "# A: B\n\nText.\n"


def test_title_heading_is_skipped_when_an_h1_exists_or_when_turned_off() -> None:
    assert clean("---\ntitle: T\n---\n# Own\n\nText.\n") == "# Own\n\nText.\n"
    assert clean("---\ntitle: T\n---\nOwn\n===\n") == "Own\n===\n"
    assert clean("---\ntitle: T\n---\nText.\n", title_heading=False) == "Text.\n"


def test_title_is_escaped_so_it_stays_text() -> None:
    assert clean("---\ntitle: <form> and {x}\n---\n") == "# \\<form\\> and \\{x\\}\n"


def test_toml_front_matter() -> None:
    result = clean_markdown('+++\ntitle = "Hello"\ndraft = false\n+++\nBody\n', dialect="markdown")
    assert result.text == "# Hello\n\nBody\n"
    assert result.dropped == {"front_matter": 1}


def test_broken_front_matter_is_removed_with_a_warning() -> None:
    result = clean_markdown("---\ntitle: [unclosed\n---\nBody\n", path="a.md")
    assert result.text == "Body\n"
    assert len(result.warnings) == 1
    assert result.warnings[0].startswith("a.md:1: front matter is not valid YAML")


def test_unclosed_front_matter_is_kept_as_text_with_a_warning() -> None:
    result = clean_markdown("---\ntitle: x\n\nBody\n", path="a.md")
    assert result.text == "---\ntitle: x\n\nBody\n"
    assert result.warnings == ["a.md:1: front matter opened with `---` is never closed; kept as text"]


def test_dashes_later_in_the_file_are_not_front_matter() -> None:
    assert clean("Text\n\n---\n\ntitle: x\n---\n", "markdown") == "Text\n\n---\n\ntitle: x\n---\n"


# --- MDX: ESM, JSX, expressions, comments ------------------------------------------------

def test_single_and_multi_line_esm_is_removed_but_prose_import_is_kept() -> None:
    src = """
    import A from './a'
    import {
      B,
      C,
    } from "./bc";
    export const meta = {
      tags: ['x', '}'],
    };

    import the module, then export it.
    """
    assert clean(src) == "import the module, then export it.\n"


def test_jsx_wrapper_keeps_children_and_self_closing_goes() -> None:
    src = '<Aside type="tip" title="a > b">\nUse <Badge text="x" /> **this**.\n</Aside>\n'
    assert clean(src) == "Use **this**.\n"


def test_lowercase_html_with_jsx_props_and_spread_props() -> None:
    src = '<div style={{a: "}"}} {...rest}>Hi <span className={cx("a", {b: true})}>there</span></div>\n'
    assert clean(src) == "Hi there\n"


def test_expressions() -> None:
    assert clean("A {frontmatter.title} B\n") == "A B\n"
    assert clean("{'a'}{\"b\"}{`c`}{1.5}{true}{null}{/* x */}\n") == "abc1.5\n"
    assert clean("x {`a${b}`} y\n") == "x y\n"
    assert clean("hit{'    <--'} {'{x}'}\n") == "hit    \\<-- \\{x\\}\n"  # stays text


def test_markdown_escapes_and_entities_are_kept() -> None:
    assert clean("a \\< b \\{c\\} \\* &lt;tag&gt;\n") == "a \\< b \\{c\\} \\* &lt;tag&gt;\n"


def test_link_destinations_and_autolinks_are_not_read_as_mdx() -> None:
    src = "[API](/api/{id}/<x>) and <https://example.com/a?b=c> or <me@example.com>\n"
    assert clean(src) == src


def test_inline_code_is_kept_byte_for_byte() -> None:
    src = "Use `<Tabs>{x}</Tabs>` and ``a ` {/* b */} `` here.\n"
    assert clean(src) == src


def test_html_comments_anywhere_even_multi_line() -> None:
    assert clean("a <!-- x --> b\n<!--\nmulti\nline\n-->\nc\n") == "a b\n\nc\n"


def test_script_and_style_content_is_dropped() -> None:
    src = "<style>{`\n.a { color: red }\n`}</style>\n\nText <script>let a = '<b>'</script>end.\n"
    assert clean(src) == "Text end.\n"


def test_block_tags_keep_words_apart() -> None:
    assert clean("one<br/>two <p>three</p><p>four</p>\n") == "one two three four\n"


def test_heading_ids_in_braces() -> None:
    assert clean("## Title {#custom-id}\n") == "## Title\n"
    assert clean("## Title {#custom-id}\n", "markdown") == "## Title\n"


def test_link_reference_comments_are_dropped() -> None:
    assert clean("[//]: # (a comment)\n[comment]: <> (TODO)\n\n[ref]: https://a.b\n") == "[ref]: https://a.b\n"


def test_admonitions() -> None:
    src = """
    :::note
    A
    :::

    :::tip[Bracket title]
    B
    :::

      :::caution Space title
      C
      :::\x20

    > [!IMPORTANT]
    > D
    """
    assert clean(src) == textwrap.dedent("""\
        **Note**

        A

        **Bracket title**

        B

          **Space title**

          C

        > **Important**
        >
        > D
        """)


def test_indented_content_of_removed_wrappers_is_pulled_back() -> None:
    src = """
    <Tabs>
      <TabItem label="npm">
        Run this:

        ```sh
        npm i x
        ```
      </TabItem>
    </Tabs>
    """
    assert clean(src) == "Run this:\n\n```sh\nnpm i x\n```\n"


# --- whitespace ------------------------------------------------------------------------

def test_whitespace_line_ends_blank_runs_and_final_newline() -> None:
    src = "\ufeffA  \r\n\r\n\r\n\r\nB\t\r\n```\r\ncode  \r\n\r\n\r\n```\r\n\n\n"
    assert clean_markdown(src).text == "A\n\nB\n```\ncode  \n\n\n```\n"


def test_empty_and_junk_only_documents_give_empty_text() -> None:
    assert clean_markdown("").text == ""
    assert clean_markdown("  \n\n").text == ""
    assert clean_markdown("import A from 'a'\n\n<A />\n").text == ""


# --- bad input -------------------------------------------------------------------------

def test_unclosed_fence_keeps_the_rest_as_code_with_a_warning() -> None:
    result = clean_markdown("Text\n\n```js\n<Tabs>\n", path="a.mdx")
    assert result.text == "Text\n\n```js\n<Tabs>\n"
    assert result.warnings == ["a.mdx:3: code fence is never closed; everything after it is kept as code"]


def test_unbalanced_tags_and_braces_fall_back_to_markdown_rules_with_lines() -> None:
    result = clean_markdown("Hello\n\n<Note>\nText\n\n</Aside>\n\nx { y\n", path="p.md")
    assert result.text == "Hello\n\nText\n\nx { y\n"
    assert result.warnings == [
        "p.md:6: </Aside> closes nothing; read with Markdown rules",
        "p.md:8: `{` starts an expression that is never closed; kept as text (Markdown rules)",
        "p.md:3: <Note> is never closed; read with Markdown rules",
    ]


def test_tag_that_cannot_be_read_stays_text_with_a_warning() -> None:
    result = clean_markdown("a <b c=\"unclosed\n\nd\n", path="x.mdx")
    assert result.text == "a <b c=\"unclosed\n\nd\n"
    assert result.warnings[0].startswith("x.mdx:1: cannot read `<b c=\"unclosed` as a JSX tag")


def test_deeply_nested_jsx_is_fast_and_keeps_the_text() -> None:
    depth = 5000
    src = "<A>" * depth + "deep" + "</A>" * depth + "\n\n" + "<B>\n" * depth + "text\n" + "</B>\n" * depth
    start = time.perf_counter()
    result = clean_markdown(src)
    assert time.perf_counter() - start < 5
    assert result.text == "deep\n\ntext\n"
    assert result.warnings == []


def test_never_raises_on_binary_like_text() -> None:
    result = clean_markdown("\x00\x01<\x7f{\ud7ff`\u2028\x0b\n" * 50)
    assert isinstance(result, CleanResult)


def test_unknown_dialect_is_a_value_error() -> None:
    with pytest.raises(ValueError, match="dialect must be one of mdx, markdown, mkdocs"):
        clean_markdown("x", dialect="rst")


# --- plain Markdown and MkDocs ------------------------------------------------------------

def test_markdown_keeps_braces_and_indented_code() -> None:
    src = "Use {name} here.\n\n    <b>code</b> {x}\n\n<div>\n<b>raw</b> html\n</div>\n"
    assert clean(src, "markdown") == "Use {name} here.\n\n    <b>code</b> {x}\n\nraw html\n"


def test_mkdocs_admonition_bodies_are_dedented_and_includes_dropped() -> None:
    src = """
    !!! warning "Careful"
        Body with `code`.

            indented code in the body

    /// details | Summary
        type: note

    Hidden body.
    ///

    {* ../../docs_src/app.py hl[3] *}

    ::: package.module
        options:
          members: true
    """
    result = clean_markdown(textwrap.dedent(src).lstrip("\n"), dialect="mkdocs")
    assert result.text == textwrap.dedent("""\
        **Careful**

        Body with `code`.

            indented code in the body

        **Summary**

        Hidden body.
        """)
    assert result.dropped == {"admonition": 2, "api_directive": 1, "include": 1}


# --- scanners --------------------------------------------------------------------------

def test_scanners_balance_braces_and_skip_strings() -> None:
    s = "{a: '}', b: `${ {c: 1}.c }`, d: /* } */ 1}rest"
    assert s[skip_braces(s, 0):] == "rest"
    assert skip_braces("{ 'open", 0) == -1
    s = '<X a="/>" b={"}"} {...p} c>!'
    tag = scan_tag(s, 0)
    assert tag is not None and s[tag.end :] == "!" and not tag.self_closing
    assert scan_tag("< 16.8.0)", 0) is None
    assert scan_tag("<>", 0, jsx=False) is None
    assert expression_text(r"'a\n\u00e9'") == "a\né"
    assert expression_text("x + 1") is None


def test_esm_end() -> None:
    s = "import a from 'a'\nnext"
    assert esm_end(s, 0) == s.index("\n")
    assert esm_end("import the thing\n", 0) == -1
    s = "export const x = {\n  a: 1,\n}\n\ntext"
    assert s[: esm_end(s, 0)] == "export const x = {\n  a: 1,\n}"


# --- dialects --------------------------------------------------------------------------

def test_detect_dialect_by_config_suffix_and_content(tmp_path: Path) -> None:
    (tmp_path / "mk" / "docs").mkdir(parents=True)
    (tmp_path / "mk" / "mkdocs.yml").write_text("site_name: x\n")
    (tmp_path / "site" / "docs").mkdir(parents=True)
    (tmp_path / "site" / "docusaurus.config.ts").write_text("export default {}\n")
    (tmp_path / "plain").mkdir()
    assert detect_dialect(tmp_path / "mk" / "docs" / "a.md", tmp_path / "mk" / "docs") == "mkdocs"
    assert detect_dialect(tmp_path / "site" / "docs" / "a.md", tmp_path / "site") == "mdx"
    assert detect_dialect(tmp_path / "plain" / "a.mdx", tmp_path / "plain") == "mdx"
    assert detect_dialect(tmp_path / "plain" / "a.md", tmp_path / "plain") == "markdown"
    assert detect_dialect(tmp_path / "plain" / "a.md", tmp_path / "plain",
                          text="## Hi {/*hi*/}\n") == "mdx"


def test_sniff_dialect_ignores_code() -> None:
    assert sniff_dialect("/// note\nx\n///\n") == "mkdocs"
    assert sniff_dialect("```\nimport A from 'a'\n<Tabs>\n```\nUse `<Tabs>`.\n") == "markdown"
    assert sniff_dialect(":::tip\nx\n:::\n<Tabs>\n</Tabs>\n") == "mdx"


def test_other_generators_containers_and_template_lines() -> None:
    src = """
    ::: code-group
    ```js [a.js]
    a
    ```
    :::

    ::: details Click me
    Hidden
    :::

    [[toc]]

    {{< notice info >}}
    Hugo body
    {{< /notice >}}

    {% hint style="info" %}
    GitBook body
    {% endhint %}
    """
    assert clean(src, "markdown") == (
        "```js [a.js]\na\n```\n\n**Click me**\n\nHidden\n\nHugo body\n\nGitBook body\n")


def test_mdx_component_libraries() -> None:
    src = """
    <Tabs items={['npm', 'yarn']}>
      <Tabs.Tab>
        ```bash
        npm i foo
        ```
      </Tabs.Tab>
    </Tabs>

    | Prop | Description |
    | ---- | ----------- |
    | `a`  | First<br/>line |
    | <code>b</code> | <Badge>new</Badge> second |
    """
    assert clean(src) == (
        "```bash\nnpm i foo\n```\n\n"
        "| Prop | Description |\n| ---- | ----------- |\n| `a`  | First line |\n| `b` | new second |\n")


def test_mkdocs_macros_templates_are_dropped_outside_code_and_tags() -> None:
    src = ("{% for u in people %}\n"
           "@{{ u.login }} answered {{ u.count }} questions, see `{{ keep }}` and "
           '<a href={{ u.url }} target="_blank">profile</a>.\n'
           "{% endfor %}\n")
    result = clean_markdown(src, dialect="mkdocs")
    assert result.text == "@answered questions, see `{{ keep }}` and profile.\n"
    assert result.dropped == {"html_tag": 2, "template": 4}


def test_mkdocs_escaped_brace_is_not_an_attribute_list() -> None:
    # `\{` is a literal brace: not an attr_list, before or after the tag inside it goes
    once = clean_markdown("\\{ <Tag> x={1}\n", dialect="mkdocs").text
    assert once == "\\{ x={1}\n"
    assert clean_markdown(once, dialect="mkdocs").text == once
    assert clean_markdown("Title {#id .cls}\n", dialect="mkdocs").text == "Title\n"


def test_mkdocs_admonition_without_space_or_with_quotes_in_its_title() -> None:
    # Python-Markdown reads both: the space after `!!!` is optional, the title runs to
    # the last quote on the line.
    src = '!!!note\n    Body one.\n\n!!! warning "The "best" way"\n    Body two.\n'
    assert clean(src, "mkdocs") == '**Note**\n\nBody one.\n\n**The "best" way**\n\nBody two.\n'
    assert sniff_dialect("!!!tip\n    A tip.\n") == "mkdocs"


@pytest.mark.parametrize("dialect", ["mdx", "markdown", "mkdocs", "vitepress"])
def test_a_fence_that_a_removed_tag_kept_out_of_a_list_stays_out(dialect: str) -> None:
    # `<Tabs>` at the start of its line ends the list; once it is gone, the indented fence
    # would join the item, and the code line at column 0 would end the item and the code.
    src = ("- item\n\n<Tabs>\n  <TabItem value=\"js\">\n\n  ```js\nconst x = 1;\n  ```\n\n"
           "  </TabItem>\n</Tabs>\n")
    out = clean_markdown(src, dialect=dialect).text
    assert out == "- item\n\n<!-- -->\n\n  ```js\nconst x = 1;\n  ```\n"
    assert clean_markdown(out, dialect=dialect).text == out


def test_a_fence_that_fits_the_list_gets_no_marker() -> None:
    src = "- item\n\n<Tabs>\n\n  ```bash\n  npm install\n  ```\n\n</Tabs>\n"
    out = clean_markdown(src, dialect="mdx").text
    assert out == "- item\n\n  ```bash\n  npm install\n  ```\n"
