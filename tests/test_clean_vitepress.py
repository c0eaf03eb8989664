"""The VitePress dialect: containers, code groups, fence options, Vue in the page."""

from __future__ import annotations

import textwrap
from pathlib import Path

from doctune.data.clean import clean_markdown
from doctune.data.cleantree import tree_dialects
from doctune.data.corpus import find_docs, read_doc
from doctune.data.dialect import detect_dialect, sniff_dialect
from doctune.data.vitepress import fence_info


def clean(text: str) -> str:
    return clean_markdown(textwrap.dedent(text).lstrip("\n"), dialect="vitepress").text


def test_containers_keep_their_prose_and_title() -> None:
    src = """
    ::: tip Pro tip {open}
    Use it.
    :::

    :::warning
    Careful.
    :::

    :::: details
    Outer.

    ::: danger Nested
    Inner.
    :::
    ::::

    1. Step

       ::: info
       Indented.
       :::
    """
    assert clean(src) == (
        "**Pro tip**\n\nUse it.\n\n**Warning**\n\nCareful.\n\n**Details**\n\nOuter.\n\n"
        "**Nested**\n\nInner.\n\n1. Step\n\n   **Info**\n\n   Indented.\n")


def test_code_group_labels_and_fence_meta() -> None:
    src = """
    ::: code-group

    ```sh [npm]
    $ npm create vite@latest
    ```

    ```ts twoslash [vite.config.ts] {1,3}
    const a = {{ b }} // [!code highlight]
    ```

    :::

    ```js{4}
    x
    ```

    ```vue:line-numbers {1}
    <template>{{ msg }}</template>
    ```
    """
    assert clean(src) == (
        "**npm**\n```sh\n$ npm create vite@latest\n```\n\n"
        "**vite.config.ts**\n```ts\nconst a = {{ b }} // [!code highlight]\n```\n\n"
        "```js\nx\n```\n\n```vue\n<template>{{ msg }}</template>\n```\n")


def test_fence_info() -> None:
    assert fence_info("ts twoslash [vite.config.ts] {1,3}") == ("ts", "vite.config.ts")
    assert fence_info("js{4}") == ("js", None)
    assert fence_info("[label]") == ("", "label")
    assert fence_info("") == ("", None)


def test_script_style_and_components() -> None:
    src = """
    <script setup>
    import { data } from './team.data'

    const x = 1
    </script>

    # Team <Badge type="tip" text="new" />

    <VPTeamPage>
      <VPTeamPageTitle>
        <template #title>Meet the Team</template>
      </VPTeamPageTitle>
      <VPTeamMembers :members="core" @click="go()" />
    </VPTeamPage>

    <style scoped>
    .a { color: red }
    </style>
    """
    assert clean(src) == "# Team new\n\nMeet the Team\n"  # a <Badge> shows its text


def test_interpolations_go_with_their_sentence_and_stay_in_v_pre() -> None:
    src = """
    The current version of Vue is {{ version }}. It is fast. The count is: {{ count }}

    - {{ item.name }}
    - A real item

    | Name | Value |
    | ---- | ----- |
    | a    | {{ a }} |

    ::: v-pre
    Write `{{ }}` as {{ this }} to show it.
    :::

    <span v-pre>{{ literal }}</span> and `{{ code }}` stay.
    """
    assert clean(src) == (
        "It is fast.\n\n- A real item\n\n| Name | Value |\n| ---- | ----- |\n| a    | |\n\n"
        "Write `{{ }}` as \\{{ this }} to show it.\n\n\\{{ literal }} and `{{ code }}` stay.\n")


def test_toc_snippet_imports_and_heading_anchors() -> None:
    src = """
    # Guide {#guide}

    [[toc]]

    ## Custom Anchor {#my-anchor}

    <<< @/snippets/snippet.js{2} [snippet.js]

    Text.
    """
    assert clean(src) == "# Guide\n\n## Custom Anchor\n\nText.\n"


def test_toc_in_any_case_and_anchors_with_non_ascii_ids() -> None:
    """VitePress matches `[[TOC]]` in any case and takes any id up to the brace."""
    src = """
    # Über uns {#über–uns}

    [[TOC]]

    ## Release notes {#v2.0–beta_1}

    [[Toc]]

    Text with `[[TOC]]` in code stays.
    """
    assert clean(src) == ("# Über uns\n\n## Release notes\n\n"
                          "Text with `[[TOC]]` in code stays.\n")


def test_detection_by_folder_and_by_content(tmp_path: Path) -> None:
    site = tmp_path / "docs"
    (site / ".vitepress").mkdir(parents=True)
    (site / "guide").mkdir()
    page = site / "guide" / "a.md"
    page.write_text("# A\n\n:::tip\nx\n:::\n", encoding="utf-8")
    assert detect_dialect(page, site) == "vitepress"
    assert sniff_dialect("<script setup>\nimport A from './a.vue'\n</script>\n\n# A\n") == "vitepress"
    assert sniff_dialect("::: code-group\n```sh [npm]\nx\n```\n:::\n") == "vitepress"
    assert sniff_dialect("import A from './a'\n\n[[toc]]\n") == "mdx"  # ESM is MDX's
    assert sniff_dialect(":::tip\nx\n:::\n") == "mdx"


def test_a_site_without_config_is_read_as_vitepress_when_its_pages_show_it(tmp_path: Path) -> None:
    (tmp_path / "guide").mkdir()
    (tmp_path / "index.md").write_text("<script setup>\nimport X from './x'\n</script>\n\n<X/>\n")
    (tmp_path / "guide" / "a.md").write_text(":::tip\nA <Badge/> tip.\n:::\n")
    (tmp_path / "guide" / "b.md").write_text("# Plain\n")
    docs, _ = find_docs(tmp_path)
    texts = [t for d in docs if isinstance(t := read_doc(d), str)]
    assert tree_dialects(docs, texts, tmp_path) == ["vitepress"] * 3
