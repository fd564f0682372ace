"""Atlassian Document Format (ADF) builders for Jira descriptions, comments and rich-text fields.

Every builder returns plain dicts that validate against Atlassian's published schema
(``adf-schema-full.json``, draft-04). Rules the schema enforces and these builders keep:

- a text node's ``text`` has ``minLength: 1``: empty strings produce *no* node (``text("")`` is None,
  and the containers drop None and empty strings);
- the ``code`` mark combines only with ``link``: asking for code with strong/em is an error;
- list items, table cells and headers need at least one block: an empty one holds an empty paragraph;
- a newline inside a string becomes a ``hardBreak`` in paragraphs, headings and cells.

``plain_text(doc)`` flattens a document back to text (blocks on their own lines, list items as
"- item", table cells joined by " | "), for tests and for reading comments.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any

Node = dict[str, Any]
Inline = Node | str | None


def text(s: str, *, strong: bool = False, em: bool = False, code: bool = False,
         link: str | None = None) -> Node | None:
    """One text node with marks; None for an empty string (ADF forbids empty text nodes)."""
    s = "" if s is None else str(s)
    if not s:
        return None
    if code and (strong or em):
        raise ValueError("ADF's code mark combines only with link, not with strong or em")
    marks: list[Node] = []
    if code:
        marks.append({"type": "code"})
    if strong:
        marks.append({"type": "strong"})
    if em:
        marks.append({"type": "em"})
    if link:
        marks.append({"type": "link", "attrs": {"href": str(link)}})
    node: Node = {"type": "text", "text": s}
    if marks:
        node["marks"] = marks
    return node


def link(label: str, href: str) -> Node | None:
    """A linked text run; the URL itself is the label when ``label`` is empty."""
    return text(label or href, link=href)


def hard_break() -> Node:
    return {"type": "hardBreak"}


def _inlines(items: Iterable[Inline | Iterable[Inline]]) -> list[Node]:
    out: list[Node] = []
    for item in items:
        if item is None:
            continue
        if isinstance(item, str):
            if "\n" not in item:          # the common case: one line, one plain text node (or none)
                if item:
                    out.append({"type": "text", "text": item})
                continue
            for i, line in enumerate(item.split("\n")):
                if i:
                    out.append(hard_break())
                node = text(line)
                if node is not None:
                    out.append(node)
        elif isinstance(item, Mapping):
            if item.get("type") == "text" and not item.get("text"):
                continue  # an empty text node built by hand
            out.append(dict(item))
        else:  # a nested list of inlines
            out.extend(_inlines(item))
    return out


def paragraph(*inlines: Inline | Iterable[Inline]) -> Node:
    """A paragraph of strings and inline nodes (an empty paragraph is valid ADF)."""
    content = _inlines(inlines)
    node: Node = {"type": "paragraph"}
    if content:
        node["content"] = content
    return node


def heading(s: str | Iterable[Inline], level: int = 2) -> Node:
    if not 1 <= int(level) <= 6:
        raise ValueError(f"heading level must be 1..6, not {level}")
    content = _inlines([s])
    node: Node = {"type": "heading", "attrs": {"level": int(level)}}
    if content:
        node["content"] = content
    return node


def bullet_list(items: Iterable[str | Node | Iterable[Inline]]) -> Node:
    """A bullet list: each item a string, an inline node, a list of inlines, or a block node."""
    list_items = [{"type": "listItem", "content": _item_blocks(item)} for item in items]
    if not list_items:
        raise ValueError("an ADF bulletList needs at least one item")
    return {"type": "bulletList", "content": list_items}


_BLOCK_TYPES = {"paragraph", "bulletList", "orderedList", "codeBlock", "heading", "rule", "table",
                "blockquote", "panel", "mediaSingle", "taskList"}


def _item_blocks(item: Any) -> list[Node]:
    if isinstance(item, Mapping) and item.get("type") in _BLOCK_TYPES:
        return [dict(item)]
    return [paragraph(item)]


def table(rows: list[list[str]], header: bool = True) -> Node:
    """A table; with ``header`` the first row is made of tableHeader cells."""
    if not rows:
        raise ValueError("an ADF table needs at least one row")
    out_rows = []
    for r, row in enumerate(rows):
        cell_type = "tableHeader" if header and r == 0 else "tableCell"
        cells = [{"type": cell_type, "content": _item_blocks("" if v is None else v)} for v in row]
        out_rows.append({"type": "tableRow", "content": cells})
    return {"type": "table", "attrs": {"isNumberColumnEnabled": False, "layout": "default"}, "content": out_rows}


def rule() -> Node:
    return {"type": "rule"}


def code_block(s: str, language: str | None = None) -> Node:
    node: Node = {"type": "codeBlock"}
    if language:
        node["attrs"] = {"language": language}
    if s:
        node["content"] = [{"type": "text", "text": s}]
    return node


def doc(*blocks: Node | str | None) -> Node:
    """The document root; strings become paragraphs, None is skipped."""
    content: list[Node] = []
    for block in blocks:
        if block is None:
            continue
        if isinstance(block, str):
            content.append(paragraph(block))
        else:
            content.append(dict(block))
    return {"type": "doc", "version": 1, "content": content}


def plain_text(node: Any) -> str:
    """The text of an ADF document (or any node): blocks on separate lines."""
    lines: list[str] = []
    _collect_blocks(node, lines)
    return "\n".join(lines)


def _inline_text(nodes: Iterable[Node]) -> str:
    parts: list[str] = []
    for n in nodes or []:
        t = n.get("type")
        if t == "text":
            parts.append(n.get("text", ""))
        elif t == "hardBreak":
            parts.append("\n")
        elif t == "mention":
            parts.append(str(n.get("attrs", {}).get("text", "")))
        elif t == "emoji":
            parts.append(str(n.get("attrs", {}).get("text") or n.get("attrs", {}).get("shortName", "")))
        elif t == "inlineCard":
            parts.append(str(n.get("attrs", {}).get("url", "")))
        elif t == "status":
            parts.append(str(n.get("attrs", {}).get("text", "")))
        elif t == "date":
            parts.append(str(n.get("attrs", {}).get("timestamp", "")))
        elif n.get("content"):
            parts.append(_inline_text(n["content"]))
    return "".join(parts)


def _collect_blocks(node: Any, lines: list[str], prefix: str = "") -> None:
    if isinstance(node, list):
        for n in node:
            _collect_blocks(n, lines, prefix)
        return
    if not isinstance(node, Mapping):
        return
    t = node.get("type")
    content = node.get("content") or []
    if t in ("paragraph", "heading", "codeBlock"):
        lines.append(prefix + _inline_text(content))
    elif t in ("bulletList", "orderedList"):
        for i, item in enumerate(content, start=1):
            marker = "- " if t == "bulletList" else f"{i}. "
            sub: list[str] = []
            _collect_blocks(item.get("content") or [], sub)
            for j, line in enumerate(sub):
                lines.append(prefix + (marker if j == 0 else " " * len(marker)) + line)
    elif t == "table":
        for row in content:
            cells = []
            for cell in row.get("content") or []:
                sub = []
                _collect_blocks(cell.get("content") or [], sub)
                cells.append(" ".join(sub))
            lines.append(prefix + " | ".join(cells))
    elif t == "rule":
        lines.append(prefix + "---")
    elif t == "text":
        lines.append(prefix + node.get("text", ""))
    else:  # doc, blockquote, panel, expand, listItem ...: recurse into the blocks
        _collect_blocks(content, lines, prefix)
