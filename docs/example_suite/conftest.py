"""The example suite's own fixture: the documents its tests ingest (your project has its own).

Everything else comes from qflume's pytest plugin, loaded by itself once qflume is installed.
"""

from __future__ import annotations

from pathlib import Path

import pytest

DOCS = {
    "guide/install.md": (
        "# Installing\n\nInstall the package with pip, then run the setup command once.\n\n"
        "The setup command writes its configuration under your home folder."
    ),
    "guide/usage.md": (
        "# Usage\n\nPoint the tool at a folder of documents and give the collection a name.\n\n"
        "Running it again only sends what changed since the last run."
    ),
    "faq.txt": (
        "Why is the second run so fast? Unchanged files are recognised by size and time and "
        "are never read again.\n\nCan I stop a run halfway? Yes: the next run finishes the job."
    ),
}


@pytest.fixture()
def docs(tmp_path: Path) -> Path:
    """A small folder of documents, new for each test."""
    root = tmp_path / "docs"
    for name, text in DOCS.items():
        path = root / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text, encoding="utf-8")
    return root


@pytest.fixture()
def sources() -> set[str]:
    """The documents' keys, as hits name them (their paths relative to the folder ingested)."""
    return set(DOCS)
