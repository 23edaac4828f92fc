"""Document readers: qflume's (qflume.readers, in its reader processes) vs the loaders of LangChain,
LlamaIndex, unstructured and markitdown, on the same real files, one run each; then qflume's
end-to-end ingest of a mixed folder (PDF, HTML, DOCX, Markdown) with the default model.

    .venv/bin/python -m pytest benches/bench_readers.py --benchmark-only -q -s

Files: PDFs of TeX Live's documentation unpacked from Debian into target/debian (the font docs
that .ci/test.sh fetches, plus texlive-metapost-doc's manuals when unpacked there too: `cd
target/debian && apt-get download texlive-metapost-doc && dpkg-deb -x texlive-metapost-doc_*.deb
root`), the first QFLUME_BENCH_PDF_PAGES pages' worth of files (default 400); the Python docs'
HTML (python3.11-doc), the first QFLUME_BENCH_HTML files of library/ (default 120).

Text agreement (F1 of the word multisets, NFKC, lowercased, against a reference; 1.0 = the
same words): PDFs against poppler's pdftotext (another engine; `apt-get install poppler-utils`,
else pdfminer.six), HTML against the page's own reStructuredText source (_sources/*.rst.txt:
the main text as its authors wrote it, so navigation left in lowers precision and text lost
lowers recall). Throughput counts extraction only (files read from the page cache). A peer
that does not install or run here gets a row saying why. Results print as a table.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
import time
import unicodedata
from collections import Counter
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

ROOT = Path(__file__).resolve().parent.parent
PDF_ROOTS = [
    ROOT / "target/debian/root/usr/share/doc/texlive-doc",
    Path("/usr/share/doc/texlive-doc"),
]
HTML_ROOT = Path("/usr/share/doc/python3.11/html")
PDF_PAGES = int(os.environ.get("QFLUME_BENCH_PDF_PAGES", "400"))
N_HTML = int(os.environ.get("QFLUME_BENCH_HTML", "120"))
RESULTS: list[dict[str, Any]] = []


def _words(text: str) -> Counter[str]:
    return Counter(re.findall(r"\w+", unicodedata.normalize("NFKC", text).lower()))


def _f1(ref: Counter[str], got: Counter[str]) -> tuple[float, float, float]:
    inter = sum((ref & got).values())
    p = inter / max(1, sum(got.values()))
    r = inter / max(1, sum(ref.values()))
    return p, r, (2 * p * r / (p + r) if p + r else 0.0)


def _workers() -> int:
    return min(os.cpu_count() or 1, 8)


@pytest.fixture(scope="module")
def pdfs() -> list[tuple[Path, int]]:
    """(file, pages), sorted, up to PDF_PAGES pages in all."""
    import pypdfium2

    files = sorted({f for r in PDF_ROOTS if r.is_dir() for f in r.rglob("*.pdf")})
    out, total = [], 0
    for f in files:
        try:
            doc = pypdfium2.PdfDocument(str(f))
        except pypdfium2.PdfiumError:
            continue
        n = len(doc)
        doc.close()
        if n > 150:  # one huge manual would be the whole sample
            continue
        out.append((f, n))
        total += n
        if total >= PDF_PAGES:
            break
    if not out:
        pytest.skip("no TeX Live PDFs: run .ci/test.sh (it unpacks them into target/debian)")
    return out


@pytest.fixture(scope="module")
def pdf_reference(pdfs: list[tuple[Path, int]]) -> tuple[str, dict[Path, Counter[str]]]:
    if shutil.which("pdftotext"):
        return "pdftotext", {
            f: _words(subprocess.run(["pdftotext", "-enc", "UTF-8", str(f), "-"],
                                     capture_output=True, check=True).stdout.decode("utf-8", "replace"))
            for f, _ in pdfs
        }  # fmt: skip
    from pdfminer.high_level import extract_text

    return "pdfminer.six", {f: _words(extract_text(str(f))) for f, _ in pdfs}


@pytest.fixture(scope="module")
def htmls() -> list[tuple[Path, Counter[str]]]:
    """(page, the words of its reST source)."""
    if not HTML_ROOT.is_dir():
        pytest.skip("needs Debian's python3.11-doc")
    out = []
    for f in sorted((HTML_ROOT / "library").glob("*.html")):
        src = HTML_ROOT / "_sources" / "library" / (f.stem + ".rst.txt")
        if src.exists():
            out.append((f, _words(src.read_text(encoding="utf-8"))))
        if len(out) == N_HTML:
            break
    return out


@pytest.fixture(scope="module", autouse=True)
def report() -> Any:
    yield
    if not RESULTS:
        return
    cpu = _cpu()
    print(f"\n\n== bench_readers ({cpu}, {os.cpu_count()} cores) ==")
    print("| format | reader | throughput | text F1 (precision / recall) | note |")
    print("|---|---|---:|---|---|")
    for r in RESULTS:
        speed = r.get("speed", "")
        agree = r.get("f1", "")
        print(f"| {r['format']} | {r['reader']} | {speed} | {agree} | {r.get('note', '')} |")


def _cpu() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return "unknown CPU"


def _run(
    benchmark: Any,
    fmt: str,
    name: str,
    files: list[Path],
    extract: Callable[[list[Path]], dict[Path, str]],
    refs: dict[Path, Counter[str]],
    amount: float,
    unit: str,
    note: str = "",
) -> None:
    """One run of ``extract`` over ``files``; throughput in ``amount / s`` and agreement."""
    box: dict[str, Any] = {}

    def once() -> None:
        t = time.perf_counter()
        box["texts"] = extract(files)
        box["s"] = time.perf_counter() - t

    try:
        benchmark.pedantic(once, rounds=1, iterations=1)
    except Exception as e:  # a peer that does not run here: say why, do not fail the suite
        RESULTS.append({"format": fmt, "reader": name, "note": f"did not run: {_why(e)}"})
        return
    texts = box["texts"]
    scores = [_f1(refs[f], _words(texts.get(f, ""))) for f in files]
    p = sum(s[0] for s in scores) / len(scores)
    r = sum(s[1] for s in scores) / len(scores)
    f1 = sum(s[2] for s in scores) / len(scores)
    rate = amount / box["s"]
    RESULTS.append({
        "format": fmt, "reader": name, "rate": rate, "speed": f"{rate:,.1f} {unit}",
        "f1": f"{f1:.3f} ({p:.3f} / {r:.3f})", "note": note,
    })  # fmt: skip
    benchmark.extra_info.update(rate=rate, f1=f1, precision=p, recall=r)


def _why(e: BaseException) -> str:
    msg = str(e).strip().splitlines()
    return f"{type(e).__name__}: {msg[0][:120] if msg else ''}"


def _missing(module: str) -> str | None:
    import importlib.util

    return None if importlib.util.find_spec(module) else f"not installed ({module})"


# -- PDF ------------------------------------------------------------------------------------------


def _qflume_pdf(workers: int) -> Callable[[list[Path]], dict[Path, str]]:
    def run(files: list[Path]) -> dict[Path, str]:
        from qflume.readers.pool import ReaderPool

        with ReaderPool(workers) as pool:
            jobs = {f: pool.read("pdf", str(f), 1 << 30) for f in files}
            return {f: j.result().text for f, j in jobs.items()}

    return run


def _langchain_pdf(files: list[Path]) -> dict[Path, str]:
    from langchain_community.document_loaders import PyPDFLoader

    return {f: "\n".join(d.page_content for d in PyPDFLoader(str(f)).load()) for f in files}


def _llama_files(files: list[Path]) -> dict[Path, str]:
    from llama_index.core import SimpleDirectoryReader

    docs = SimpleDirectoryReader(input_files=[str(f) for f in files]).load_data()
    out: dict[Path, list[str]] = {}
    for d in docs:
        out.setdefault(Path(d.metadata["file_path"]), []).append(d.text)
    return {f: "\n".join(t) for f, t in out.items()}


def _markitdown(files: list[Path]) -> dict[Path, str]:
    from markitdown import MarkItDown

    md = MarkItDown()
    return {f: md.convert(str(f)).text_content for f in files}


def _unstructured_pdf(files: list[Path]) -> dict[Path, str]:
    from unstructured.partition.pdf import partition_pdf

    return {f: "\n".join(str(e) for e in partition_pdf(str(f), strategy="fast")) for f in files}


PDF_PEERS: dict[str, tuple[Callable[[list[Path]], dict[Path, str]], str]] = {
    "LangChain PyPDFLoader": (_langchain_pdf, "langchain_community"),
    "LlamaIndex SimpleDirectoryReader": (_llama_files, "llama_index.core"),
    "unstructured partition_pdf (fast)": (_unstructured_pdf, "unstructured"),
    "markitdown": (_markitdown, "markitdown"),
}


@pytest.mark.parametrize("workers", [1, _workers()], ids=lambda w: f"{w}proc")
def test_pdf_qflume(benchmark: Any, pdfs: list, pdf_reference: tuple, workers: int) -> None:
    ref_name, refs = pdf_reference
    pages = sum(n for _, n in pdfs)
    note = f"pypdfium2, {workers} reader process{'es' * (workers > 1)}; reference {ref_name}"
    _run(benchmark, "PDF", f"qflume ({workers} proc)", [f for f, _ in pdfs], _qflume_pdf(workers),
         refs, pages, "pages/s", note)  # fmt: skip


@pytest.mark.parametrize("peer", list(PDF_PEERS))
def test_pdf_peer(benchmark: Any, pdfs: list, pdf_reference: tuple, peer: str) -> None:
    fn, module = PDF_PEERS[peer]
    if (why := _missing(module)) is not None:
        RESULTS.append({"format": "PDF", "reader": peer, "note": why})
        pytest.skip(why)
    _run(benchmark, "PDF", peer, [f for f, _ in pdfs], fn, pdf_reference[1],
         sum(n for _, n in pdfs), "pages/s")  # fmt: skip


# -- HTML -----------------------------------------------------------------------------------------


def _qflume_html(workers: int) -> Callable[[list[Path]], dict[Path, str]]:
    def run(files: list[Path]) -> dict[Path, str]:
        from qflume.readers.pool import ReaderPool

        with ReaderPool(workers) as pool:
            jobs = {f: pool.read("html", str(f), 0) for f in files}
            return {f: j.result().text for f, j in jobs.items()}

    return run


def _langchain_html(files: list[Path]) -> dict[Path, str]:
    from langchain_community.document_loaders import BSHTMLLoader

    return {f: "\n".join(d.page_content for d in BSHTMLLoader(str(f)).load()) for f in files}


def _unstructured_html(files: list[Path]) -> dict[Path, str]:
    from unstructured.partition.html import partition_html

    return {f: "\n\n".join(str(e) for e in partition_html(filename=str(f))) for f in files}


HTML_PEERS: dict[str, tuple[Callable[[list[Path]], dict[Path, str]], str]] = {
    "LangChain BSHTMLLoader": (_langchain_html, "bs4"),
    "LlamaIndex SimpleDirectoryReader": (_llama_files, "llama_index.core"),
    "unstructured partition_html": (_unstructured_html, "unstructured"),
    "markitdown": (_markitdown, "markitdown"),
}


@pytest.mark.parametrize("workers", [1, _workers()], ids=lambda w: f"{w}proc")
def test_html_qflume(benchmark: Any, htmls: list, workers: int) -> None:
    files = [f for f, _ in htmls]
    mb = sum(f.stat().st_size for f in files) / 1e6
    note = f"selectolax, {workers} reader process{'es' * (workers > 1)}; reference: reST sources"
    _run(benchmark, "HTML", f"qflume ({workers} proc)", files, _qflume_html(workers),
         dict(htmls), mb, "MB/s", note)  # fmt: skip


@pytest.mark.parametrize("peer", list(HTML_PEERS))
def test_html_peer(benchmark: Any, htmls: list, peer: str) -> None:
    fn, module = HTML_PEERS[peer]
    if (why := _missing(module)) is not None:
        RESULTS.append({"format": "HTML", "reader": peer, "note": why})
        pytest.skip(why)
    files = [f for f, _ in htmls]
    mb = sum(f.stat().st_size for f in files) / 1e6
    _run(benchmark, "HTML", peer, files, fn, dict(htmls), mb, "MB/s")


# -- end to end -----------------------------------------------------------------------------------


def test_ingest_mixed_folder(benchmark: Any, tmp_path: Path, pdfs: list, htmls: list) -> None:
    """PDFs, HTML pages, DOCX files and Markdown into the embedded store with the default model
    (all-MiniLM-L6-v2, 64-token chunks): chunks/s of the whole run, extraction included."""
    import qflume

    folder = tmp_path / "mixed"
    folder.mkdir()
    for f, _ in pdfs[:12]:
        shutil.copy(f, folder / f.name)
    for f, _ in htmls[:40]:
        shutil.copy(f, folder / f.name)
    md = HTML_ROOT / "_sources" / "library"
    for src in sorted(md.glob("*.rst.txt"))[200:230]:
        (folder / (src.name[:-8] + ".md")).write_text(src.read_text(encoding="utf-8"))
    try:
        import docx
    except ImportError:
        docx = None
    if docx is not None:
        texts = [f.read_text(encoding="utf-8") for f in sorted(md.glob("*.rst.txt"))[300:320]]
        for i, text in enumerate(texts):
            d = docx.Document()
            for para in text.split("\n\n"):
                if para.strip():
                    d.add_paragraph(para.strip())
            d.save(str(folder / f"doc{i:02d}.docx"))
    embedder = qflume.Embedder()
    box: dict[str, Any] = {}

    def once() -> None:
        from qflume.pipeline import Pipeline

        with Pipeline("mixed", store=tmp_path / f"store{len(box)}", embedder=embedder,
                      progress=False) as p:  # fmt: skip
            box["r"] = p.ingest(folder)

    benchmark.pedantic(once, rounds=1, iterations=1)
    r = box["r"]
    kinds = Counter(p.suffix for p in folder.iterdir())
    rate = r.chunks_embedded / r.elapsed_s
    RESULTS.append({
        "format": "mixed folder", "reader": "qflume ingest (default model)",
        "speed": f"{rate:,.1f} chunks/s",
        "note": f"{dict(kinds)}; {r.chunks_embedded} chunks in {r.elapsed_s:.1f} s, "
                f"{r.documents_skipped} skipped",
    })  # fmt: skip
    assert r.documents_skipped == 0, r.skipped


if __name__ == "__main__":
    sys.exit(pytest.main([__file__, "--benchmark-only", "-q", "-s"]))
