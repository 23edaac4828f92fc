"""Documents in: PDF, HTML, DOCX and Markdown through the pipeline (qflume.readers).

Real files come from Debian: the PDFs of TeX Live's font documentation (the package is
unpacked by the test itself when it is not installed: 2.8 MB, without its TeX dependencies) and
the Python docs' HTML (python3.11-doc). Broken and special files are made here: an encrypted
PDF, an image-only one, a corrupt one, DOCX files with python-docx.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
import tracemalloc
from pathlib import Path
from typing import Any

import pytest

import qflume
from pdfgen import encrypt, make_pdf
from qflume.exceptions import InvalidInputError
from qflume.pipeline import Pipeline
from qflume.readers import Document, ReaderSkip, html, pdf
from qflume.readers.meta import heading_index
from qflume.scan import scan
from qflume.stages import read as qread
from qflume.stages.context import Run

ROOT = Path(__file__).resolve().parent.parent
TEX_PKG = "texlive-fonts-recommended-doc"
TEX_DOCS = "usr/share/doc/texlive-doc/fonts"
PY_HTML = Path("/usr/share/doc/python3.11/html")


def _tex_pdfs() -> list[Path]:
    """The TeX Live font docs' PDFs: installed, unpacked before (target/debian), or unpacked
    now from the Debian package (apt-get download + dpkg-deb -x, no dependencies)."""
    for base in (Path("/"), ROOT / "target/debian/root"):
        found = sorted((base / TEX_DOCS).rglob("*.pdf"))
        if found:
            return found
    dest = ROOT / "target/debian"
    dest.mkdir(parents=True, exist_ok=True)
    try:
        subprocess.run(["apt-get", "download", TEX_PKG], cwd=dest, check=True, capture_output=True)
        deb = next(dest.glob(f"{TEX_PKG}_*.deb"))
        subprocess.run(["dpkg-deb", "-x", str(deb), str(dest / "root")], check=True)
    except (OSError, subprocess.CalledProcessError, StopIteration) as e:
        pytest.skip(f"the Debian package {TEX_PKG} is not installed and cannot be fetched: {e}")
    return sorted((dest / "root" / TEX_DOCS).rglob("*.pdf"))


@pytest.fixture(scope="module")
def tex_pdfs() -> list[Path]:
    return _tex_pdfs()


@pytest.fixture(scope="module")
def tiny(tiny_model: Path) -> str:
    return str(tiny_model)


def _pipe(store: Path, model: str, **kw: Any) -> Pipeline:
    kw.setdefault("progress", False)
    return Pipeline("docs", store=store, model=model, **kw)


def _payloads(p: Pipeline) -> dict[str, list[dict[str, Any]]]:
    """source -> metadata of its points (with the text under 'text'), in chunk order."""
    out: dict[str, list[dict[str, Any]]] = {}
    for rec in p.sink.scroll(with_payload=True):
        assert rec.payload is not None
        meta = {**rec.payload["metadata"], "text": rec.payload["page_content"]}
        out.setdefault(meta["source"], []).append(meta)
    for v in out.values():
        v.sort(key=lambda m: m["chunk_index"])
    return out


def _page_texts(doc: Document) -> list[str]:
    assert doc.pages is not None
    ends = [*doc.pages[1:], len(doc.text)]
    return [doc.text[a:b] for a, b in zip(doc.pages, ends, strict=True)]


def _pages_of(meta: dict[str, Any]) -> tuple[int, int]:
    if "page" in meta:
        assert "page_start" not in meta and "page_end" not in meta
        return meta["page"], meta["page"]
    assert meta["page_start"] < meta["page_end"]
    return meta["page_start"], meta["page_end"]


# -- the scan lets reader files through --------------------------------------------------------


def test_scan_hashes_reader_extensions_as_raw_bytes(tmp_path: Path) -> None:
    data = make_pdf([["hello"]]) + b"\x00\xff\xfe"
    (tmp_path / "a.PDF").write_bytes(data)
    (tmp_path / "b.bin").write_bytes(data)
    (tmp_path / "c.html").write_bytes("<p>caf\xe9</p>".encode("latin-1"))
    plain = {e.key: e.skip for e in scan(tmp_path)}
    assert plain == {"a.PDF": "binary", "b.bin": "binary", "c.html": "not-utf8"}
    raw = {e.key: e for e in scan(tmp_path, raw_extensions=["pdf", ".html"])}
    assert raw["a.PDF"].skip is None and raw["a.PDF"].hash == qflume.content_hash(data)
    assert raw["c.html"].skip is None and raw["b.bin"].skip == "binary"


# -- PDF ------------------------------------------------------------------------------------------


def test_debian_pdfs_chunks_carry_their_pages_and_offsets(
    tmp_path: Path, tex_pdfs: list[Path], tiny: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    corpus = tmp_path / "pdfs"
    corpus.mkdir()
    for f in tex_pdfs:
        shutil.copy(f, corpus / f.name)
    with _pipe(tmp_path / "store", tiny) as p:
        r = p.ingest(corpus)
        assert r.documents_skipped == 0, r.skipped
        assert r.documents_new == len(tex_pdfs) >= 5
        got = _payloads(p)
    assert set(got) == {f.name for f in tex_pdfs}
    spanning = 0
    for name, chunks in got.items():
        doc = pdf.read(str(corpus / name))
        assert isinstance(doc, Document) and doc.pages is not None
        n = len(doc.pages)
        for m in chunks:
            # offsets point into the extracted text; the page(s) are where those offsets lie
            assert doc.text[m["start"] : m["end"]] == m["text"]
            a, b = _pages_of(m)
            spanning += a != b
            assert 1 <= a <= b <= n
            assert doc.pages[a - 1] <= m["start"] and (a == n or m["start"] < doc.pages[a])
            assert doc.pages[b - 1] < m["end"]
        # every page with text has a chunk on it
        with_text = {i + 1 for i, t in enumerate(_page_texts(doc)) if t.strip()}
        covered = {i for m in chunks for i in range(_pages_of(m)[0], _pages_of(m)[1] + 1)}
        assert with_text <= covered, name
    assert spanning > 0  # some chunk runs over a page break
    # unchanged files are never extracted again: no reader process is even started
    with _pipe(tmp_path / "store", tiny) as p:
        started = []
        orig = Run.readers_pool
        monkeypatch.setattr(Run, "readers_pool", lambda run: started.append(1) or orig(run))
        r = p.ingest(corpus)
        assert (r.documents_unchanged, r.points_upserted, started) == (len(tex_pdfs), 0, [])
        (corpus / tex_pdfs[0].name).touch()  # same bytes, new mtime: hashed, still not read
        r = p.ingest(corpus)
        assert (r.documents_unchanged, r.points_upserted, started) == (len(tex_pdfs), 0, [])


def test_encrypted_image_only_and_corrupt_pdfs_are_named_skips(tmp_path: Path, tiny: str) -> None:
    corpus = tmp_path / "c"
    corpus.mkdir()
    good = make_pdf([["The quick brown fox jumps over the lazy dog."]])
    (corpus / "good.pdf").write_bytes(good)
    (corpus / "locked.pdf").write_bytes(encrypt(good))
    (corpus / "scan.pdf").write_bytes(make_pdf([], image_pages=3))
    (corpus / "broken.pdf").write_bytes(b"%PDF-1.4\n" + bytes(range(256)) * 20)
    (corpus / "cut.pdf").write_bytes(good[:40])
    (corpus / "empty.html").write_bytes(b"<html><body><nav>menu</nav><script>x()</script></body>")
    (corpus / "fake.docx").write_bytes(b"PK\x03\x04 not really a zip")
    with _pipe(tmp_path / "store", tiny) as p:
        r = p.ingest(corpus)
    reasons = {s["key"]: s["reason"] for s in r.skipped}
    assert reasons == {
        "locked.pdf": "encrypted",
        "scan.pdf": "no-text",
        "broken.pdf": "unreadable",
        "cut.pdf": "unreadable",
        "empty.html": "no-text",
        "fake.docx": "unreadable",
    }
    details = {s["key"]: s.get("detail", "") for s in r.skipped}
    assert "password" in details["locked.pdf"] and "3 pages" in details["scan.pdf"]
    assert r.documents_skipped == 6 and r.points_upserted >= 1


def test_large_pdf_goes_window_by_window_with_the_same_chunks(
    tmp_path: Path, tiny: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    pages = [[f"Page {i} line {k} of the long report about rivers and hills." for k in range(6)]
             for i in range(1, 151)]  # fmt: skip
    corpus = tmp_path / "c"
    corpus.mkdir()
    (corpus / "long.pdf").write_bytes(make_pdf(pages))
    runs = []
    for whole in (1000, 64):  # read whole, then window by window (150 > 64 pages)
        monkeypatch.setattr(qread, "PDF_WHOLE_PAGES", whole)
        with _pipe(tmp_path / f"s{whole}", tiny, chunk_chars=300) as p:
            r = p.ingest(corpus)
            assert r.documents_skipped == 0, r.skipped
            runs.append(_payloads(p)["long.pdf"])
    assert runs[0] == runs[1]
    chunks = runs[0]
    assert chunks[-1]["page"] == 150
    for m in chunks:  # every chunk says the pages its text was printed on
        a, b = _pages_of(m)
        found = [int(x) for x in re.findall(r"Page (\d+) line", m["text"])]
        assert found and a <= min(found) and max(found) <= b


def test_a_2000_page_pdf_is_never_held_whole(tmp_path: Path, tiny: str) -> None:
    line = "Lorem ipsum dolor sit amet, consectetur adipiscing elit, sed do eiusmod tempor."
    corpus = tmp_path / "c"
    corpus.mkdir()
    (corpus / "big.pdf").write_bytes(
        make_pdf([[f"{i}.{k} {line}" for k in range(30)] for i in range(2000)])
    )
    text_chars = 2000 * 30 * (len(line) + 6)  # ~5 MB of text, ~10 MB as Python str objects
    with _pipe(tmp_path / "store", tiny, chunk_chars=1000) as p:
        assert p.embedder.dim > 0  # loaded before measuring
        tracemalloc.start()
        try:
            r = p.ingest(corpus, dry_run=True)
            _, peak = tracemalloc.get_traced_memory()
        finally:
            tracemalloc.stop()
    assert r.documents_skipped == 0 and r.chunks_total > 5000
    assert peak < text_chars / 3, f"peak {peak} bytes for {text_chars} chars of text"


def test_pdf_self_retrieval_finds_the_page(tmp_path: Path, tex_pdfs: list[Path]) -> None:
    """A sentence from page N finds a chunk whose page is N (the real default model)."""
    src = next(f for f in tex_pdfs if f.name == "txfontsdoc.pdf")
    doc = pdf.read(str(src))
    assert isinstance(doc, Document) and doc.pages is not None
    corpus = tmp_path / "c"
    corpus.mkdir()
    shutil.copy(src, corpus / src.name)
    page_texts = _page_texts(doc)
    probes = []
    for n, t in enumerate(page_texts, 1):
        lines = [  # prose: lines of 9+ words, nearly all of them words of 3+ letters
            x.strip()
            for x in t.split("\n")
            if len(x.split()) >= 9 and len(re.findall(r"[A-Za-z]{3,}", x)) >= 0.7 * len(x.split())
        ]
        if lines and n > 1:
            probes.append((n, lines[len(lines) // 2]))
    probes = probes[:: max(1, len(probes) // 6)][:6]
    assert len(probes) >= 4
    with Pipeline("docs", store=tmp_path / "store", progress=False) as p:
        p.ingest(corpus)
        hits = p.search([q for _, q in probes], limit=3)
    found = 0
    for (n, q), top in zip(probes, hits, strict=True):
        pages = [_pages_of(h.metadata) for h in top]
        assert any(a <= n <= b for a, b in pages), (n, q, pages)
        found += pages[0][0] <= n <= pages[0][1]
    assert found >= len(probes) / 2  # first; and all of them in the top 3


# -- page or heading changes are payload updates ---------------------------------------------------


def _paged(path: str) -> Document:
    """A plug-in reader: pages of a text file separated by form feeds (which are not text)."""
    raw = Path(path).read_text(encoding="utf-8")
    parts = raw.split("\f")
    starts, pos = [], 0
    for part in parts:
        starts.append(pos)
        pos += len(part)
    return Document("".join(parts), pages=starts)


@pytest.fixture(scope="module")
def grpc_server() -> Any:
    from qflume.testing import QdrantGrpcServer

    with QdrantGrpcServer() as srv:
        yield srv


@pytest.mark.parametrize("target", ["edge", "grpc"])
def test_a_chunk_whose_page_changed_is_a_payload_update(
    tmp_path: Path, tiny: str, target: str, request: pytest.FixtureRequest
) -> None:
    """Pages reach both sinks (the gRPC packer folds them into per-document metadata), and a
    restated chunk's metadata is replaced whole on both."""
    corpus = tmp_path / "c"
    corpus.mkdir()
    f = corpus / "r.pages"
    paras = ["alpha river stone", "beta hill cloud", "gamma field rain", "delta town road"]
    body = "\n\n".join(paras)
    cut = body.index("gamma")
    runs = []
    kw: dict[str, Any] = {"chunk_chars": 20, "readers": {".pages": _paged}, "progress": False}
    if target == "grpc":
        kw.update(url=request.getfixturevalue("grpc_server").url, state_dir=tmp_path / "state")
    else:
        kw.update(store=tmp_path / "store")
    for text in (body[:cut] + "\f" + body[cut:], body[: cut + 3] + "\f" + body[cut + 3 :], body):
        f.write_text(text, encoding="utf-8")
        with Pipeline(f"pages_{target}", model=tiny, **kw) as p:
            runs.append((p.ingest(corpus), _payloads(p)["r.pages"]))
    (r1, c1), (r2, c2), (r3, c3) = runs
    assert [m["text"] for m in c1] == paras and r1.points_upserted == 4
    assert [_pages_of(m) for m in c1] == [(1, 1), (1, 1), (2, 2), (2, 2)]
    # the same text, cut into pages elsewhere: nothing re-embedded or re-sent, pages restated
    assert (r2.points_upserted, r2.chunks_embedded, r2.payload_updates) == (0, 0, 1)
    assert [_pages_of(m) for m in c2] == [(1, 1), (1, 1), (1, 2), (2, 2)]
    # one page again: the spanning keys are gone, not left behind
    assert (r3.points_upserted, r3.payload_updates) == (0, 2)
    assert [_pages_of(m) for m in c3] == [(1, 1)] * 4
    assert all(set(m) - {"page"} == set(c1[0]) - {"page"} for m in c3)
    assert [m["start"] for m in c3] == [m["start"] for m in c1]


def test_a_renamed_heading_restates_the_chunks_under_it(tmp_path: Path, tiny: str) -> None:
    corpus = tmp_path / "c"
    corpus.mkdir()
    f = corpus / "guide.md"
    runs = []
    for title in ("Setup", "Start"):  # same length: the chunks below keep their offsets
        f.write_text(
            f"# Guide\n\nintro words here\n\n## {title}\n\nfirst step words\n\nsecond step words\n",
            encoding="utf-8",
        )
        with _pipe(tmp_path / "store", tiny, chunk_chars=20) as p:
            runs.append((p.ingest(corpus), _payloads(p)["guide.md"]))
    (_, c1), (r2, c2) = runs
    assert [m.get("heading") for m in c1] == ["Guide"] * 2 + ["Guide > Setup"] * 3
    assert [m.get("heading") for m in c2] == ["Guide"] * 2 + ["Guide > Start"] * 3
    assert r2.points_upserted == 1 and r2.payload_updates == 2  # the heading chunk is new


# -- HTML -----------------------------------------------------------------------------------------


@pytest.mark.skipif(not PY_HTML.is_dir(), reason="python3.11-doc is not installed")
def test_python_docs_html_main_text_title_and_headings(tmp_path: Path, tiny: str) -> None:
    corpus = tmp_path / "html"
    corpus.mkdir()
    names = ["json.html", "functools.html", "csv.html"]
    for name in names:
        shutil.copy(PY_HTML / "library" / name, corpus / name)
    with _pipe(tmp_path / "store", tiny) as p:
        r = p.ingest(corpus)
        got = _payloads(p)
    assert r.documents_skipped == 0 and set(got) == set(names)
    chunks = got["json.html"]
    assert chunks[0]["title"].startswith("json — JSON encoder and decoder")
    assert chunks[0]["heading"] == "json — JSON encoder and decoder"
    text = " ".join(m["text"] for m in chunks)
    # no navigation (Sphinx's related bars and sidebar), no script or style, no markup
    for gone in ("Previous topic", "Quick search", "Navigation", "Show Source", "<div", "var "):
        assert gone not in text
    assert "Basic Usage" in text and "json.dumps" in text
    headings = {m.get("heading") for m in chunks}
    assert "json — JSON encoder and decoder > Basic Usage" in headings
    doc = html.read(str(corpus / "json.html"))
    for m in chunks:
        assert doc.text[m["start"] : m["end"]] == m["text"]
        assert m["heading"].startswith("json — JSON")


def test_html_charset_comes_from_the_document(tmp_path: Path) -> None:
    body = "<h1>Café crème</h1><p>Über naïve façades — “quoted”.</p>"
    cases = {
        "meta.html": f'<html><head><meta charset="iso-8859-1"></head><body>{body}</body></html>'.replace(
            "—", "-"
        )
        .replace("“", '"')
        .replace("”", '"')
        .encode("latin-1"),
        "equiv.html": (
            '<html><head><meta http-equiv="Content-Type" content="text/html; charset=windows-1252">'
            f"</head><body>{body}</body></html>"
        ).encode("cp1252"),
        "bom.html": f"<html><body>{body}</body></html>".encode("utf-16"),
        "plain.html": f"<html><body>{body}</body></html>".encode(),
        "undeclared.html": f"<html><body>{body}</body></html>".encode("cp1252"),
        "koi8.html": '<meta charset="koi8-r"><p>Привет, мир</p>'.encode("koi8-r"),
    }
    for name, data in cases.items():
        (tmp_path / name).write_bytes(data)
        doc = html.read(str(tmp_path / name))
        if name == "koi8.html":
            assert doc.text == "Привет, мир"
            continue
        assert doc.text.startswith("# Café crème\n\nÜber naïve façades"), (name, doc.text)
        assert "\ufffd" not in doc.text


def test_html_structure_lists_tables_code_and_menus() -> None:
    page = b"""<html><head><title>T</title><style>p{}</style></head><body>
    <header role="banner">Site name</header>
    <ul class="menu"><li><a href="/">Home</a></li><li><a href="/a">About</a></li>
        <li><a href="/b">Blog</a></li></ul>
    <article><h2>Setup <a class="headerlink" href="#s">\xc2\xb6</a></h2>
    <p>Install   it
       now.<br>Then run:</p>
    <pre>  # a comment, not a heading
  run --fast</pre>
    <ul><li>one item with <a href="#">a link</a> inside</li><li>two</li></ul>
    <table><tr><th>Name</th><th>Size</th></tr><tr><td>a</td><td>1</td></tr></table>
    <script>alert(1)</script><noscript>enable js</noscript>
    </article><footer>(c) 2024</footer></body></html>"""
    doc = html.from_bytes(page)
    assert doc.metadata == {"title": "T"} and doc.markdown
    assert doc.text == (
        "## Setup\n\nInstall it now.\nThen run:\n\n```\n  # a comment, not a heading\n"
        "  run --fast\n```\n\n- one item with a link inside\n- two\n\nName | Size\na | 1"
    )
    # the heading path comes from the '#' line, not from the comment in the code block
    assert heading_index(doc.text) == ([0], ["Setup"])


# -- DOCX and Markdown ----------------------------------------------------------------------------


def test_docx_paragraphs_headings_and_tables_in_reading_order(tmp_path: Path, tiny: str) -> None:
    docx = pytest.importorskip("docx")
    d = docx.Document()
    d.add_heading("Annual report", 0)
    d.add_paragraph("The year in one line.")
    d.add_heading("Revenue", 1)
    d.add_paragraph("Revenue grew in the north.")
    t = d.add_table(rows=2, cols=3)
    for i, row in enumerate(t.rows):
        for j, cell in enumerate(row.cells):
            cell.text = ["Region", "Q1", "Q2"][j] if i == 0 else ["North", "10", "12"][j]
    d.add_paragraph("After the table.")
    d.add_paragraph("A bullet", style="List Bullet")
    d.add_heading("Costs", 2)
    d.add_paragraph("Costs fell.")
    corpus = tmp_path / "c"
    corpus.mkdir()
    d.save(str(corpus / "report.docx"))
    from qflume.readers import docx as qdocx

    text = qdocx.read(str(corpus / "report.docx")).text
    assert text == (
        "# Annual report\n\nThe year in one line.\n\n# Revenue\n\nRevenue grew in the north."
        "\n\nRegion | Q1 | Q2\nNorth | 10 | 12\n\nAfter the table.\n\n- A bullet\n\n## Costs"
        "\n\nCosts fell."
    )
    with _pipe(tmp_path / "store", tiny, chunk_chars=40) as p:
        r = p.ingest(corpus)
        chunks = _payloads(p)["report.docx"]
    assert r.documents_skipped == 0

    def heading_of(part: str) -> str | None:
        return next(m.get("heading") for m in chunks if part in m["text"])

    assert heading_of("Costs fell.") == "Revenue > Costs"
    assert heading_of("The year in one line.") == "Annual report"
    assert heading_of("North | 10 | 12") == "Revenue"


def test_markdown_heading_paths() -> None:
    text = (
        "Intro\n\n# Guide\n\n## Install\n\n```sh\n# not a heading\n```\n\n### Linux ###\n\n"
        "Setext Title\n============\n\nbody\n\n## Use\n"
    )
    offsets, paths = heading_index(text)
    assert paths == [
        "Guide",
        "Guide > Install",
        "Guide > Install > Linux",
        "Setext Title",
        "Setext Title > Use",
    ]
    assert [text[o : o + 4] for o in offsets] == ["# Gu", "## I", "### ", "Sete", "## U"]


# -- plug-ins, missing extras, bad input -----------------------------------------------------------


def test_plugin_readers_and_their_failures(tmp_path: Path, tiny: str) -> None:
    corpus = tmp_path / "c"
    corpus.mkdir()
    (corpus / "a.rev").write_bytes(b"\x00dlrow olleh")
    (corpus / "b.bad").write_bytes(b"\x00x")
    (corpus / "c.num").write_bytes(b"\x00x")
    (corpus / "d.skip").write_bytes(b"\x00x")
    (corpus / "e.meta").write_bytes(b"\x00x")

    def boom(path: str) -> str:
        raise RuntimeError("cannot parse this")

    def skip(path: str) -> str:
        raise ReaderSkip("licensed", "not ours to index")

    readers = {
        "rev": lambda path: Path(path).read_bytes()[1:].decode()[::-1],
        ".BAD": boom,
        ".num": lambda path: 42,
        ".skip": skip,
        ".meta": lambda path: Document("some text", metadata={"author": "ann", "n": float("nan")}),
    }
    with _pipe(tmp_path / "store", tiny, readers=readers) as p:
        r = p.ingest(corpus)
        got = _payloads(p)
    assert [m["text"] for m in got["a.rev"]] == ["hello world"]
    skipped = {s["key"]: (s["reason"], s.get("detail", "")) for s in r.skipped}
    assert skipped["b.bad"][0] == "unreadable" and "cannot parse this" in skipped["b.bad"][1]
    assert skipped["c.num"][0] == "unreadable" and "returned int" in skipped["c.num"][1]
    assert skipped["d.skip"] == ("licensed", "not ours to index")
    assert skipped["e.meta"][0] == "unreadable" and "metadata" in skipped["e.meta"][1]
    for bad in ({"pdf": "not callable"}, {"": len}, {"a/b": len}, ["pdf"]):
        with pytest.raises(InvalidInputError, match="readers"):
            Pipeline("docs", store=tmp_path / "s2", readers=bad)  # type: ignore[arg-type]


def test_missing_extra_is_a_one_line_skip_naming_it(tmp_path: Path, tiny: str) -> None:
    """Without pypdfium2 (hidden here by a module that fails to import, in the CLI's process
    and its reader processes alike) a PDF is skipped with the pip line for qflume[pdf]."""
    hide = tmp_path / "hide"
    hide.mkdir()
    (hide / "pypdfium2.py").write_text("raise ImportError('pypdfium2 is not installed')\n")
    corpus = tmp_path / "c"
    corpus.mkdir()
    (corpus / "a.pdf").write_bytes(make_pdf([["hello there"]]))
    (corpus / "b.md").write_text("# B\n\nplain text still works\n")
    env = {**os.environ, "PYTHONPATH": f"{hide}{os.pathsep}{os.environ.get('PYTHONPATH', '')}"}
    out = subprocess.run(
        [sys.executable, "-m", "qflume", "ingest", str(corpus), "--collection", "docs",
         "--store", str(tmp_path / "s"),
         "--model", tiny, "--json", "--progress", "none"],
        capture_output=True, text=True, env=env, timeout=120,
    )  # fmt: skip
    assert out.returncode == 0, out.stderr
    report = json.loads(out.stdout)
    assert report["skipped"] == [
        {
            "key": "a.pdf",
            "reason": "needs-extra",
            "detail": "reading PDF files needs pypdfium2: pip install 'qflume[pdf]'",
        }
    ]
    assert report["documents_new"] == 2 and report["points_upserted"] == 1
    assert "Traceback" not in out.stderr


def test_a_reader_process_that_dies_costs_one_file(tmp_path: Path) -> None:
    from qflume.readers.pool import ReaderPool

    good = tmp_path / "good.pdf"
    good.write_bytes(make_pdf([["still fine"]]))
    with ReaderPool(1, timeout=60) as pool:
        worker = pool._exec.submit(pool._worker).result()
        assert isinstance(pool.read("pdf", str(good), 10).result(), Document)
        assert worker.proc is not None
        worker.proc.kill()  # as a segfault in PDFium would
        worker.proc.wait()
        doc = pool.read("pdf", str(good), 10).result()  # a new process takes over
        assert isinstance(doc, Document) and doc.text.strip() == "still fine"
    fifo = tmp_path / "stuck.html"
    os.mkfifo(fifo)  # opening it blocks until a writer comes: a reader that hangs
    with ReaderPool(1, timeout=1.0) as pool:
        with pytest.raises(ReaderSkip, match="took over 1 s"):
            pool.read("html", str(fifo), 10).result(timeout=60)
        assert isinstance(pool.read("pdf", str(good), 10).result(timeout=60), Document)
