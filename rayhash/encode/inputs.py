"""What an encode job reads: the list of inputs, cut into chunks, and the task that loads them.

An input *item* is one image file, or one row group of a Parquet file. Items are listed in
sorted order and cut into *chunks* of about ``rows_per_shard`` rows; each chunk becomes one
codes shard (and one errors shard if anything in it was rejected), so the same inputs always
give the same shards, and a chunk whose shards are stored is a unit of finished work.

Ids are stable across machines and reruns:

- ``files``: the path relative to the input folder, ``/``-separated, extension kept (the ids
  :func:`rayhash.data.files.load_image_files` gives the same files);
- ``list``: the URI exactly as the list file gives it;
- ``parquet``: the ``id_column`` value, or ``<file relative to the input>#<row in file>``.

Sources are full URIs (``#<row>`` appended for Parquet rows).
"""

from __future__ import annotations

import hashlib
import logging
import posixpath

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from rayhash import storage
from rayhash.data.decode import ImageDecodeError, decode_image
from rayhash.data.parquet import image_bytes
from rayhash.encode.config import EncodeConfig

logger = logging.getLogger(__name__)

ITEMS_SCHEMA = pa.schema(
    [
        ("uri", pa.string()),  # file URI
        ("id", pa.string()),  # the row's id (files) or the id prefix of the file's rows (parquet)
        ("size", pa.int64()),  # bytes, -1 when unknown (list input)
        ("row_group", pa.int32()),  # -1 for image files
        ("first_row", pa.int64()),  # position of the row group's first row within its file
        ("rows", pa.int64()),
        ("chunk", pa.int32()),
    ]
)
LOADED_SCHEMA = pa.schema(
    [
        ("id", pa.string()),
        ("source", pa.string()),
        ("chunk", pa.int32()),
        ("pixels", pa.binary()),
        ("shape", pa.list_(pa.int32(), 3)),  # null for rejected inputs
        ("reason", pa.string()),
        ("message", pa.string()),  # null for decoded images
    ]
)


def _relative(path: str, root: str) -> str:
    rel = posixpath.relpath(path, root).replace("\\", "/")
    return posixpath.basename(path) if rel == "." else rel  # the root was a single file


def _find(uri: str, suffixes: tuple[str, ...]) -> list[tuple[str, str, int]]:
    """``(uri, id, size)`` of every file below ``uri``, sorted; sizes come with the listing."""
    fs, root = storage.filesystem(uri)
    found = {root: fs.info(root)} if fs.isfile(root) else fs.find(root, detail=True)
    suffixes = tuple(s.lower() for s in suffixes)
    out = [
        (storage.to_uri(p, uri), _relative(p, root), int(info.get("size") or 0))
        for p, info in found.items()
        if info.get("type") != "directory" and (not suffixes or p.lower().endswith(suffixes))
    ]
    return sorted(out)


def _list_file(uri: str) -> list[tuple[str, str, int]]:
    lines = [ln.strip() for ln in storage.read_text(uri).splitlines()]
    uris = [ln for ln in lines if ln and not ln.startswith("#")]
    if len(set(uris)) != len(uris):
        dup = next(u for u in uris if uris.count(u) > 1)
        raise ValueError(f"{uri} lists {dup} more than once; every input must appear once (ids are the URIs).")
    return [(u, u, -1) for u in uris]


def _row_groups(files: list[tuple[str, str, int]]) -> list[tuple[str, str, int, int, int, int]]:
    out = []
    for uri, rel, size in files:
        fs, path = storage.arrow_filesystem(uri)
        with fs.open_input_file(path) as f:
            meta = pq.ParquetFile(f).metadata
        first = 0
        for g in range(meta.num_row_groups):
            rows = meta.row_group(g).num_rows
            out.append((uri, rel, size, g, first, rows))
            first += rows
    return out


def plan(cfg: EncodeConfig) -> pa.Table:
    """Every input item (``ITEMS_SCHEMA``) in sorted order, each with its chunk number."""
    if cfg.input_format == "files":
        rows = [(u, i, s, -1, 0, 1) for u, i, s in _find(cfg.input, cfg.extensions)]
        what = f"files ({' '.join(cfg.extensions) or 'any name'})"
    elif cfg.input_format == "list":
        rows = [(u, i, s, -1, 0, 1) for u, i, s in _list_file(cfg.input)]
        what = "URIs"
    else:
        rows = _row_groups(_find(cfg.input, (".parquet",)))
        what = ".parquet files"
    if not rows:
        raise FileNotFoundError(f"no input {what} under {cfg.input} (input_format={cfg.input_format!r}).")
    chunks, chunk, filled = [], 0, 0
    for r in rows:
        if filled and filled + r[5] > cfg.rows_per_shard:
            chunk, filled = chunk + 1, 0
        chunks.append(chunk)
        filled += r[5]
    cols = list(zip(*rows)) + [chunks]
    return pa.Table.from_arrays([pa.array(c, f.type) for c, f in zip(cols, ITEMS_SCHEMA)], schema=ITEMS_SCHEMA)


def chunk_fingerprint(items: pa.Table) -> str:
    """SHA-256 of what a chunk holds (URIs, sizes, row groups): a stored chunk is reused only
    for the same inputs. A file rewritten in place with the same size is not noticed."""
    h = hashlib.sha256()
    for row in zip(*(items[c].to_pylist() for c in ("uri", "size", "row_group", "rows"))):
        h.update(repr(row).encode() + b"\n")
    return h.hexdigest()


# --- the read-and-decode task ----------------------------------------------------------------


def _fetch_files(items: pa.Table, max_bytes: int) -> list[bytes | Exception]:
    uris = items["uri"].to_pylist()
    fs, _ = storage.filesystem(uris[0])
    paths = [storage.filesystem(u)[1] for u in uris]
    sizes = items["size"].to_pylist()
    # Known-oversized files are refused from the listing, never read into memory.
    wanted = [p for p, s in zip(paths, sizes) if s <= max_bytes]
    got = fs.cat(wanted, on_error="return") if wanted else {}  # a list in, a dict out
    out = []
    for p, s in zip(paths, sizes):
        if s > max_bytes:
            out.append(ImageDecodeError("too_large", f"{s} bytes exceeds max_bytes={max_bytes}"))
        else:
            data = got.get(p, FileNotFoundError(p))
            out.append(data if isinstance(data, (bytes, Exception)) else RuntimeError(repr(data)))
    return out


def _fetch_row_group(
    uri: str, group: int, rows: int, image_column: str, id_column: str
) -> tuple[list[bytes | Exception], list[str] | None]:
    try:
        fs, path = storage.arrow_filesystem(uri)
        with fs.open_input_file(path) as f:
            table = pq.ParquetFile(f).read_row_group(group, columns=[image_column] + ([id_column] if id_column else []))
        if table.num_rows != rows:
            raise ValueError(f"row group {group} has {table.num_rows} rows, its footer says {rows}")
        data = [d if d is not None else b"" for d in image_bytes(table[image_column], image_column)]
        return data, ([str(v) for v in table[id_column].to_pylist()] if id_column else None)
    except Exception as e:  # a bad file rejects its rows; it never fails the job
        return [e] * rows, None


def _expand(items: pa.Table, image_column: str, id_column: str, max_bytes: int):
    """``(id, source, chunk, bytes or the exception that stopped the read)`` per input row."""
    if items["row_group"][0].as_py() < 0:
        data = _fetch_files(items, max_bytes)
        yield from zip(items["id"].to_pylist(), items["uri"].to_pylist(), items["chunk"].to_pylist(), data)
        return
    for it in items.to_pylist():
        data, ids = _fetch_row_group(it["uri"], it["row_group"], it["rows"], image_column, id_column)
        for k, d in enumerate(data):
            row = it["first_row"] + k
            yield (ids[k] if ids else f"{it['id']}#{row}"), f"{it['uri']}#{row}", it["chunk"], d


def load_images(
    items: pa.Table,
    *,
    image_column: str = "image",
    id_column: str = "",
    max_bytes: int,
    max_pixels: int,
    mode: str | None,
    image_size: int | None = None,
) -> pa.Table:
    """Ray Data UDF: input items -> one ``LOADED_SCHEMA`` row per image, decoded or rejected.

    Every file is read and decoded in its own try/except, so a bad input becomes a row with a
    reason (a decode reason code, or ``unreadable``) and never fails its block. With
    ``image_size`` (the model's input) each image is resized as it is decoded, so a block holds
    model-sized pixels, not a block of full-resolution photos (9 GB for 256 12 MP images).
    """
    if image_size:  # torch loads only where images are resized
        from rayhash.data.transforms import resize_to_input
    cols: dict[str, list] = {name: [] for name in LOADED_SCHEMA.names}
    for id_, source, chunk, data in _expand(items, image_column, id_column, max_bytes):
        pixels = shape = reason = message = None
        try:
            if isinstance(data, ImageDecodeError):
                raise data
            if isinstance(data, Exception):
                reason, message = "unreadable", f"{type(data).__name__}: {data}"
            else:
                image = decode_image(data, max_bytes=max_bytes, max_pixels=max_pixels, mode=mode)
                if image_size:
                    image = resize_to_input(image, image_size)
                pixels, shape = image.tobytes(), list(image.shape)
        except ImageDecodeError as e:
            reason, message = e.reason, str(e)
        except Exception as e:  # a decoder bug on hostile bytes must not fail the job
            logger.warning("unexpected %s decoding %s: %s", type(e).__name__, source, e)
            reason, message = "decode_error", f"{type(e).__name__}: {e}"
        for name, value in zip(LOADED_SCHEMA.names, (id_, source, chunk, pixels, shape, reason, message)):
            cols[name].append(value)
    return pa.Table.from_pydict(cols, schema=LOADED_SCHEMA)


def images_of(batch: pa.Table) -> tuple[np.ndarray, list[np.ndarray]]:
    """The positions of decoded rows in a ``LOADED_SCHEMA`` batch and their uint8 images."""
    ok = np.flatnonzero(pc.is_valid(batch["pixels"]).to_numpy(zero_copy_only=False))
    pixels, shapes = batch["pixels"].to_pylist(), batch["shape"].to_pylist()
    # bytearray: torch refuses (with a warning) to wrap read-only memory.
    return ok, [np.frombuffer(bytearray(pixels[i]), np.uint8).reshape(shapes[i]) for i in ok]
