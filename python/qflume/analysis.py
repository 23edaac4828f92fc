"""What an ingest report means: KPIs, the limiting stage and what to change.

Pure functions over `IngestReport.as_dict()`'s figures (and the run's setup), so that a report
merged from several runs (the config's sources, the slices of a serve job) is judged the same
way as one run:

- `kpis`: documents per second and the mean time per document next to chunks per second, the
  embedding cache's hit rate, the process' CPU use;
- `bottleneck`: the stage whose thread was busiest (``"embed-bound: 94% busy, write 12%, plan
  3%"``) and a concrete suggestion where one applies;
- `lines`: the human report's extra lines; `publish`: the same figures into `qflume.metrics`.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from typing import Any

__all__ = ["bottleneck", "cores", "kpis", "lines", "publish"]

#: A stage busier than this share of the run is its limit.
BOUND = 0.5
_STAGES = ("plan", "embed", "write")
#: Figures derived from others: a merged report recomputes them instead of adding them up.
DERIVED = (
    "chunks_per_s",
    "documents_per_s",
    "s_per_document",
    "cache_hit_rate",
    "cpu_utilization",
    "bottleneck",
    "suggestions",
)


def cores() -> int:
    """The cores this process may run on."""
    try:
        return len(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        return os.cpu_count() or 1


def _ratio(a: float, b: float, digits: int = 4) -> float | None:
    return round(a / b, digits) if b > 0 else None


def kpis(d: Mapping[str, Any]) -> dict[str, Any]:
    """documents_per_s and s_per_document (documents written: new + changed), chunks_per_s
    (chunks embedded), cache_hit_rate (chunks from the cache / chunks needing a vector) and
    cpu_utilization (process CPU seconds per second: 2.0 is two cores busy)."""
    elapsed = float(d.get("elapsed_s") or 0.0)
    docs = int(d.get("documents_new") or 0) + int(d.get("documents_changed") or 0)
    hits = int(d.get("cache_hits") or 0)
    wanted = hits + int(d.get("chunks_embedded") or 0)
    return {
        "chunks_per_s": round(int(d.get("chunks_embedded") or 0) / elapsed, 2) if elapsed else 0.0,
        "documents_per_s": round(docs / elapsed, 2) if elapsed else 0.0,
        "s_per_document": _ratio(elapsed, docs, 6),
        "cache_hit_rate": _ratio(hits, wanted),
        "cpu_utilization": _ratio(float(d.get("cpu_s") or 0.0), elapsed, 3),
    }


def bottleneck(
    stages: Mapping[str, Mapping[str, Any]], d: Mapping[str, Any], setup: Mapping[str, Any]
) -> dict[str, Any]:
    """``{"bottleneck": {"stage", "bound", "line", "utilization"} | None, "suggestions": [...]}``
    from the stages' utilisation (busy time / run time) and the run's setup."""
    util = {k: float(stages[k].get("utilization") or 0.0) for k in _STAGES if k in stages}
    if not util or not any(util.values()) or d.get("dry_run"):
        return {"bottleneck": None, "suggestions": []}
    order = sorted(util, key=lambda k: -util[k])
    top = order[0]
    bound = util[top] >= BOUND
    rest = ", ".join(f"{k} {util[k]:.0%}" for k in order[1:])
    if bound:
        line = f"{top}-bound: {util[top]:.0%} busy" + (f", {rest}" if rest else "")
    else:
        line = (
            f"no stage was the limit ({top} {util[top]:.0%}" + (f", {rest}" if rest else "") + "): "
            "the time went to starting up and waiting"
        )
    tips = _suggestions(top, d, setup) if bound else []
    return {
        "bottleneck": {
            "stage": top if bound else None,
            "line": line,
            "utilization": {k: round(v, 3) for k, v in util.items()},
        },
        "suggestions": tips,
    }


def _suggestions(stage: str, d: Mapping[str, Any], setup: Mapping[str, Any]) -> list[str]:
    tips: list[str] = []
    server = setup.get("target") == "server"
    if stage == "embed":
        budget = setup.get("batch_tokens")
        if setup.get("per_text"):
            tips.append(
                f"the model is the limit: its int8 build runs one text per call on each of "
                f"{setup.get('cores') or cores()} cores; more cores, or a GPU (onnxruntime-gpu: "
                "batches of 16384 tokens), go faster"
            )
        elif isinstance(budget, int) and budget >= 16384:  # the accelerator default
            tips.append(
                f"the model on the accelerator is the limit: a larger token budget "
                f"(Embedder(batch_tokens={2 * budget}); now {budget}) if its memory allows"
            )
        elif isinstance(budget, int) and budget < 512:
            tips.append(
                f"a larger token budget: Embedder(batch_tokens=512) (now {budget}) makes fewer, "
                "fuller model calls (16384 on a GPU)"
            )
        else:
            tips.append(
                f"the model is the limit on {setup.get('cores') or cores()} cores: more cores, "
                "or a GPU (onnxruntime-gpu) with a token budget of 16384"
            )
    elif stage == "write" and server:
        if setup.get("wait"):
            tips.append(
                "--wait makes each request wait until the server has applied it: leave it off "
                "for bulk loads (the state still commits only what the server acknowledged)"
            )
        n, hi = setup.get("in_flight"), setup.get("in_flight_max")
        if setup.get("adaptive") and isinstance(n, int) and isinstance(hi, int) and n >= hi:
            tips.append(
                f"more requests in flight: the adaptive limit reached its bound ({hi}); "
                f"GrpcSink(in_flight_bounds=(1, {2 * hi})) allows more"
            )
        elif not setup.get("adaptive") and isinstance(n, int):
            tips.append(
                f"more requests in flight: GrpcSink(max_in_flight={2 * n}) (now {n}), or "
                "adaptive=True to find the number from the server's latency"
            )
        elif isinstance(n, int):
            tips.append(
                f"the server is the limit: its latency grew as requests were added (now {n} in "
                "flight); a larger server or more nodes/shards for this collection"
            )
        errors = d.get("sink_errors") or {}
        if errors:
            shown = ", ".join(f"{k} {v}" for k, v in sorted(errors.items(), key=lambda kv: -kv[1]))
            tips.append(
                f"the server failed {sum(errors.values())} requests ({shown}), which were "
                "retried: its logs say why"
            )
    elif stage == "write":
        tips.append(
            "the embedded store (Qdrant Edge) indexes inside this process, beside the model: a "
            "Qdrant server (--url) takes that work off this machine, and lets searches run "
            "while an ingest writes (the embedded store refuses readers then)"
        )
    elif stage == "plan":
        if setup.get("chunking") == "tokens":
            tips.append(
                "planning (read, chunk, hash) is the limit: chunking by characters "
                "(--chunk-chars N) is about 14x faster than by tokens"
            )
        else:
            tips.append(
                "planning (read, chunk, hash) is the limit: the files' reading (PDF, HTML, "
                "DOCX readers) or a slow disk; nothing to tune in the later stages"
            )
    return tips


def _size(n: float) -> str:
    for unit in ("B", "KB", "MB", "GB"):
        if abs(n) < 1000 or unit == "GB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1000
    return f"{n:.1f} GB"  # pragma: no cover


def lines(d: Mapping[str, Any]) -> list[str]:
    """The human report's lines after its summary: KPIs, CPU, traffic, storage, the limiting
    stage, suggestions and alerts."""
    out: list[str] = []
    if d.get("dry_run"):
        return out
    spd = d.get("s_per_document")
    kp = f"{d.get('chunks_per_s', 0.0):,.1f} chunks/s, {d.get('documents_per_s', 0.0):,.2f} documents/s"
    if spd is not None:
        kp += f" ({spd * 1000:,.1f} ms per document)"
    if d.get("cache_hit_rate") is not None:
        kp += f", cache hit rate {d['cache_hit_rate']:.0%}"
    out.append(kp)
    stages = d.get("stages") or {}
    cpu = f"CPU {d.get('cpu_s', 0.0):.2f} s"
    if d.get("cpu_utilization") is not None:
        cpu += f" ({d['cpu_utilization']:.0%} of one core)"
    per = ", ".join(f"{k} {stages[k].get('cpu_s', 0.0):.2f} s" for k in _STAGES if k in stages)
    if per:
        cpu += f"; stage threads: {per}"
    out.append(cpu)
    if d.get("bytes_sent") or d.get("bytes_received"):
        net = f"sent {_size(d.get('bytes_sent', 0))}, received {_size(d.get('bytes_received', 0))}"
        if d.get("retried"):
            net += f"; {d['retried']} requests retried"
        errors = d.get("sink_errors") or {}
        if errors:
            net += " (" + ", ".join(f"{k} {v}" for k, v in sorted(errors.items())) + ")"
        out.append(net)
    st = d.get("storage") or {}
    if st.get("exists"):
        parts = [f"{st.get('points')} points", f"{st.get('segments')} segments"]
        if st.get("disk_bytes") is not None:
            parts.insert(0, f"{_size(st['disk_bytes'])} on disk")
        if st.get("optimizer") is not None:
            parts.append(f"optimizer {st['optimizer']}")
        out.append("collection: " + ", ".join(parts))
    b = d.get("bottleneck")
    if b:
        out.append(b["line"])
    for tip in d.get("suggestions") or []:
        out.append(f"suggestion: {tip}")
    for a in d.get("alerts") or []:
        when = "still active" if a.get("resolved_at") is None else "resolved"
        out.append(f"alert [{a['severity']}] {a['message']} ({when})")
    return out


def publish(d: Mapping[str, Any], collection: str, registry: Any = None) -> None:
    """A finished run's figures into `qflume.metrics`: counters of documents, chunks, cache
    hits and misses, retries and stage CPU seconds; gauges of the last run's rates."""
    from qflume import metrics

    reg = registry if registry is not None else metrics.REGISTRY
    docs = int(d.get("documents_new") or 0) + int(d.get("documents_changed") or 0)
    reg.inc("ingest_documents", docs)
    reg.inc("embed_cache_hits", int(d.get("cache_hits") or 0))
    reg.inc("embed_cache_misses", int(d.get("chunks_embedded") or 0))
    reg.inc("sink_retries", int(d.get("retried") or 0))
    for code, n in (d.get("sink_errors") or {}).items():
        reg.inc("sink_errors", int(n), code=code)
    for name, st in (d.get("stages") or {}).items():
        reg.inc("ingest_stage_cpu_seconds", float(st.get("cpu_s") or 0.0), stage=name)
    reg.gauge("ingest_last_chunks_per_second", float(d.get("chunks_per_s") or 0.0))
    reg.gauge("ingest_last_documents_per_second", float(d.get("documents_per_s") or 0.0))
    if d.get("s_per_document") is not None:
        reg.gauge("ingest_last_seconds_per_document", float(d["s_per_document"]))
    if d.get("cache_hit_rate") is not None:
        reg.gauge("ingest_last_cache_hit_rate", float(d["cache_hit_rate"]))
    st = d.get("storage") or {}
    for key, gname in (
        ("disk_bytes", "collection_disk_bytes"),
        ("segments", "collection_segments"),
        ("points", "collection_points"),
    ):
        if isinstance(st.get(key), int):
            reg.gauge(gname, st[key], collection=collection)
    if st.get("optimizer") is not None:
        ok = 1.0 if st["optimizer"] == "ok" else 0.0
        reg.gauge("collection_optimizer_ok", ok, collection=collection)
