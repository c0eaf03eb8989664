// Reference reader for benchmarks/check_clean.py (dev only).
//
// Reads JSON lines {id, text, mdx} on stdin and writes one JSON line per document:
//   code:    [lang, meta, value] for every fenced/indented code block
//   visible: the text a reader sees (text and inline code nodes)
//   spans:   the value of every inline code node
//   junk:    text a reader does not see (JSX attribute values, expressions, ESM,
//            front matter, raw HTML/comments)
//   flagged: [line, kind] for constructs that should not survive cleaning
//            (raw HTML or JSX tags, HTML comments, MDX comments, ESM)
//   error:   the parse error, when `mdx` was asked for and the text is not valid MDX
//            (the text is then read as plain Markdown)
// Input is read with remark-parse + remark-mdx (+ GFM, front matter) when mdx is true,
// and with remark-parse + GFM + front matter (CommonMark) otherwise.
import { createInterface } from "node:readline";
import { unified } from "unified";
import remarkParse from "remark-parse";
import remarkMdx from "remark-mdx";
import remarkGfm from "remark-gfm";
import remarkFrontmatter from "remark-frontmatter";
import { visit } from "unist-util-visit";

const mdxReader = unified().use(remarkParse).use(remarkMdx).use(remarkGfm)
  .use(remarkFrontmatter, ["yaml", "toml"]);
const mdReader = unified().use(remarkParse).use(remarkGfm)
  .use(remarkFrontmatter, ["yaml", "toml"]);

function attrText(attr) {
  if (attr.type === "mdxJsxExpressionAttribute") return attr.value;
  if (attr.value == null) return attr.name;
  if (typeof attr.value === "string") return attr.value;
  return attr.value.value ?? "";
}

function read(text, mdx) {
  let tree;
  let error = null;
  try {
    tree = (mdx ? mdxReader : mdReader).parse(text);
  } catch (e) {
    error = String(e.message || e).split("\n")[0];
    try {
      // Docusaurus turns HTML comments into MDX comments before compiling: do the same.
      tree = mdxReader.parse(text.replace(/<!--([\s\S]*?)-->/g, "{/*$1*/}"));
      error = null;
    } catch {
      tree = mdReader.parse(text);
    }
  }
  const code = [];
  const visible = [];
  const junk = [];
  const spans = [];
  const flagged = [];
  const line = (node) => (node.position ? node.position.start.line : 0);
  visit(tree, (node) => {
    switch (node.type) {
      case "code":
        code.push([node.lang ?? "", node.meta ?? "", node.value]);
        return "skip";
      case "text":
        visible.push(node.value);
        if (node.value.includes("{/*")) flagged.push([line(node), "mdx_comment"]);
        return undefined;
      case "inlineCode":
        visible.push(node.value);
        spans.push(node.value);
        return undefined;
      case "yaml":
      case "toml":
        junk.push(node.value);
        return "skip";
      case "html":
        junk.push(node.value);
        flagged.push([line(node), node.value.trimStart().startsWith("<!--") ? "html_comment" : "tag"]);
        return "skip";
      case "mdxjsEsm":
        junk.push(node.value);
        flagged.push([line(node), "esm"]);
        return "skip";
      case "mdxFlowExpression":
      case "mdxTextExpression":
        junk.push(node.value);
        flagged.push([line(node), node.value.trim().startsWith("/*") ? "mdx_comment" : "expression"]);
        return "skip";
      case "mdxJsxFlowElement":
      case "mdxJsxTextElement":
        for (const a of node.attributes) junk.push(attrText(a));
        flagged.push([line(node), "tag"]);
        return undefined;
      case "paragraph": {
        const first = node.children[0];
        if (first && first.type === "text" && /^(import|export)\s[^\n]*(from\s*['"]|=)/.test(first.value)) {
          flagged.push([line(node), "esm"]);
        }
        return undefined;
      }
      default:
        return undefined;
    }
  });
  return { code, spans, visible: visible.join(" "), junk: junk.join(" "), flagged, error };
}

const rl = createInterface({ input: process.stdin, crlfDelay: Infinity });
for await (const raw of rl) {
  if (!raw.trim()) continue;
  const doc = JSON.parse(raw);
  process.stdout.write(JSON.stringify({ id: doc.id, ...read(doc.text, doc.mdx) }) + "\n");
}
