"""`IngestReport`: what one run did, and the per-stage accounting the stages record into."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any

from qflume import analysis, metrics

__all__ = ["IngestReport", "StageStats", "record"]


@dataclass
class StageStats:
    busy_s: float = 0.0
    items: int = 0
    #: CPU time of the stage's own thread (ONNX Runtime's and Rayon's workers count only in
    #: the report's process-wide cpu_s)
    cpu_s: float = 0.0

    def as_dict(self, elapsed: float) -> dict[str, float]:
        return {
            "busy_s": round(self.busy_s, 4),
            "cpu_s": round(self.cpu_s, 4),
            "items": self.items,
            "items_per_s": round(self.items / self.busy_s, 1) if self.busy_s > 0 else 0.0,
            "utilization": round(self.busy_s / elapsed, 3) if elapsed > 0 else 0.0,
        }


@dataclass
class IngestReport:
    """What a run did. `as_dict()` is what `qflume ingest --json` prints."""

    documents_seen: int = 0
    documents_new: int = 0
    documents_changed: int = 0
    documents_unchanged: int = 0
    documents_deleted: int = 0
    documents_skipped: int = 0
    skipped: list[dict[str, str]] = field(default_factory=list)
    chunks_total: int = 0
    chunks_embedded: int = 0
    cache_hits: int = 0
    tokens_embedded: int = 0
    points_upserted: int = 0
    points_deleted: int = 0
    payload_updates: int = 0
    elapsed_s: float = 0.0
    interrupted: bool = False
    dry_run: bool = False
    #: requests the sink sent again after a transient failure
    retried: int = 0
    #: times the server was unreachable past the retries, requests spooled to the outbox then,
    #: and seconds the ended outages lasted (the run went on embedding meanwhile)
    outages: int = 0
    spooled_requests: int = 0
    outage_s: float = 0.0
    #: CPU seconds of the whole process over the run (every thread)
    cpu_s: float = 0.0
    #: protobuf bytes sent to and received from a Qdrant server (none for the embedded store),
    #: and its failed requests by gRPC status code (retried, spooled, or the run's error)
    bytes_sent: int = 0
    bytes_received: int = 0
    sink_errors: dict[str, int] = field(default_factory=dict)
    #: the collection after the run (qflume.metrics.collection_info: points, segments, the
    #: embedded store's disk_bytes, a server's optimizer status)
    storage: dict[str, Any] = field(default_factory=dict)
    #: alerts active during the run (raised by the running qflume.alerts monitors)
    alerts: list[dict[str, Any]] = field(default_factory=list)
    stages: dict[str, StageStats] = field(default_factory=dict)
    #: what the suggestions are judged against (target, embedder, requests in flight)
    setup: dict[str, Any] = field(default_factory=dict, repr=False)

    def as_dict(self) -> dict[str, Any]:
        """The figures, plus KPIs, the limiting stage and suggestions (qflume.analysis)."""
        d = asdict(self)
        d.pop("setup")
        d["stages"] = {k: v.as_dict(self.elapsed_s) for k, v in self.stages.items()}
        d["elapsed_s"] = round(self.elapsed_s, 3)
        d["cpu_s"] = round(self.cpu_s, 3)
        d.update(analysis.kpis(d))
        d.update(analysis.bottleneck(d["stages"], d, self.setup))
        return d


# ---------------------------------------------------------------------------------------------


def record(report: IngestReport, stage: str, seconds: float, chunks: int, docs: int = -1) -> None:
    """Account one unit of a stage's work: busy time and items (documents for plan, else chunks)."""
    stats = report.stages[stage]
    stats.busy_s += seconds
    stats.items += chunks if docs < 0 else docs
    metrics.observe("ingest_stage", seconds, items=chunks, stage=stage)
