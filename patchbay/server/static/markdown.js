// Markdown to DOM for untrusted model output.
//
// The renderer never parses HTML and never assigns HTML strings: it builds elements with
// createElement and puts all text in text nodes. Raw HTML in the answer therefore shows as the
// literal text it is. Links are live only for absolute http, https and mailto addresses, and
// images become links, so an answer cannot make the browser fetch anything by itself.
//
// Supported: paragraphs, headings, bullet and numbered lists (nested by indentation), block
// quotes, horizontal rules, fenced code blocks (with a copy button), inline code, bold, italics,
// strikethrough, links and bare URLs. An unclosed code fence (an answer still streaming) renders
// as code up to the end.

const FENCE = /^ {0,3}(`{3,}|~{3,})\s*([^`\s]*)[^`]*$/;
const HEADING = /^ {0,3}(#{1,6})\s+(.*?)\s*#*\s*$/;
const RULE = /^ {0,3}([-*_])(?:\s*\1){2,}\s*$/;
const QUOTE = /^ {0,3}> ?(.*)$/;
const ITEM = /^( *)([-*+]|\d{1,9}[.)])(?: +(.*))?$/;
const SAFE_URL = /^(?:https?:\/\/|mailto:)/i;

/** The Markdown text as a DocumentFragment. */
export function renderMarkdown(text) {
  const fragment = document.createDocumentFragment();
  renderBlocks(String(text).replace(/\r\n?/g, "\n").split("\n"), fragment);
  return fragment;
}

function el(tag, className) {
  const node = document.createElement(tag);
  if (className) node.className = className;
  return node;
}

function indentOf(line) {
  return line.length - line.trimStart().length;
}

// ---------------------------------------------------------------- blocks

function renderBlocks(lines, parent) {
  let i = 0;
  while (i < lines.length) {
    const line = lines[i];
    if (!line.trim()) {
      i += 1;
      continue;
    }
    let match = FENCE.exec(line);
    if (match) {
      i = codeBlock(lines, i, match, parent);
      continue;
    }
    if ((match = HEADING.exec(line))) {
      const heading = el(`h${match[1].length}`);
      renderInline(match[2], heading);
      parent.append(heading);
      i += 1;
      continue;
    }
    if (RULE.test(line)) {
      parent.append(el("hr"));
      i += 1;
      continue;
    }
    if (QUOTE.test(line)) {
      const quoted = [];
      while (i < lines.length && lines[i].trim() && (match = QUOTE.exec(lines[i]))) {
        quoted.push(match[1]);
        i += 1;
      }
      const quote = el("blockquote");
      renderBlocks(quoted, quote);
      parent.append(quote);
      continue;
    }
    if (ITEM.test(line)) {
      i = list(lines, i, parent);
      continue;
    }
    i = paragraph(lines, i, parent);
  }
}

function startsBlock(line) {
  return FENCE.test(line) || HEADING.test(line) || RULE.test(line) || QUOTE.test(line) || ITEM.test(line);
}

function paragraph(lines, i, parent) {
  const text = [];
  while (i < lines.length && lines[i].trim() && (text.length === 0 || !startsBlock(lines[i]))) {
    text.push(lines[i].trim());
    i += 1;
  }
  const p = el("p");
  text.forEach((part, index) => {
    if (index > 0) p.append(el("br"));
    renderInline(part, p);
  });
  parent.append(p);
  return i;
}

function codeBlock(lines, i, match, parent) {
  const fence = match[1];
  const body = [];
  i += 1;
  while (i < lines.length && !(lines[i].trim().startsWith(fence) && !lines[i].trim().slice(fence.length).trim())) {
    body.push(lines[i]);
    i += 1;
  }
  parent.append(codeView(body.join("\n"), match[2]));
  return i + 1; // past the closing fence (or the end)
}

function codeView(code, language) {
  const box = el("div", "code-block");
  const head = el("div", "code-head");
  const label = el("span", "code-language");
  label.textContent = language || "code";
  const copy = el("button", "copy");
  copy.type = "button";
  copy.textContent = "Copy";
  const pre = el("pre");
  const codeElement = el("code");
  copy.addEventListener("click", () => copyText(code, copy, codeElement));
  head.append(label, copy);
  codeElement.textContent = code;
  pre.append(codeElement);
  box.append(head, pre);
  return box;
}

async function copyText(text, button, source) {
  let copied = false;
  try {
    await navigator.clipboard.writeText(text); // secure contexts only (https, localhost)
    copied = true;
  } catch {
    const range = document.createRange(); // elsewhere: select the code and use the old command
    range.selectNodeContents(source);
    getSelection().removeAllRanges();
    getSelection().addRange(range);
    copied = document.execCommand("copy");
  }
  button.textContent = copied ? "Copied" : "Copy failed";
  setTimeout(() => { button.textContent = "Copy"; }, 1500);
}

function list(lines, i, parent) {
  const first = ITEM.exec(lines[i]);
  const base = first[1].length;
  const ordered = /\d/.test(first[2]);
  const listElement = el(ordered ? "ol" : "ul");
  if (ordered && parseInt(first[2], 10) !== 1) listElement.start = parseInt(first[2], 10);
  while (i < lines.length) {
    const match = ITEM.exec(lines[i]);
    if (!match || match[1].length !== base || /\d/.test(match[2]) !== ordered) break;
    const content = [match[3] || ""];
    const inner = base + match[2].length + 1;
    i += 1;
    // The item's further lines: indented deeper than its marker, or lazy paragraph lines.
    while (i < lines.length) {
      const line = lines[i];
      if (!line.trim()) {
        const next = lines[i + 1];
        if (next !== undefined && next.trim() && indentOf(next) > base) {
          content.push("");
          i += 1;
          continue;
        }
        break;
      }
      if (indentOf(line) > base) {
        content.push(line.slice(Math.min(indentOf(line), inner)));
      } else if (!startsBlock(line)) {
        content.push(line.trim());
      } else {
        break;
      }
      i += 1;
    }
    const item = el("li");
    if (content.length === 1) renderInline(content[0], item);
    else renderBlocks(content, item);
    listElement.append(item);
    while (i < lines.length && !lines[i].trim()) {
      const next = lines[i + 1];
      if (next === undefined || !ITEM.test(next) || ITEM.exec(next)[1].length !== base) break;
      i += 1; // a blank line between two items of the same list
    }
  }
  parent.append(listElement);
  return i;
}

// ---------------------------------------------------------------- inline

const INLINE_RULES = [
  { pattern: /^\\([\\`*_{}[\]()#+\-.!~>|])/, render: (m, parent) => parent.append(m[1]) },
  {
    pattern: /^(`+)([^`]|[^`][\s\S]*?[^`])\1(?!`)/,
    render: (m, parent) => {
      const code = el("code");
      code.textContent = m[2];
      parent.append(code);
    },
  },
  { pattern: /^!\[([^\]]*)\]\(\s*<?([^\s<>()]+)>?(?:\s+"[^"]*")?\s*\)/, render: (m, parent) => link(m[1] || m[2], m[2], parent) },
  { pattern: /^\[([^\]]+)\]\(\s*<?([^\s<>]*?)>?(?:\s+"[^"]*")?\s*\)/, render: (m, parent) => link(m[1], m[2], parent) },
  { pattern: /^<((?:https?:\/\/|mailto:)[^\s<>]+)>/i, render: (m, parent) => link(m[1], m[1], parent) },
  {
    pattern: /^https?:\/\/[^\s<>"'`]*[^\s<>"'`.,;:!?)\]]/i,
    render: (m, parent) => link(m[0], m[0], parent),
    word: true,
  },
  { pattern: /^(\*\*|__)(?=\S)([\s\S]*?\S)\1/, render: (m, parent) => wrap("strong", m[2], parent) },
  { pattern: /^~~(?=\S)([\s\S]*?\S)~~/, render: (m, parent) => wrap("del", m[1], parent) },
  { pattern: /^\*(?=[^\s*])([\s\S]*?[^\s*])\*(?!\*)/, render: (m, parent) => wrap("em", m[1], parent) },
  { pattern: /^_(?=[^\s_])([\s\S]*?[^\s_])_(?![\w])/, render: (m, parent) => wrap("em", m[1], parent), word: true },
];

const TRIGGERS = new Set(["\\", "`", "!", "[", "<", "h", "H", "*", "_", "~"]);

function renderInline(text, parent) {
  let plain = "";
  let i = 0;
  const flush = () => {
    if (plain) parent.append(plain);
    plain = "";
  };
  while (i < text.length) {
    const c = text[i];
    if (TRIGGERS.has(c)) {
      const rest = text.slice(i);
      const previous = i > 0 ? text[i - 1] : " ";
      const rule = INLINE_RULES.find((r) => (!r.word || !/\w/.test(previous)) && r.pattern.test(rest));
      if (rule) {
        const match = rule.pattern.exec(rest);
        flush();
        rule.render(match, parent);
        i += match[0].length;
        continue;
      }
    }
    plain += c;
    i += 1;
  }
  flush();
}

function wrap(tag, inner, parent) {
  const node = el(tag);
  renderInline(inner, node);
  parent.append(node);
}

function link(label, url, parent) {
  const target = url.trim();
  if (!SAFE_URL.test(target)) {
    parent.append(label); // not a web or mail address (javascript:, data:, relative...): plain text
    return;
  }
  const a = el("a");
  a.href = target;
  a.rel = "noopener noreferrer nofollow";
  a.target = "_blank";
  a.textContent = label;
  parent.append(a);
}
