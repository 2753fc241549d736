"""What an encode job reads, which model it runs, where the code set goes, and how wide it runs."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from rayhash.config import ConfigError
from rayhash.data.decode import IMAGE_EXTENSIONS, MAX_BYTES, MAX_PIXELS


@dataclass(frozen=True)
class EncodeConfig:
    # input: a folder or s3:// prefix of image files ("files"), a text file of image URIs one
    # per line ("list"), or a folder / prefix / file of Parquet with an image-bytes column.
    input: str = ""
    input_format: Literal["files", "list", "parquet"] = "files"
    extensions: tuple[str, ...] = IMAGE_EXTENSIONS  # "files" only; empty: every file is an input
    image_column: str = "image"  # "parquet": binary, or a struct with a `bytes` field
    id_column: str = ""  # "parquet": ids from this column; empty: "<file relative to input>#<row>"
    checkpoint: str = ""
    output: str = ""  # the code-set directory, local or s3://
    rows_per_shard: int = 100_000
    read_batch: int = 256  # files (or Parquet row groups) read and decoded at once: one Ray Data block
    batch_size: int = 256  # images per encoder call
    num_actors: int = 1
    cpus_per_actor: float = 1.0
    cpus_per_decode_task: float = 1.0  # use_gpu only: decoding runs in CPU tasks beside the GPU actors
    use_gpu: bool = False
    torch_threads: int = 0  # per actor; 0 leaves torch's default (Ray sets it from cpus_per_actor)
    max_image_bytes: int = MAX_BYTES
    max_image_pixels: int = MAX_PIXELS
    progress: bool = True

    def __post_init__(self) -> None:
        for key in ("input", "checkpoint", "output"):
            if not getattr(self, key):
                raise ConfigError(f"encode config needs {key!r} (e.g. --{key}=s3://bucket/path)")
        for key in ("rows_per_shard", "read_batch", "batch_size", "num_actors", "max_image_bytes", "max_image_pixels"):
            if getattr(self, key) <= 0:
                raise ConfigError(f"encode config {key!r} must be positive, got {getattr(self, key)}")
        for key in ("cpus_per_actor", "cpus_per_decode_task"):
            if getattr(self, key) < 0:
                raise ConfigError(f"encode config {key!r} must be >= 0, got {getattr(self, key)}")
        if self.torch_threads < 0:
            raise ConfigError(f"encode config 'torch_threads' must be >= 0, got {self.torch_threads}")
        if self.id_column and self.input_format != "parquet":
            raise ConfigError("encode config 'id_column' applies to input_format 'parquet' only")
