"""Parquet files (local or s3://) with a column of encoded image bytes.

The image column holds binary values (PNG, JPEG, ...), or structs with a ``bytes`` field as
Hugging Face ``datasets`` writes its ``Image`` feature. Files are read in sorted path order,
so default ids (the row position as a string) are stable for the same files.
"""

from __future__ import annotations

import logging

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from rayhash import storage
from rayhash.data.decode import MAX_BYTES, MAX_PIXELS, decode_all
from rayhash.data.images import LabeledImages

logger = logging.getLogger(__name__)


def image_bytes(column: pa.ChunkedArray, name: str) -> list[bytes | None]:
    if pa.types.is_struct(column.type):
        if column.type.get_field_index("bytes") < 0:
            raise ValueError(f"image column {name!r} is a struct without a 'bytes' field.")
        field = column.type.field("bytes")
        column = pa.chunked_array([c.field("bytes") for c in column.chunks], field.type)
    if not (
        pa.types.is_binary(column.type) or pa.types.is_large_binary(column.type) or pa.types.is_binary_view(column.type)
    ):
        raise ValueError(f"image column {name!r} has type {column.type}; it must hold encoded image bytes (binary).")
    return column.to_pylist()


def _labels(column: pa.ChunkedArray, name: str) -> tuple[np.ndarray, tuple[str, ...] | None]:
    """Int labels as they are, string labels numbered in sorted order, 0/1 lists as multi-hot."""
    t = column.type
    if column.null_count:
        raise ValueError(f"label column {name!r} has {column.null_count} null labels.")
    if pa.types.is_integer(t):
        return column.to_numpy().astype(np.int64), None
    if pa.types.is_string(t) or pa.types.is_large_string(t):
        values = column.to_pylist()
        classes = tuple(sorted(set(values)))
        index = {c: i for i, c in enumerate(classes)}
        return np.array([index[v] for v in values], dtype=np.int64), classes
    if pa.types.is_list(t) or pa.types.is_fixed_size_list(t) or pa.types.is_large_list(t):
        rows = column.to_pylist()
        if len({len(r) for r in rows}) > 1 or not set().union(*map(set, rows)) <= {0, 1}:
            raise ValueError(f"label column {name!r}: list labels must be 0/1 rows of one length.")
        return np.array(rows, dtype=np.int64), None
    raise ValueError(f"label column {name!r} has type {t}; use ints, strings or 0/1 lists.")


def load_parquet(
    uri: str,
    *,
    image_column: str = "image",
    label_column: str | None = None,
    id_column: str | None = None,
    image_size: int | None = None,
    mode: str | None = "RGB",
    max_bytes: int = MAX_BYTES,
    max_pixels: int = MAX_PIXELS,
    name: str = "parquet",
) -> LabeledImages:
    """Decode the images of one Parquet file or every ``*.parquet`` file under a folder."""
    uris = storage.list_files(uri, (".parquet",))
    if not uris:
        raise FileNotFoundError(f"no .parquet files at {uri}.")
    fs, _ = storage.arrow_filesystem(uri)
    columns = [c for c in (image_column, label_column, id_column) if c]
    tables = []
    for u in uris:
        with fs.open_input_file(storage.arrow_filesystem(u)[1]) as f:
            pf = pq.ParquetFile(f)
            missing = [c for c in columns if c not in pf.schema_arrow.names]
            if missing:
                raise ValueError(
                    f"{u} has no column {missing}; its columns: "
                    f"{pf.schema_arrow.names}. Pass image_column= / label_column= "
                    "/ id_column=."
                )
            tables.append(pf.read(columns=columns))
    table = pa.concat_tables(tables, promote_options="default")
    ids = [str(v) for v in table[id_column].to_pylist()] if id_column else [str(i) for i in range(table.num_rows)]
    if len(set(ids)) != len(ids):
        raise ValueError(f"{uri}: column {id_column!r} has duplicate ids.")
    blobs = image_bytes(table[image_column], image_column)
    images, kept, skipped = decode_all(
        zip(ids, blobs),
        name=name,
        image_size=image_size,
        mode=mode,
        max_bytes=max_bytes,
        max_pixels=max_pixels,
    )
    labels, classes = None, None
    if label_column:
        labels, classes = _labels(table[label_column], label_column)
        labels = labels[kept]
    return LabeledImages(images, labels, [ids[i] for i in kept], name=name, classes=classes, skipped=skipped)
