"""HTML main text with selectolax (lexbor): navigation, scripts, styles and forms dropped,
headings written as Markdown ``#`` lines (the chunker cuts at them; chunks get a heading path),
``<pre>`` as fenced code, list items as ``- `` lines, table rows as ``a | b`` lines.

The main text is ``<main>`` (or ``role="main"``), else a single ``<article>``, else ``<body>``,
less what is navigation by its tag or ARIA role. The charset comes from the document: a byte
order mark, then ``<meta charset>`` / ``http-equiv`` or an XML declaration in the first 4 KiB,
else UTF-8 (and windows-1252 when the bytes are not UTF-8), as browsers do.
"""

from __future__ import annotations

import codecs
import re
from typing import Any

from qflume.readers import Document, ReaderSkip

_META = re.compile(
    rb"""<meta[^>]*?charset\s*=\s*["']?\s*([A-Za-z0-9_.:-]+)|<\?xml[^>]*?encoding\s*=\s*["']([A-Za-z0-9_.:-]+)""",
    re.I,
)
# Labels browsers read as windows-1252 (WHATWG Encoding): its superset.
_AS_1252 = {"iso-8859-1", "latin1", "latin-1", "l1", "us-ascii", "ascii", "iso8859-1", "cp819"}

_DROP = (
    "script, style, noscript, template, svg, math, iframe, object, embed, canvas, form, "
    "button, select, textarea, input, nav, aside, footer, dialog, "
    "[role=navigation], [role=banner], [role=contentinfo], [role=search], "
    "[role=complementary], [aria-hidden=true], [hidden], a.headerlink"
)
_BLOCKS = (
    "p, div, section, article, main, header, blockquote, dl, dt, dd, ul, ol, figure, "
    "figcaption, address, details, summary, table, caption, hr, center"
)
# Markers that survive whitespace collapsing: a paragraph break, a line break, a kept space.
_PARA, _LINE, _SPACE = "\x1e", "\x1f", "\x1d"
_WS = re.compile(r"[ \t\n\r\f\v\u00a0]+")
_AROUND = re.compile(r" ?([\x1e\x1f]) ?")
_BREAKS = re.compile(r"[\x1e\x1f]+")


def charset(data: bytes) -> str:
    """The codec name for ``data``, from its byte order mark or its own declaration."""
    if data.startswith(codecs.BOM_UTF8):
        return "utf-8-sig"
    if data.startswith((codecs.BOM_UTF16_LE, codecs.BOM_UTF16_BE)):
        return "utf-16"
    m = _META.search(data, 0, 4096)
    if m is not None:
        label = (m.group(1) or m.group(2)).decode("ascii").lower()
        if label in _AS_1252:
            return "cp1252"
        try:
            name = codecs.lookup(label).name
        except LookupError:
            name = ""
        # a page saved as UTF-8 that still says utf-16 (it cannot be: the tag was readable)
        if name and not name.startswith("utf-16") and not name.startswith("utf-32"):
            return name
    try:
        data.decode("utf-8")
    except UnicodeDecodeError:
        return "cp1252"
    return "utf-8"


def decode(data: bytes) -> str:
    return data.decode(charset(data), errors="replace")


def read(path: str) -> Document:
    try:
        with open(path, "rb") as f:
            data = f.read()
    except OSError as e:
        raise ReaderSkip("unreadable", f"cannot read: {e.strerror or e}") from None
    return from_bytes(data)


def from_bytes(data: bytes) -> Document:
    from selectolax.lexbor import LexborHTMLParser

    tree = LexborHTMLParser(decode(data).replace("\x00", ""))
    title_node = tree.css_first("head > title") or tree.css_first("title")
    title = _WS.sub(" ", title_node.text(deep=True)).strip() if title_node is not None else ""
    root = _main(tree)
    if root is None:
        return Document("", {"title": title} if title else {}, markdown=True)
    text = _text(root)
    meta: dict[str, Any] = {"title": title} if title else {}
    return Document(text, meta, markdown=True)


def _main(tree: Any) -> Any:
    body = tree.body
    if body is None:
        return tree.root
    for node in body.css(_DROP):
        node.decompose()
    root = body
    for sel in ("main", "[role=main]"):
        found = body.css(sel)
        if found:
            root = found[0]
            break
    else:
        articles = body.css("article")
        if len(articles) == 1:
            root = articles[0]
    _drop_link_lists(root)
    return root


def _drop_link_lists(root: Any) -> None:
    """Menus and tables of contents outside <nav>: outermost lists of 3+ items whose text is
    nearly all link text."""
    for lst in root.css("ul, ol"):
        up, depth = lst.parent, 0
        while up is not None and up.tag not in ("ul", "ol") and depth < 64:
            up, depth = up.parent, depth + 1
        if up is not None:  # inside another list (or too deep to tell: left as it is)
            continue
        items = lst.css("li")
        if len(items) < 3:
            continue
        total = len(_WS.sub("", lst.text(deep=True)))
        linked = sum(len(_WS.sub("", a.text(deep=True))) for a in lst.css("a"))
        if total and linked >= 0.9 * total:
            lst.decompose()


def _text(root: Any) -> str:
    for pre in root.css("pre"):
        code = pre.text(deep=True).replace("\r\n", "\n").strip("\n").expandtabs(4)
        code = code.replace("\n", _LINE).replace(" ", _SPACE)
        pre.replace_with(f"{_PARA}```{_LINE}{code}{_LINE}```{_PARA}")
    for h in root.css("h1, h2, h3, h4, h5, h6"):
        title = _WS.sub(" ", h.text(deep=True)).strip()
        mark = "#" * int(h.tag[1])
        h.replace_with(f"{_PARA}{mark} {title}{_PARA}" if title else _PARA)
    for br in root.css("br"):
        br.replace_with(_LINE)
    for li in root.css("li"):
        li.insert_before(f"{_LINE}- ")
        li.insert_after(_LINE)
    for cell in root.css("td, th"):
        cell.insert_after(" | ")
    for tr in root.css("tr"):
        tr.insert_before(_LINE)
        tr.insert_after(_LINE)
    for block in root.css(_BLOCKS):
        block.insert_before(_PARA)
        block.insert_after(_PARA)
    raw = root.text(deep=True)
    # whitespace as a browser renders it, then the markers as line breaks
    flat = _AROUND.sub(r"\1", _WS.sub(" ", raw))
    flat = flat.replace(f" | {_LINE}", _LINE).replace(f" |{_LINE}", _LINE)
    out = _BREAKS.sub(lambda m: "\n\n" if _PARA in m.group() else "\n", flat)
    return out.replace(_SPACE, " ").strip()
