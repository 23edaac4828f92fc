"""qflume.ray vs the local pipeline vs the peer path a Ray user writes today, one run each, on the
same corpus (Python docs sources) and the same ONNX model file (the tiny BERT of the tests, fp32,
so that the figures show the runners' overhead, not the model), against the in-process gRPC
test server. Also the driver's own cost: plan (scan + hash + diff) and commit per chunk.

    .venv/bin/python benches/bench_ray.py [--docs 120] [--model FOLDER]

Prints one JSON object: chunks/s per path and peak RSS per Ray worker process.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import tempfile
import threading
import time
import uuid
from pathlib import Path
from typing import Any

import numpy as np

sys.path.insert(0, str(Path(__file__).parent))
sys.path.insert(0, str(Path(__file__).parent.parent / "tests"))


class RssSampler:
    """Peak RSS of each Ray worker process (``ray::`` in its title) while it runs."""

    def __init__(self) -> None:
        self.peak: dict[int, int] = {}
        self._stop = threading.Event()
        self._th = threading.Thread(target=self._loop, daemon=True)

    def _loop(self) -> None:
        import psutil

        # Only this process's descendants (the local cluster's): a sweep of every process on
        # the machine costs ~26 ms, which would slow the Ray paths, and the in-process server.
        me = psutil.Process()
        while not self._stop.is_set():
            for p in me.children(recursive=True):
                try:
                    if " ".join(p.cmdline()).startswith("ray::"):
                        rss = p.memory_info().rss
                        self.peak[p.pid] = max(self.peak.get(p.pid, 0), rss)
                except psutil.Error:
                    continue  # gone meanwhile
            time.sleep(0.25)

    def __enter__(self) -> RssSampler:
        self._th.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._th.join()

    def summary(self) -> dict[str, Any]:
        v = sorted(self.peak.values())
        return {
            "workers": len(v),
            "max_mib": round(v[-1] / 2**20, 1) if v else 0.0,
            "per_worker_mib": [round(x / 2**20) for x in reversed(v)],
        }


def peer(corpus: Path, url: str, collection: str, model: str) -> int:
    """What a Ray user writes today: read + chunk in map_batches, the same ONNX model in an actor
    pool, then a Datasink uploading PointStructs with qdrant-client (no state, no deletes)."""
    import ray.data
    from qdrant_client import QdrantClient, models
    from ray.data.datasource.datasink import Datasink

    class Chunk:
        def __init__(self) -> None:
            from qflume.chunk import Chunker

            self.c = Chunker(max_tokens=64, tokenizer=str(Path(model) / "tokenizer.json"))

        def __call__(self, b: dict[str, Any]) -> dict[str, Any]:
            texts, keys = [], []
            for path in b["path"]:
                text = Path(path).read_text("utf-8")
                for s, e in self.c.chunk(text):
                    texts.append(text[s:e])
                    keys.append(path)
            return {"text": np.asarray(texts, object), "source": np.asarray(keys, object)}

    class Embed:
        def __init__(self) -> None:
            from qflume.embed import Embedder

            self.e = Embedder(model)

        def __call__(self, b: dict[str, Any]) -> dict[str, Any]:
            return {**b, "vector": self.e.embed(list(b["text"]))}

    port = int(url.rsplit(":", 1)[1])

    class Upload(Datasink):  # type: ignore[type-arg]
        def write(self, blocks: Any, ctx: Any) -> int:
            from ray.data.block import BlockAccessor

            client = QdrantClient(host="127.0.0.1", grpc_port=port, prefer_grpc=True,
                                  check_compatibility=False)  # fmt: skip
            n = 0
            for block in blocks:
                rows = BlockAccessor.for_block(block).to_arrow().to_pylist()
                client.upsert(
                    collection,
                    [
                        models.PointStruct(
                            id=str(uuid.uuid4()),
                            vector=list(map(float, r["vector"])),
                            payload={
                                "page_content": r["text"],
                                "metadata": {"source": r["source"]},
                            },
                        )
                        for r in rows
                    ],
                )
                n += len(rows)
            return n

    files = [{"path": str(p)} for p in sorted(corpus.rglob("*.txt"))]
    ds = ray.data.from_items(files).map_batches(
        Chunk, batch_size=8, compute=ray.data.ActorPoolStrategy(size=1)
    )
    ds = ds.map_batches(
        Embed, batch_size=256, compute=ray.data.ActorPoolStrategy(min_size=1, max_size=1)
    )
    sink = Upload()
    ds.write_datasink(sink)
    return 0


def driver_costs(state_dir: Path, n_chunks: int = 200_000) -> dict[str, float]:
    """The driver's commit per chunk: State.commit of documents of 100 chunks each."""
    from qflume.state import DocUpdate, State

    rng = np.random.default_rng(0)
    with State(state_dir / "bench.state.sqlite") as st:
        ups = []
        for i in range(n_chunks // 100):
            h = rng.integers(0, 256, (100, 16), np.uint8).tobytes()
            off = np.zeros((100, 3), np.int64).tobytes()
            ups.append(DocUpdate(f"k{i}", "/r", b"x" * 16, 1, 0, "{}", "fp", h, off))
        ahead = {u.key: (u.root, u.chunks) for u in ups}
        t = time.perf_counter()
        st.write_ahead(ahead)
        wa = time.perf_counter() - t
        t = time.perf_counter()
        st.commit(ups)
        c = time.perf_counter() - t
    return {
        "write_ahead_s_per_million_chunks": round(wa * 1e6 / n_chunks, 2),
        "commit_s_per_million_chunks": round(c * 1e6 / n_chunks, 2),
    }


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--docs", type=int, default=120)
    ap.add_argument("--model", help="ONNX model folder (default: the tiny BERT, built)")
    args = ap.parse_args()
    import ray

    import qflume
    import qflume.ray as qray
    from _corpus import doc_files
    from qflume.testing import QdrantGrpcServer

    tmp = Path(tempfile.mkdtemp(prefix="bench-ray-"))
    try:
        model = args.model
        if model is None:
            from qflume.model import build
            from tiny_bert import make_tiny_bert

            make_tiny_bert(tmp / "w")
            model = str(build(tmp / "w", out=tmp / "onnx", quiet=True))
        corpus = tmp / "corpus"
        corpus.mkdir()
        for i, f in enumerate(doc_files()[: args.docs]):
            (corpus / f"{i:04d}.txt").write_text(f.read_text("utf-8"), "utf-8")
        out: dict[str, Any] = {"docs": args.docs, "model": model, "load_before": os.getloadavg()}
        with QdrantGrpcServer() as srv:
            t = time.perf_counter()
            with qflume.Pipeline(
                "local", url=srv.url, model=model, state_dir=tmp / "s1", progress=False
            ) as p:
                r = p.ingest(corpus)
            local_s = time.perf_counter() - t
            n = r.points_upserted
            out["chunks"] = n
            out["local"] = {"s": round(local_s, 2), "chunks_per_s": round(n / local_s, 1)}
            t = time.perf_counter()
            with qflume.Pipeline(
                "local", url=srv.url, model=model, state_dir=tmp / "s1", progress=False
            ) as p:
                p.ingest(corpus)
            out["unchanged_rerun_s"] = round(time.perf_counter() - t, 3)

            t = time.perf_counter()
            ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
            out["ray_init_s"] = round(time.perf_counter() - t, 2)
            with RssSampler() as rss:
                t = time.perf_counter()
                r = qray.ingest(corpus, "onray", url=srv.url, model=model, state_dir=tmp / "s2")
                ray_s = time.perf_counter() - t
            out["qflume_ray"] = {
                "s": round(ray_s, 2),
                "chunks_per_s": round(r.points_upserted / ray_s, 1),
                "overhead_vs_local": round(ray_s / local_s - 1, 3),
                "peak_rss": rss.summary(),
                "chunk_stage_s": round(r.stages["plan"].busy_s, 2),
            }
            from qflume.sinks import CollectionSpec, GrpcSink

            with GrpcSink(srv.url, "peer") as s:
                s.ensure_collection(CollectionSpec(dim=int(qflume.Embedder(model).dim)))
            with RssSampler() as rss:
                t = time.perf_counter()
                peer(corpus, srv.url, "peer", model)
                peer_s = time.perf_counter() - t
            out["peer_ray_qdrant_client"] = {
                "s": round(peer_s, 2),
                "chunks_per_s": round(n / peer_s, 1),
                "peak_rss": rss.summary(),
                "qflume_ray_speedup": round(peer_s / ray_s, 2),
            }
            # The same on the warm cluster (its task workers have imported qflume): what the
            # first run paid for worker start-up and imports.
            t = time.perf_counter()
            r = qray.ingest(corpus, "onray2", url=srv.url, model=model, state_dir=tmp / "s3")
            warm_s = time.perf_counter() - t
            out["qflume_ray_second_run"] = {
                "s": round(warm_s, 2),
                "chunks_per_s": round(r.points_upserted / warm_s, 1),
            }
            ray.shutdown()
        out["load_after"] = os.getloadavg()
        out["driver"] = driver_costs(tmp)
        print(json.dumps(out, indent=1))
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    main()
