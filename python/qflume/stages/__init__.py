"""The ingest stages, as plain functions over columnar batches, each usable alone (see
docs/ARCHITECTURE.md for their contracts):

- plan (`qflume.stages.plan`): scan or records -> what changed against the state;
- read (`qflume.stages.read`): reader documents (PDF, HTML, DOCX) extracted ahead;
- chunk + diff (`qflume.stages.chunk`): Rust chunking, hashes, ids and the per-document diff;
- embed (`qflume.stages.embed`): the embedding cache, the model, sparse vectors;
- write (`qflume.stages.write`): write-ahead, packed upserts, deletes, payload updates, commit.

A runner drives them with a `qflume.stages.context.Run`: the local threaded runner
(qflume.runner) and the Ray runner (qflume.ray) call the same functions.
"""

from qflume.stages.batch import Batch, Doc, DocDiff, DocPlan
from qflume.stages.chunk import Chunking, Unit, batches, chunk_docs, group_planned
from qflume.stages.context import Run
from qflume.stages.embed import embed_batch
from qflume.stages.plan import plan_files, plan_records
from qflume.stages.read import read_ahead
from qflume.stages.write import send_slice, write_batches

__all__ = [
    "Batch",
    "Chunking",
    "Doc",
    "DocDiff",
    "DocPlan",
    "Run",
    "Unit",
    "batches",
    "chunk_docs",
    "embed_batch",
    "group_planned",
    "plan_files",
    "plan_records",
    "read_ahead",
    "send_slice",
    "write_batches",
]
