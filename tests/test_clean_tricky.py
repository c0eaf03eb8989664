"""The twelve cases of shared/corpora/TRICKY.md, each as a small exact test.

The full excerpts are golden files too (test_clean_golden.py); these pin the one thing
each case is about.
"""

from __future__ import annotations

import textwrap

from doctune.data.clean import clean_markdown


def clean(text: str, dialect: str = "mdx") -> str:
    return clean_markdown(textwrap.dedent(text).lstrip("\n"), dialect=dialect).text


def test_1_six_backtick_fence_holds_a_three_backtick_fence() -> None:
    src = """
    Three backticks \\`\\`\\` open a block.

    ``````markdown
    ```js
    var fun = function lang(l) {
    ```
    ``````

    <Since v="1" /> After.
    """
    assert clean(src) == textwrap.dedent("""\
        Three backticks \\`\\`\\` open a block.

        ``````markdown
        ```js
        var fun = function lang(l) {
        ```
        ``````

        After.
        """)


def test_2_fence_opened_with_three_closed_with_four() -> None:
    src = """
    ```js [[1, 1, "deferredValue"], [2, 4, "''"]]
    function Search({deferredValue}) {
        <Results query={value} />
    }
    ````

    When <CodeStep step={2}>initialValue</CodeStep> is provided.
    """
    assert clean(src) == textwrap.dedent("""\
        ```js [[1, 1, "deferredValue"], [2, 4, "''"]]
        function Search({deferredValue}) {
            <Results query={value} />
        }
        ````

        When initialValue is provided.
        """)


def test_3_wrapper_components_around_fences_without_blank_lines() -> None:
    src = """
    <PackageManagerTabs>
      <Fragment slot="npm">
      ```sh
      npx astro add react
      ```
      </Fragment>
      <Fragment slot="pnpm">
      ```sh
      pnpm astro add react
      ```
      </Fragment>
    </PackageManagerTabs>
    """
    assert clean(src) == "  ```sh\n  npx astro add react\n  ```\n\n  ```sh\n  pnpm astro add react\n  ```\n"


def test_4_steps_with_indented_admonition_jsx_and_astro_front_matter_in_code() -> None:
    src = """
    <Steps>
    1. Create a folder.

        <FileTree>
        - src/
          - assets/
        </FileTree>

        :::note
        `assets` is a convention.
        :::\x20

    2. Create a component.

        ```astro title="src/Card.astro"\x20
        ---
        import { Image } from 'astro:assets';
        ---
        ```
    </Steps>
    """
    assert clean(src) == textwrap.dedent("""\
        1. Create a folder.

            - src/
              - assets/

            **Note**

            `assets` is a convention.

        2. Create a component.

            ```astro title="src/Card.astro"\x20
            ---
            import { Image } from 'astro:assets';
            ---
            ```
        """)


def test_5_component_wrapping_code_with_imports_exports_and_jsx() -> None:
    src = """
    <Sandpack>

    ```js {expectedErrors: {'react-compiler': [7]}}
    import { sculptureList } from './data.js';

    export default function Gallery() {
      return (
        <>
          <button onClick={handleClick}>
        </>
      );
    }
    ```

    </Sandpack>
    """
    code = textwrap.dedent(src).strip().split("\n")[2:-2]
    assert clean(src) == "\n".join(code) + "\n"


def test_6_mdx_comment_heading_ids_leave_no_trailing_space() -> None:
    src = "## When a regular variable isn’t enough {/*when-a-regular-variable-isnt-enough*/}\n"
    result = clean_markdown(src)
    assert result.text == "## When a regular variable isn’t enough\n"
    assert result.dropped == {"mdx_comment": 1}


def test_7_inline_jsx_children_are_prose() -> None:
    src = """
    Consider this math formula: <Math><MathI>y</MathI> = 2<MathI>x</MathI></Math>.
    If <Math><MathI>x</MathI> = 2</Math> then <Math><MathI>y</MathI> = 4</Math>. Always.
    When <CodeStep step={2}>initialValue</CodeStep> is provided, `useDeferredValue` returns it.
    """
    assert clean(src) == (
        "Consider this math formula: y = 2x.\n"
        "If x = 2 then y = 4. Always.\n"
        "When initialValue is provided, `useDeferredValue` returns it.\n"
    )


def test_8_bare_less_than_in_prose_is_kept() -> None:
    src = ("You might be using a version of `react-dom` (< 16.8.0) or `react-native` (< 0.59) "
           "that doesn't yet support Hooks. See <Link to=\"/x\">this</Link>.\n")
    assert clean(src) == ("You might be using a version of `react-dom` (< 16.8.0) or `react-native` "
                          "(< 0.59) that doesn't yet support Hooks. See this.\n")


def test_9_generics_escapes_and_nested_link_in_raw_code_and_infinity() -> None:
    src = """
    <p>

    **Type:** <code>\\{ name: string; handler: () => Promise\\<<a href="#saferesult">SafeResult</a>\\>; \\}</code>
    </p>

    **Default:** {Infinity}<br />
    **Type:** `Promise<void>`
    """
    # Raw <code> becomes one code span: tags inside go, escapes read as what they show.
    assert clean(src) == (
        "**Type:** `{ name: string; handler: () => Promise<SafeResult>; }`\n"
        "\n"
        "**Default:** Infinity\n"
        "**Type:** `Promise<void>`\n"
    )


def test_10_jsx_string_expressions_become_their_whitespace() -> None:
    src = """
    <ConsoleLogLine level="error">

    Client Component used:{'\\n'}
    \\- A server/client branch.
    {'  '}\\<App\\>
    {'+    '}Client
    {'-    '}Server{'\\n'}
    {'  '}at throwOnHydrationMismatch

    </ConsoleLogLine>
    """
    assert clean(src) == (
        "Client Component used:\n"
        "\n"
        "\\- A server/client branch.\n"
        "  \\<App\\>\n"
        "+    Client\n"
        "-    Server\n"
        "\n"
        "  at throwOnHydrationMismatch\n"
    )


def test_11_nested_braces_strings_with_gt_and_style_objects_in_admonition() -> None:
    src = """
    <LoopingVideo sources={[{ src: '/videos/a.mp4', type: 'video/mp4' }]} title="a /> b > c" />

    :::tip Prefer a video course?

    Watch the first lesson right here:

    <div style={{position:"relative",paddingTop:"56.25%"}}>
      <iframe
        src="https://app.egghead.io/lessons/x"
        allowfullscreen
        style={{position:"absolute",top:0,left:0,width:"100%",height:"100%"}}
      ></iframe>
    </div>

    :::
    """
    assert clean(src) == "**Prefer a video course?**\n\nWatch the first lesson right here:\n"


def test_12_front_matter_quoted_title_comment_between_imports_and_space_title() -> None:
    src = """
    ---
    id: part-4-store
    title: 'Redux Fundamentals, Part 4: Store'
    sidebar_label: 'Store'
    ---

    import { DetailedExplanation } from '../../components/DetailedExplanation'

    <!-- prettier-ignore -->
    import FundamentalsWarning from "../../components/_FundamentalsWarning.mdx";

    :::tip What You'll Learn

    - How to create a Redux store
    :::

    <FundamentalsWarning />
    """
    result = clean_markdown(textwrap.dedent(src).lstrip("\n"), path="part-4-store.md")
    assert result.text == (
        "# Redux Fundamentals, Part 4: Store\n"
        "\n"
        "**What You'll Learn**\n"
        "\n"
        "- How to create a Redux store\n"
    )
    assert result.dropped == {"admonition": 1, "esm": 2, "front_matter": 1, "html_comment": 1,
                              "jsx_tag": 1}
    assert result.warnings == []
