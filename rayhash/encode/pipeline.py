"""The bulk encode job on Ray Data: image lake + checkpoint -> a committed code set.

    items (sorted, chunked) --[GPU only: map_batches(load_images), CPU tasks]-->
        --map_batches(EncodeImages, actor pool; on CPU it reads and decodes too)--> codes
        --driver: collect each chunk, stage its shards--> manifest (the commit)

The driver only ever holds codes (nbits/8 bytes an image) and ids, never images. Chunks
staged by an earlier attempt of the same run are checked and reused, not encoded again.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Iterable, Iterator

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import ray
from tqdm.auto import tqdm

from rayhash.codespec import check_writable
from rayhash.codespec import pq as pq_lib
from rayhash.config import ConfigError, from_dict, to_dict
from rayhash.encode import codeset, inputs, staging
from rayhash.encode.config import EncodeConfig
from rayhash.models import ModelConfig, checkpoint, input_spec

logger = logging.getLogger(__name__)


class EncodeImages:
    """Ray Data actor: loads the checkpoint once, then turns batches into codes.

    With ``load`` (the keyword arguments of :func:`inputs.load_images`) it takes input items
    and reads and decodes them itself; without, it takes batches that tasks decoded. Rejected
    rows pass through with a null code, so the driver sees every input exactly once.
    """

    def __init__(
        self,
        checkpoint_uri: str,
        checkpoint_sha256: str,
        *,
        batch_size: int,
        use_gpu: bool,
        torch_threads: int,
        load: dict | None = None,
    ):
        import torch

        from rayhash.models.encoder import ImageEncoder

        if torch_threads:
            torch.set_num_threads(torch_threads)
        self.encoder = ImageEncoder.from_checkpoint(
            checkpoint_uri, device=None if use_gpu else "cpu", batch_size=batch_size
        )
        if self.encoder.checkpoint_sha256 != checkpoint_sha256:
            raise RuntimeError(
                f"checkpoint {checkpoint_uri} changed while the job ran (SHA-256 "
                f"{self.encoder.checkpoint_sha256}, the job started with {checkpoint_sha256})"
            )
        self.load = load
        # Outside Ray (the class on its own) there is no node, and asking would start a local Ray.
        self.node_id = ray.get_runtime_context().get_node_id() if ray.is_initialized() else ""

    def __call__(self, batch: pa.Table) -> pa.Table:
        if self.load is not None:
            batch = inputs.load_images(batch, **self.load)
        ok, images = inputs.images_of(batch)
        packed = self.encoder.encode(images)
        codes: list[bytes | None] = [None] * batch.num_rows
        for i, row in zip(ok, packed):
            codes[i] = row.tobytes()
        return pa.table(
            {
                "id": batch["id"],
                "code": pa.array(codes, pa.binary(self.encoder.code_bytes)),
                "source": batch["source"],
                "chunk": batch["chunk"],
                "reason": batch["reason"],
                "message": batch["message"],
                # Where the rows were encoded, for the manifest's count by node: one byte a row.
                "node": pa.DictionaryArray.from_arrays(
                    pa.array(np.zeros(batch.num_rows, np.int8)), pa.array([self.node_id])
                ),
            }
        )


def _check_resources(cfg: EncodeConfig) -> None:
    need_cpu = cfg.num_actors * cfg.cpus_per_actor + (cfg.cpus_per_decode_task if cfg.use_gpu else 0)
    have = ray.cluster_resources()
    if need_cpu > have.get("CPU", 0) or (cfg.use_gpu and cfg.num_actors > have.get("GPU", 0)):
        # An autoscaling cluster may still grow; a fixed one would wait forever.
        logger.warning(
            "the encode job needs %.2f CPUs%s but the cluster has %s now; it will wait for more. "
            "Lower num_actors or cpus_per_actor (fractions are fine) if no more are coming.",
            need_cpu,
            f" and {cfg.num_actors} GPUs" if cfg.use_gpu else "",
            have,
        )


def _dataset(
    cfg: EncodeConfig, todo: pa.Table, ckpt: checkpoint.Checkpoint, mode: str, image_size: int
) -> ray.data.Dataset:
    # One block per read_batch items: the unit of reading and decoding.
    blocks = [todo.slice(s, cfg.read_batch) for s in range(0, todo.num_rows, cfg.read_batch)]
    ds = ray.data.from_arrow(blocks)
    load = dict(
        image_column=cfg.image_column,
        id_column=cfg.id_column,
        max_bytes=cfg.max_image_bytes,
        max_pixels=cfg.max_image_pixels,
        mode=mode,
        image_size=image_size,  # blocks hold model-sized pixels
    )
    if cfg.use_gpu:
        # Decode on CPU tasks so the GPU actors only run the model. On CPU, decoding inside the
        # actors saves a hop through the object store and cannot starve: tasks beside actors
        # that hold every CPU would never be scheduled.
        ds = ds.map_batches(
            inputs.load_images,
            batch_size=None,
            batch_format="pyarrow",
            num_cpus=cfg.cpus_per_decode_task,
            fn_kwargs=load,
        )
    return ds.map_batches(
        EncodeImages,
        batch_size=cfg.batch_size if cfg.use_gpu else None,
        batch_format="pyarrow",
        compute=ray.data.ActorPoolStrategy(size=cfg.num_actors),
        num_cpus=cfg.cpus_per_actor,
        num_gpus=1 if cfg.use_gpu else 0,
        fn_constructor_kwargs=dict(
            checkpoint_uri=ckpt.uri,
            checkpoint_sha256=ckpt.sha256,
            batch_size=cfg.batch_size,
            use_gpu=cfg.use_gpu,
            torch_threads=cfg.torch_threads,
            load=None if cfg.use_gpu else load,
        ),
    )


def complete_chunks(batches: Iterable[pa.Table], expected: dict[int, int]) -> Iterator[tuple[int, pa.Table]]:
    """Group streamed rows by chunk; yield ``(chunk, rows)`` the moment a chunk's last input arrives."""
    pending: dict[int, list[pa.Table]] = {i: [] for i in expected}
    got = dict.fromkeys(expected, 0)
    for batch in batches:
        for i in np.unique(batch["chunk"].to_numpy()).tolist():
            if i not in got:
                raise RuntimeError(f"rows of chunk {i} arrived, which this run did not ask for")
            part = batch.filter(pc.equal(batch["chunk"], i))
            got[i] += part.num_rows
            if got[i] > expected[i]:
                raise RuntimeError(f"chunk {i} received {got[i]} rows for {expected[i]} inputs")
            pending[i].append(part)
            if got[i] == expected[i]:
                yield i, pa.concat_tables(pending.pop(i))
    if pending:
        raise RuntimeError(f"the dataset ended with chunks {sorted(pending)[:5]} incomplete; nothing was committed")


def _progress(batches: Iterable[pa.Table], total: int, enabled: bool, by_node: dict[str, int]) -> Iterator[pa.Table]:
    """``batches`` without their ``node`` column, drawing the bar and counting each node's rows in ``by_node``."""
    with tqdm(total=total, unit="img", desc="encode", disable=not enabled) as bar:
        for batch in batches:
            for node in pc.value_counts(batch["node"]).to_pylist():
                by_node[node["values"]] = by_node.get(node["values"], 0) + node["counts"]
            yield batch.drop_columns(["node"])
            bar.update(batch.num_rows)


def run_encode(cfg: EncodeConfig, *, on_staged: Callable[[int, int], None] | None = None) -> codeset.CodeSetManifest:
    """Encode every input of ``cfg`` and commit the code set at ``cfg.output``.

    Needs a running Ray (the job script starts or joins one). ``on_staged(done, total)`` is
    called after each chunk is staged, before the manifest; tests raise from it to crash there.
    """
    started = time.perf_counter()
    ckpt = checkpoint.load(cfg.checkpoint)
    try:  # before any image is read: the job's checkpoint is the wrong kind for it
        spec = _pq_spec(ckpt) if ckpt.code_kind == pq_lib.KIND else None
        if spec is None:
            check_writable(ckpt.code_kind, f"checkpoint {ckpt.uri}")
    except ValueError as e:
        raise ConfigError(f"config key 'checkpoint': {e}") from None
    model_cfg = from_dict(ModelConfig, ckpt.config["model"])
    nbits = model_cfg.bits if spec is None else spec.nbits
    width = model_cfg.bits // 8 if spec is None else spec.m  # bytes per code
    model_input = input_spec(model_cfg)
    mode = "L" if model_input.channels == 1 else "RGB"  # decode straight to what the model eats
    items = inputs.plan(cfg)
    run = staging.run_dir(ckpt.sha256, cfg)
    chunk_ids = items["chunk"].to_numpy()
    bounds = np.searchsorted(chunk_ids, np.arange(int(chunk_ids[-1]) + 2))
    chunks = [items.slice(lo, hi - lo) for lo, hi in zip(bounds[:-1], bounds[1:])]
    fingerprints = [inputs.chunk_fingerprint(t) for t in chunks]
    expected = [int(pc.sum(t["rows"]).as_py()) for t in chunks]

    # Chunks an earlier attempt of this run staged, and whose files still prove it, are done.
    staged: dict[int, tuple[staging.StagedChunk, pa.Table]] = {}
    for i in range(len(chunks)):
        if found := staging.load_chunk(cfg.output, run, i, fingerprints[i], nbytes=width):
            staged[i] = found
    todo = {i: expected[i] for i in range(len(chunks)) if i not in staged}
    logger.info(
        "encoding %s into %s/%s: %d inputs in %d chunks, %d chunks already staged, %d inputs to encode",
        cfg.input,
        cfg.output,
        run,
        sum(expected),
        len(chunks),
        len(staged),
        sum(todo.values()),
    )

    stream_started = time.perf_counter()
    by_node: dict[str, int] = {}
    if todo:
        _check_resources(cfg)
        ds = _dataset(cfg, pa.concat_tables([chunks[i] for i in todo]), ckpt, mode, model_input.image_size)
        stream = ds.iter_batches(batch_size=None, batch_format="pyarrow")
        batches = _progress(stream, sum(todo.values()), cfg.progress, by_node)
        for i, rows in complete_chunks(batches, todo):
            staged[i] = staging.stage_chunk(cfg.output, run, i, fingerprints[i], rows, nbytes=width)
            if on_staged:
                on_staged(len(staged), len(chunks))
    elapsed = time.perf_counter() - stream_started

    manifest = _commit(cfg, ckpt, run, nbits, [staged[i] for i in range(len(chunks))], sum(expected), spec, by_node)
    rate = sum(todo.values()) / elapsed if todo else 0.0
    logger.info(
        "encode done: %d encoded, %d rejected (%d inputs, %d reused from staged chunks) in %.1f s; "
        "%.0f images/s this run",
        manifest.counts["encoded"],
        manifest.counts["rejected"],
        sum(expected),
        sum(expected) - sum(todo.values()),
        time.perf_counter() - started,
        rate,
    )
    return manifest


def _commit(
    cfg: EncodeConfig,
    ckpt: checkpoint.Checkpoint,
    run: str,
    nbits: int,
    chunks: list[tuple[staging.StagedChunk, pa.Table]],
    num_inputs: int,
    spec: pq_lib.PQSpec | None = None,
    by_node: dict[str, int] | None = None,
) -> codeset.CodeSetManifest:
    """Check that every input is in exactly one shard, then write the manifest."""
    all_codes = pa.concat_tables([codes for _, codes in chunks])
    if pc.count_distinct(all_codes["id"]).as_py() != all_codes.num_rows:
        raise ValueError(
            f"ids repeat across {cfg.input}; with input_format='parquet' set a unique id_column, "
            "or leave it empty for '<file>#<row>' ids"
        )
    packed = codeset.codes_from_arrow(all_codes["code"])
    rejected = sum(c.errors.rows for c, _ in chunks if c.errors)
    if len(packed) + rejected != num_inputs:
        raise RuntimeError(f"{len(packed)} encoded + {rejected} rejected != {num_inputs} inputs; nothing was committed")
    return codeset.commit(
        cfg.output,
        nbits=nbits,
        checkpoint_uri=ckpt.uri,
        checkpoint_sha256=ckpt.sha256,
        config={**to_dict(cfg), "checkpoint": ckpt.uri, "run": run},
        shards=[c.codes for c, _ in chunks if c.codes],
        errors=[c.errors for c, _ in chunks if c.errors],
        counts={"inputs": num_inputs, "encoded": len(packed), "rejected": rejected},
        health=codeset.code_health(packed, nbits) if spec is None else codeset.pq_health(spec, packed),
        code_kind=ckpt.code_kind,
        code_spec=None if spec is None else codeset.write_codebooks(cfg.output, run, spec),
        inputs_by_node=by_node,
    )


def _pq_spec(ckpt: checkpoint.Checkpoint) -> pq_lib.PQSpec:
    """The codebooks a pq checkpoint's method learned (its em state), as the code set's spec."""
    books = ckpt.em.get("codebooks")
    if books is None:
        raise ValueError(
            f"checkpoint {ckpt.uri} gives pq codes but holds no codebooks: its method ran no E-step yet "
            "(train past the warm-up rounds)"
        )
    return pq_lib.PQSpec.from_codebooks(books.float().numpy())
