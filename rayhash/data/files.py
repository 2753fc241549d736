"""A folder (local or s3://) or a list of image files, decoded into memory for training.

For image lakes too large for memory, the Ray Data encode job reads files itself; this
reader is for the few thousand images a model trains on. Ids are the path relative to the
folder (``/``-separated), or the URI as given for a list, so they stay the same wherever the
folder is copied. Files that fail to read or decode are skipped and listed in
``LabeledImages.skipped`` with their reason (a decode reason code, or ``unreadable``).
"""

from __future__ import annotations

import logging
import posixpath
from collections.abc import Iterator, Sequence

import numpy as np

from rayhash import storage
from rayhash.data.decode import IMAGE_EXTENSIONS, MAX_BYTES, MAX_PIXELS, decode_all
from rayhash.data.images import LabeledImages

logger = logging.getLogger(__name__)

_READ_CHUNK = 256  # files fetched per request batch (s3fs fetches a batch concurrently)


def _read(uris: list[str]) -> Iterator[tuple[str, bytes | Exception]]:
    """Each URI's bytes (or the error reading it), fetched a chunk at a time."""
    fs, _ = storage.filesystem(uris[0])
    for start in range(0, len(uris), _READ_CHUNK):
        chunk = uris[start : start + _READ_CHUNK]
        # cat_ranges, not cat: it keeps order and never expands glob characters in names.
        yield from zip(chunk, fs.cat_ranges([storage.fs_path(u) for u in chunk], None, None))


def _list(source: str | Sequence[str]) -> tuple[list[str], list[str]]:
    """The URIs to read and their ids."""
    if isinstance(source, str):
        uris = storage.list_files(source, IMAGE_EXTENSIONS)
        if not uris:
            raise FileNotFoundError(f"no {'/'.join(IMAGE_EXTENSIONS)} files under {source}.")
        root_path = storage.fs_path(source.rstrip("/"))
        ids = []
        for u in uris:
            rel = posixpath.relpath(storage.fs_path(u), root_path)
            ids.append(posixpath.basename(u) if rel == "." else rel)  # root was one file
        return uris, ids
    uris = [str(u) for u in source]
    if not uris:
        raise ValueError("an empty list of image files was given.")
    if len({storage.is_s3(u) for u in uris}) > 1:
        raise ValueError("mix of local and s3:// files in one list; load them separately.")
    if len(set(uris)) != len(uris):
        raise ValueError("the list of image files has duplicates; ids must be unique.")
    return uris, list(uris)


def load_image_files(
    source: str | Sequence[str],
    image_size: int | None = None,
    *,
    labels_from_dirs: bool = False,
    mode: str | None = "RGB",
    max_bytes: int = MAX_BYTES,
    max_pixels: int = MAX_PIXELS,
    name: str = "files",
) -> LabeledImages:
    """Decode every image under a folder (recursively, sorted) or in a list of URIs.

    ``image_size`` centre-crops and resizes each image to a square; without it all images
    must already share one size. ``labels_from_dirs`` labels each file by the name of the
    directory it sits in, classes numbered in sorted name order.
    """
    uris, ids = _list(source)
    images, kept, skipped = decode_all(
        _read(uris),
        name=name,
        image_size=image_size,
        mode=mode,
        max_bytes=max_bytes,
        max_pixels=max_pixels,
    )
    kept_ids = [ids[i] for i in kept]
    labels, classes = None, None
    if labels_from_dirs:
        dirs = [posixpath.basename(posixpath.dirname(id_)) for id_ in kept_ids]
        if "" in dirs:
            raise ValueError(
                f"{name}: labels_from_dirs needs every file inside a class "
                f"folder, but {kept_ids[dirs.index('')]} is not."
            )
        classes = tuple(sorted(set(dirs)))
        index = {c: i for i, c in enumerate(classes)}
        labels = np.array([index[d] for d in dirs], dtype=np.int64)
    return LabeledImages(images, labels, kept_ids, name=name, classes=classes, skipped=skipped)
