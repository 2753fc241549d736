"""What the ingress answers: where each merged result's id lies in the shards' answers, and
the three answer formats (objects, columns, Arrow) built from distances and ids."""

import numpy as np
import orjson
import pyarrow as pa
from fastapi.responses import Response

ARROW_STREAM = "application/vnd.apache.arrow.stream"


def as_objects(dist: np.ndarray, ids: np.ndarray) -> list[list[dict]]:
    return [
        [{"id": i, "distance": d} for i, d in zip(id_row, d_row) if i is not None]
        for id_row, d_row in zip(ids.tolist(), dist.tolist())
    ]


def as_columns(dist: np.ndarray, ids: np.ndarray) -> list[dict]:
    """The same results as :func:`as_objects`, as one ids list and one distances list per query."""
    keep = np.not_equal(ids, None)  # pads, and items beyond a radius
    if keep.all():
        return [{"ids": i, "distances": d} for i, d in zip(ids.tolist(), dist.tolist())]
    return [{"ids": i[m].tolist(), "distances": d[m].tolist()} for i, d, m in zip(ids, dist, keep)]


def as_arrow(dist: np.ndarray, ids: pa.Array, radius: float | None, meta: dict) -> Response:
    """The results as an Arrow IPC stream: row q holds query q's ``ids`` and ``distances`` lists.

    ``ids`` is flat, one per (query, rank), null for pads; nothing here loops over results in
    Python, which is what the JSON formats spend most of their time on. Distances are int32
    Hamming distances, or float32 squared L2 for pq codes."""
    rows, k = dist.shape
    if ids.null_count == 0 and (radius is None or dist.max(initial=0) <= radius):  # every row full
        offsets, kept_ids, kept_dist = np.arange(0, rows * k + 1, k, dtype=np.int32), ids, dist.ravel()
    else:
        keep = ~np.asarray(ids.is_null()).reshape(dist.shape)
        if radius is not None:
            keep &= dist <= radius
        offsets = np.concatenate([[0], np.cumsum(keep.sum(1))]).astype(np.int32)
        kept_ids, kept_dist = ids.filter(pa.array(keep.ravel())), dist[keep]
    offsets = pa.array(offsets)
    table = pa.table(
        {
            "ids": pa.ListArray.from_arrays(offsets, kept_ids),
            "distances": pa.ListArray.from_arrays(
                offsets, pa.array(kept_dist, pa.float32() if dist.dtype.kind == "f" else pa.int32())
            ),
        }
    )
    table = table.replace_schema_metadata({"rayhash": orjson.dumps(meta)})
    sink = pa.BufferOutputStream()
    with pa.ipc.new_stream(sink, table.schema) as writer:
        writer.write_table(table)
    return Response(sink.getvalue().to_pybytes(), media_type=ARROW_STREAM)


def id_lookup(source: np.ndarray, parts: list[tuple]) -> tuple[np.ndarray, pa.Array]:
    """Where each merged result's id lies in the shards' answers laid end to end: ``(positions
    (-1 for pads), those ids as one array)``. ``source`` indexes the parts' columns side by side
    (:func:`merge_topk`); part p's ids are its rows' ids one row after another."""
    rows = len(source)
    widths = np.array([p[1].shape[1] for p in parts])
    first_col = np.concatenate([[0], np.cumsum(widths)[:-1]])
    first_id = np.concatenate([[0], np.cumsum(rows * widths)[:-1]])
    part = np.searchsorted(first_col, np.maximum(source, 0), side="right") - 1
    pos = first_id[part] + np.arange(rows)[:, None] * widths[part] + (source - first_col[part])
    ids = [p[2] if p[2].type == pa.large_string() else p[2].cast(pa.large_string()) for p in parts]
    return np.where(source >= 0, pos, -1), pa.concat_arrays(ids)
