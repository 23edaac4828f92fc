"""Sparse vectors: BM25 parity with FastEmbed's `Qdrant/bm25`, and SPLADE pooling.

BM25 parity is checked two ways on real text (the Python documentation when the python3.11-doc
package is installed, else the docstrings and comments of the CPython standard library):

- against FastEmbed's own `Bm25` class, run offline from a local model folder. The `Qdrant/bm25`
  model repository only holds stopword lists, which cannot be downloaded here, so the folder gets
  the English list written out below (NLTK's English stopwords, the list Qdrant's server uses too);
- against a reference written here from FastEmbed's published algorithm with the independent
  `mmh3` and `py_rust_stemmers` packages (the ones FastEmbed itself uses).

SPLADE is checked against a numpy reference on a tiny masked LM built in the test with the ONNX
helper API and a WordLevel tokenizer.
"""

from __future__ import annotations

import re
import sys
import sysconfig
import threading
import unicodedata
from collections import Counter
from pathlib import Path

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import qflume
from qflume.exceptions import InvalidInputError
from qflume.sinks.base import SparseBatch

DOCS = Path("/usr/share/doc/python3.11/html/_sources")

# NLTK's English stopwords as published (FastEmbed reads them from Qdrant/bm25's english.txt);
# benches/bench_sparse.py reads the same file.
NLTK_ENGLISH = (Path(__file__).parent / "data" / "nltk_english_stopwords.txt").read_text().split()

TRICKY = [
    "",
    "   \t\n",
    "The THE the",
    "ΟΔΟΣ ΟΔΟΣ. Σίσυφος ΣΊΣΥΦΟΣ",  # final sigma
    "İstanbul DİYARBAKIR ıi",  # dotted capital I lowercases to i + U+0307
    "Straße STRASSE ẞ",
    "नमस्ते दुनिया हिन्दी",  # Devanagari vowel signs are not word characters for Python
    "東京都 の 天気 は 晴れ",
    "fullwidth ＡＢＣ１２３ and ①②③ Ⅻ ½",
    "snake_case __dunder__ _ __ a_b_c",
    "emoji 🎉 party🎉time",
    "x" * 40 + " " + "y" * 41 + " " + "é" * 40 + " " + "é" * 41,
    "don't can't won't it's you're",
    "running runs ran runner generously generous generation",
    "C++ C# .NET node.js 3.14159 1,000,000 2024-01-01 v1.2.3",
    "tab\tseparated\u00a0nbsp\u2028line\u2029para\x1cfs",
]


def real_texts(n: int = 300, size: int = 1000) -> list[str]:
    """~`size`-char chunks of real documentation (Python docs, else stdlib sources)."""
    if DOCS.is_dir():
        files = sorted(DOCS.rglob("*.rst.txt"))
    else:
        files = sorted(Path(sysconfig.get_paths()["stdlib"]).glob("*.py"))
    out: list[str] = []
    for f in files[:: max(1, len(files) // 60)]:
        text = f.read_text(encoding="utf-8", errors="replace")
        out.extend(text[i : i + size] for i in range(0, min(len(text), 6 * size), size))
        if len(out) >= n:
            break
    return out[:n]


def rows(batch: SparseBatch) -> list[dict[int, float]]:
    return [
        dict(
            zip(
                batch.indices[a:z].tolist(),
                batch.values[a:z].tolist(),
                strict=True,
            )
        )
        for a, z in zip(batch.indptr[:-1], batch.indptr[1:], strict=True)
    ]


# --- a reference from FastEmbed's published algorithm ------------------------------------------


class ReferenceBm25:
    """FastEmbed's Bm25 as published: regex clean-up and split, stopwords, Snowball, mmh3."""

    def __init__(self, k: float = 1.2, b: float = 0.75, avg_len: float = 256.0) -> None:
        import py_rust_stemmers

        self.stemmer = py_rust_stemmers.SnowballStemmer("english")
        self.stopwords = set(NLTK_ENGLISH)
        self.punctuation = {
            chr(i) for i in range(sys.maxunicode) if unicodedata.category(chr(i))[0] == "P"
        }
        self.k, self.b, self.avg_len = k, b, avg_len

    def stems(self, text: str) -> list[str]:
        text = re.sub(r"[^\w\s]", " ", text)
        tokens = re.sub(r"\s+", " ", re.sub(r"[^\w]", " ", text.lower())).strip().split()
        out = []
        for token in tokens:
            if token in self.punctuation or token.lower() in self.stopwords or len(token) > 40:
                continue
            stem = self.stemmer.stem_word(token.lower())
            if stem:
                out.append(stem)
        return out

    def doc(self, text: str) -> dict[int, float]:
        import mmh3

        stems = self.stems(text)
        tf: dict[int, float] = {}
        for stem, n in Counter(stems).items():
            tf[abs(mmh3.hash(stem))] = (
                n * (self.k + 1) / (n + self.k * (1 - self.b + self.b * len(stems) / self.avg_len))
            )
        return tf

    def query(self, text: str) -> set[int]:
        import mmh3

        return {abs(mmh3.hash(s)) for s in self.stems(text)}


@pytest.fixture(scope="module")
def reference() -> ReferenceBm25:
    pytest.importorskip("mmh3")
    pytest.importorskip("py_rust_stemmers")
    return ReferenceBm25()


@pytest.fixture(scope="module")
def fastembed_bm25(tmp_path_factory: pytest.TempPathFactory):  # type: ignore[no-untyped-def]
    """FastEmbed's own Bm25, offline, from a local folder holding the English stopword list."""
    bm25 = pytest.importorskip("fastembed.sparse.bm25")
    folder = tmp_path_factory.mktemp("Qdrant_bm25")
    (folder / "english.txt").write_text("\n".join(NLTK_ENGLISH) + "\n")
    (folder / "config.json").write_text("{}")
    return bm25.Bm25("Qdrant/bm25", specific_model_path=str(folder), local_files_only=True)


# --- BM25 --------------------------------------------------------------------------------------


def test_bm25_matches_fastembed_on_real_text(fastembed_bm25) -> None:  # type: ignore[no-untyped-def]
    texts = real_texts() + TRICKY
    ours = qflume.Bm25().embed(texts)
    theirs = list(fastembed_bm25.embed(texts))
    assert len(ours) == len(theirs) == len(texts)
    nonempty = 0
    for i, (a, z) in enumerate(zip(ours.indptr[:-1], ours.indptr[1:], strict=True)):
        want = theirs[i]
        # Same ids in the same (first-occurrence) order, same weights rounded to float32.
        assert ours.indices[a:z].tolist() == want.indices.tolist(), texts[i][:80]
        np.testing.assert_array_equal(ours.values[a:z], want.values.astype(np.float32))
        nonempty += z > a
    assert nonempty > 300

    queries = list(fastembed_bm25.query_embed(texts))
    q = qflume.Bm25().embed_query(texts)
    for i, (a, z) in enumerate(zip(q.indptr[:-1], q.indptr[1:], strict=True)):
        assert sorted(q.indices[a:z].tolist()) == sorted(queries[i].indices.tolist())
        assert (q.values[a:z] == 1.0).all()


def test_bm25_matches_published_algorithm(reference: ReferenceBm25) -> None:
    texts = real_texts(200, 700) + TRICKY
    bm = qflume.Bm25()
    for text, got in zip(texts, rows(bm.embed(texts)), strict=True):
        want = reference.doc(text)
        assert got.keys() == want.keys(), text[:80]
        for key, value in want.items():
            assert got[key] == np.float32(value)
        assert bm.tokens(text) == reference.stems(text)
    for text, got in zip(texts, rows(bm.embed_query(texts)), strict=True):
        assert set(got) == reference.query(text)


def test_bm25_other_parameters(reference: ReferenceBm25) -> None:
    ref = ReferenceBm25(k=1.5, b=0.5, avg_len=100.0)
    texts = real_texts(40)
    got = rows(qflume.Bm25(k=1.5, b=0.5, avg_len=100.0).embed(texts))
    for text, row in zip(texts, got, strict=True):
        assert row == {k: float(np.float32(v)) for k, v in ref.doc(text).items()}


def test_bm25_colliding_token_ids_match_fastembed(fastembed_bm25) -> None:  # type: ignore[no-untyped-def]
    mmh3 = pytest.importorskip("mmh3")
    seen: dict[int, str] = {}
    pair = None
    for i in range(2_000_000):
        token = f"q{i}z"
        key = abs(mmh3.hash(token))
        if key in seen:
            pair = (seen[key], token)
            break
        seen[key] = token
    assert pair is not None
    text = f"fox {pair[0]} dog {pair[1]} {pair[1]} fox fox"
    assert qflume.Bm25().tokens(text) == ["fox", pair[0], "dog", pair[1], pair[1], "fox", "fox"]
    got = qflume.Bm25().embed([text])
    want = next(iter(fastembed_bm25.embed([text])))
    assert got.indices.tolist() == want.indices.tolist()
    np.testing.assert_array_equal(got.values, want.values.astype(np.float32))
    assert len(set(got.indices.tolist())) == len(got.indices)  # Qdrant rejects duplicates


@settings(max_examples=200, deadline=None)
@given(st.text(min_size=0, max_size=30))
def test_token_id_is_abs_mmh3(token: str) -> None:
    mmh3 = pytest.importorskip("mmh3")
    assert qflume.Bm25.token_id(token) == abs(mmh3.hash(token))


_REF: list[ReferenceBm25] = []


def _assigned(c: str) -> bool:
    # qflume classifies characters with Unicode 16 tables; a Python with an older Unicode
    # database (3.11 has 14.0) sees later additions as unassigned, and so does FastEmbed there.
    return unicodedata.category(c) != "Cn"


def lazy_reference() -> ReferenceBm25:
    # Hypothesis tests cannot take function-scoped fixtures; build the reference once.
    pytest.importorskip("mmh3")
    pytest.importorskip("py_rust_stemmers")
    if not _REF:
        _REF.append(ReferenceBm25())
    return _REF[0]


@settings(max_examples=150, deadline=None)
@given(st.text(alphabet=st.characters(codec="utf-8").filter(_assigned), max_size=60))
def test_bm25_random_text_matches_reference(text: str) -> None:
    ref = lazy_reference()
    assert qflume.Bm25().tokens(text) == ref.stems(text)
    assert set(rows(qflume.Bm25().embed_query([text]))[0]) == ref.query(text)


def test_bm25_batch_shape_and_types() -> None:
    bm = qflume.Bm25()
    empty = bm.embed([])
    assert empty.indptr.tolist() == [0]
    assert (empty.indptr.dtype, empty.indices.dtype, empty.values.dtype) == (
        np.int64,
        np.uint32,
        np.float32,
    )
    one = bm.embed("a single text is one document")
    assert len(one) == 1 and one.indptr[-1] == len(one.indices) > 0
    batch = bm.embed(iter(["alpha beta", "", "the", "gamma"]))
    assert batch.indptr.tolist() == [0, 2, 2, 2, 3]


def test_bm25_threads_give_the_same_result() -> None:
    texts = real_texts(300)
    base = qflume.Bm25().embed(texts)
    for threads in (1, 2, 8):
        other = qflume.Bm25(threads=threads).embed(texts)
        for name in ("indptr", "indices", "values"):
            np.testing.assert_array_equal(getattr(base, name), getattr(other, name))


def test_bm25_releases_the_gil() -> None:
    texts = real_texts(300) * 30  # ~9 MB
    bm = qflume.Bm25(threads=1)
    count = 0
    running = True

    def spin() -> None:
        nonlocal count
        while running:
            count += 1

    t = threading.Thread(target=spin)
    t.start()
    try:
        before = count
        bm.embed(texts)
        during = count - before
    finally:
        running = False
        t.join()
    assert during > 1000


def test_bm25_bad_arguments() -> None:
    with pytest.raises(InvalidInputError, match="klingon"):
        qflume.Bm25(language="klingon")
    with pytest.raises(InvalidInputError, match="stopwords"):
        qflume.Bm25(language="german")
    german = qflume.Bm25(language="german", stopwords=["der", "die", "das"])
    assert german.tokens("Die Häuser der Stadt") == ["haus", "stadt"]
    with pytest.raises(InvalidInputError, match="avg_len"):
        qflume.Bm25(avg_len=0)
    with pytest.raises(InvalidInputError, match="b must"):
        qflume.Bm25(b=2.0)
    with pytest.raises(TypeError):
        qflume.Bm25().embed(["ok", 3])  # type: ignore[list-item]


def test_bm25_model_id_names_the_parameters() -> None:
    assert qflume.Bm25().model_id != qflume.Bm25(k=1.5).model_id
    assert qflume.Bm25().model_id == qflume.Bm25().model_id
    assert qflume.Bm25(stopwords=["x"]).model_id != qflume.Bm25(stopwords=["y"]).model_id
    from_iter = qflume.Bm25(stopwords=(w for w in ["Fox", "dog"]))
    assert from_iter.model_id == qflume.Bm25(stopwords=["dog", "fox"]).model_id
    assert from_iter.tokens("the fox and the dog jumped") == ["the", "and", "the", "jump"]


# --- SPLADE ------------------------------------------------------------------------------------

WORDS = (
    "the python language is a high level general purpose programming with dynamic typing "
    "garbage collection supports multiple paradigms including structured object oriented "
    "functional code readability significant indentation"
).split()


def make_splade(folder: Path, seed: int = 0) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """A masked LM: logits = Embedding[input_ids] @ W + bias, and its WordLevel tokenizer."""
    import onnx
    from onnx import TensorProto, helper, numpy_helper
    from tokenizers import Tokenizer, models, pre_tokenizers, processors

    vocab = {"[PAD]": 0, "[UNK]": 1, "[CLS]": 2, "[SEP]": 3}
    for w in WORDS:
        vocab.setdefault(w, len(vocab))
    v, h = len(vocab), 8
    rng = np.random.default_rng(seed)
    emb = rng.normal(size=(v, h)).astype(np.float32)
    emb[0] = 50.0  # padding would dominate every weight if it were pooled
    w = rng.normal(size=(h, v)).astype(np.float32)
    bias = rng.normal(size=(v,)).astype(np.float32) - 0.5

    graph = helper.make_graph(
        [
            helper.make_node("Gather", ["emb", "input_ids"], ["hidden"]),
            helper.make_node("MatMul", ["hidden", "w"], ["mm"]),
            helper.make_node("Add", ["mm", "bias"], ["logits"]),
        ],
        "tiny_mlm",
        [
            helper.make_tensor_value_info("input_ids", TensorProto.INT64, ["batch", "seq"]),
            helper.make_tensor_value_info("attention_mask", TensorProto.INT64, ["batch", "seq"]),
        ],
        [helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["batch", "seq", v])],
        [
            numpy_helper.from_array(emb, "emb"),
            numpy_helper.from_array(w, "w"),
            numpy_helper.from_array(bias, "bias"),
        ],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    onnx.checker.check_model(model)
    folder.mkdir(parents=True, exist_ok=True)
    onnx.save(model, str(folder / "model.onnx"))

    tok = Tokenizer(models.WordLevel(vocab, unk_token="[UNK]"))
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    tok.post_processor = processors.TemplateProcessing(
        single="[CLS] $A [SEP]", special_tokens=[("[CLS]", 2), ("[SEP]", 3)]
    )
    tok.save(str(folder / "tokenizer.json"))
    return emb, w, bias


def splade_reference(
    folder: Path,
    params: tuple[np.ndarray, np.ndarray, np.ndarray],
    texts: list[str],
    top_k: int | None = None,
    threshold: float = 0.0,
    max_tokens: int = 512,
) -> list[dict[int, float]]:
    from tokenizers import Tokenizer

    emb, w, bias = params
    tok = Tokenizer.from_file(str(folder / "tokenizer.json"))
    tok.enable_truncation(max_length=max_tokens)
    out = []
    for text in texts:
        ids = np.array(tok.encode(text).ids)
        weights = np.log1p(np.maximum(emb[ids] @ w + bias, 0)).max(axis=0)
        keep = np.flatnonzero(weights > threshold)
        if top_k is not None and len(keep) > top_k:
            keep = keep[np.argsort(-weights[keep], kind="stable")[:top_k]]
        out.append({int(i): float(weights[i]) for i in keep})
    return out


def assert_rows_close(got: list[dict[int, float]], want: list[dict[int, float]]) -> None:
    assert len(got) == len(want)
    for g, w in zip(got, want, strict=True):
        assert g.keys() == w.keys()
        np.testing.assert_allclose([g[k] for k in w], list(w.values()), rtol=1e-5, atol=1e-6)


@pytest.fixture(scope="module")
def splade_model(tmp_path_factory: pytest.TempPathFactory):  # type: ignore[no-untyped-def]
    folder = tmp_path_factory.mktemp("tiny_splade")
    return folder, make_splade(folder)


def splade_texts() -> list[str]:
    rng = np.random.default_rng(7)
    texts = [" ".join(rng.choice([*WORDS, "unknownword"], size=n)) for n in rng.integers(0, 40, 60)]
    return [*texts, "", "python", "the the the"]


def test_splade_matches_numpy_reference(splade_model, monkeypatch) -> None:  # type: ignore[no-untyped-def]
    folder, params = splade_model
    texts = splade_texts()
    model = qflume.Splade(folder)
    got = model.embed(texts)
    assert isinstance(got, SparseBatch) and len(got) == len(texts)
    assert got.indices.dtype == np.uint32 and got.values.dtype == np.float32
    for a, z in zip(got.indptr[:-1], got.indptr[1:], strict=True):
        assert (np.diff(got.indices[a:z].astype(np.int64)) > 0).all()  # ascending ids
    want = splade_reference(folder, params, texts)
    assert_rows_close(rows(got), want)
    assert_rows_close(rows(model.embed_query(texts)), want)

    # Many small ORT calls (bounded logits) give the same rows in the caller's order.
    monkeypatch.setattr("qflume.sparse._LOGITS_BUDGET", 4 * model._vocab * 50)
    assert_rows_close(rows(qflume.Splade(folder).embed(texts)), want)


def test_splade_top_k_threshold_and_truncation(splade_model) -> None:  # type: ignore[no-untyped-def]
    folder, params = splade_model
    texts = splade_texts()
    got = qflume.Splade(folder, top_k=5, threshold=0.3, max_tokens=8).embed(texts)
    want = splade_reference(folder, params, texts, top_k=5, threshold=0.3, max_tokens=8)
    assert_rows_close(rows(got), want)
    assert max(np.diff(got.indptr)) <= 5
    assert (got.values > 0.3).all()


def test_splade_pool_direct() -> None:
    rng = np.random.default_rng(1)
    logits = rng.normal(size=(3, 5, 7)).astype(np.float32)
    mask = np.array([[1, 1, 1, 0, 0], [1, 1, 1, 1, 1], [0, 0, 0, 0, 0]], dtype=np.int64)
    indptr, indices, values = qflume._core.splade_pool(logits, mask)
    dense = np.where(mask[:, :, None] == 1, np.log1p(np.maximum(logits, 0)), 0).max(axis=1)
    for r in range(3):
        a, z = indptr[r], indptr[r + 1]
        np.testing.assert_array_equal(indices[a:z], np.flatnonzero(dense[r] > 0))
        np.testing.assert_allclose(values[a:z], dense[r][dense[r] > 0], rtol=1e-6)
    assert indptr[3] == indptr[2]  # fully masked row is empty
    with pytest.raises(qflume.ShapeError, match="attention_mask"):
        qflume._core.splade_pool(logits, mask[:2])
    with pytest.raises(InvalidInputError, match="threshold"):
        qflume._core.splade_pool(logits, mask, threshold=-1.0)


def test_splade_bad_folder(tmp_path: Path) -> None:
    with pytest.raises(qflume.ModelError, match=r"lacks model\.onnx"):
        qflume.Splade(tmp_path)
    with pytest.raises(ValueError, match="top_k"):
        make_splade(tmp_path / "m")
        qflume.Splade(tmp_path / "m", top_k=0)
