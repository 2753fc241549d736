"""One entry point for every in-memory data source: ``load_source(name, path, **options)``.

``path`` per source:

- ``fashion-mnist``: the folder of the four ``*-idx?-ubyte.gz`` files (default: where the
  Debian package ``dataset-fashion-mnist`` puts them);
- ``cifar10``: the folder of the batches, binary or python version, or its parent;
- ``files``: a folder of images (searched recursively) or a single image file;
- ``parquet``: a Parquet file or a folder of them.

``options`` go to the source's loader (e.g. ``image_size``, ``labels_from_dirs`` for files,
``image_column`` / ``label_column`` / ``id_column`` for parquet).
"""

from __future__ import annotations

import inspect
from collections.abc import Callable

from rayhash.data.cifar10 import load_cifar10
from rayhash.data.fashion_mnist import DEFAULT_ROOT, load_fashion_mnist
from rayhash.data.files import load_image_files
from rayhash.data.images import LabeledImages
from rayhash.data.parquet import load_parquet

SOURCES: dict[str, Callable[..., LabeledImages]] = {
    "fashion-mnist": load_fashion_mnist,
    "cifar10": load_cifar10,
    "files": load_image_files,
    "parquet": load_parquet,
}
_DEFAULT_PATHS = {"fashion-mnist": DEFAULT_ROOT}


def load_source(name: str, path: str | None = None, **options) -> LabeledImages:
    """Load the source ``name`` from ``path`` (local or s3://) into memory."""
    if name not in SOURCES:
        raise ValueError(f"unknown data source {name!r}; known: {', '.join(SOURCES)}.")
    path = path or _DEFAULT_PATHS.get(name)
    if path is None:
        raise ValueError(f"data source {name!r} needs a path (a local folder or s3:// URI).")
    loader = SOURCES[name]
    accepted = list(inspect.signature(loader).parameters)[1:]
    unknown = sorted(set(options) - set(accepted))
    if unknown:
        raise ValueError(f"data source {name!r} takes no option {unknown}; it takes {accepted}.")
    return loader(path, **options)
