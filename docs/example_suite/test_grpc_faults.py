"""Ingest over gRPC into the in-process Qdrant server, with faults injected."""

from __future__ import annotations

from pathlib import Path

import grpc
import pytest

import qflume


def point_ids(pipeline) -> set[str]:
    return {str(p.id) for p in pipeline.sink.scroll(with_payload=False)}


def test_ingest_converges_through_two_unavailable_replies(
    qflume_pipeline, qflume_grpc_server, docs: Path
):
    with qflume_pipeline() as clean:  # the same documents into an embedded store, no faults
        clean.ingest([docs])
        expected = point_ids(clean)

    qflume_grpc_server.fail_next(2, grpc.StatusCode.UNAVAILABLE, methods=["Upsert"])
    with qflume_pipeline(server=qflume_grpc_server) as pipeline:
        report = pipeline.ingest([docs])
        assert qflume_grpc_server.failed["Points/Upsert"] == 2  # both faults hit, then retried
        assert report.points_upserted == len(expected)
        assert point_ids(pipeline) == expected  # exactly the points of the run without faults
        assert pipeline.verify()["ok"]


def test_a_run_that_fails_is_finished_by_the_next(qflume_pipeline, qflume_grpc_server, docs: Path):
    qflume_grpc_server.fail_next(1, grpc.StatusCode.PERMISSION_DENIED, methods=["Upsert"])
    with qflume_pipeline(server=qflume_grpc_server) as pipeline:
        with pytest.raises(qflume.SinkError, match="PERMISSION_DENIED"):
            pipeline.ingest([docs])  # not a transient status: no retry, the run stops
        pipeline.ingest([docs])
        check = pipeline.verify()
        assert check["ok"] and pipeline.status()["points"] == check["points_expected"] > 0


def test_a_slow_server_is_waited_for(qflume_pipeline, qflume_grpc_server, docs: Path):
    qflume_grpc_server.set_latency(0.2, methods=["Upsert"])
    with qflume_pipeline(server=qflume_grpc_server) as pipeline:
        report = pipeline.ingest([docs])
    assert report.points_upserted > 0 and qflume_grpc_server.calls["Points/Upsert"] >= 1
