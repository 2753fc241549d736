"""A crash before the manifest, and reruns: the old code set stays, finished chunks are not redone."""

from __future__ import annotations

import os

import numpy as np
import pytest
from encode_helpers import check_code_set, encode_config, in_process, mtimes

from rayhash import storage
from rayhash.encode import codeset, run_encode


class Crash(RuntimeError):
    pass


def _crash_at(n: int):
    def hook(done: int, total: int) -> None:
        if done == (total if n < 0 else n):
            raise Crash(f"simulated crash after {done} of {total} chunks")

    return hook


def test_crash_before_commit_keeps_old_code_set(ray_cluster, fmnist_lake, tiny_checkpoint, other_checkpoint, tmp_path):
    out = str(tmp_path / "codes")
    # The committed old version, written in-process in the same format the job writes.
    ids = sorted(fmnist_lake.good)
    old = codeset.write_codeset(
        out,
        ids=ids,
        codes=in_process(tiny_checkpoint, [fmnist_lake.good[i] for i in ids]),
        sources=ids,
        nbits=64,
        checkpoint_uri=tiny_checkpoint,
        checkpoint_sha256="old",
        config={},
    )
    old_manifest = storage.read_bytes(storage.join(out, "manifest.json"))
    old_ids, old_codes, _ = codeset.read_codes(out)
    cfg = encode_config(fmnist_lake, other_checkpoint, out)

    def old_still_served():
        assert storage.read_bytes(storage.join(out, "manifest.json")) == old_manifest
        ids, codes, _ = codeset.read_codes(out)
        assert list(ids) == list(old_ids) and np.array_equal(codes, old_codes)

    # Crash with half the chunks of the new model staged: the old code set is what readers see.
    with pytest.raises(Crash):
        run_encode(cfg, on_staged=_crash_at(2))
    old_still_served()
    (new_run,) = {f"runs/{r}" for r in os.listdir(os.path.join(out, "runs"))} - {os.path.dirname(old.shards[0].path)}
    first = mtimes(out, new_run)
    assert sum(f.startswith("chunk-") for f in first) == 2

    # Crash after every chunk is staged, just before the manifest: finished chunks were not redone.
    with pytest.raises(Crash):
        run_encode(cfg, on_staged=_crash_at(-1))
    old_still_served()
    second = mtimes(out, new_run)
    assert {f: second[f] for f in first} == first and sum(f.startswith("chunk-") for f in second) == 4

    # The rerun encodes nothing (every staged file untouched) and commits the new model's codes.
    new = run_encode(cfg)
    assert mtimes(out, new_run) == second
    assert new.config["run"] == new_run and new.checkpoint_sha256 != old.checkpoint_sha256
    check_code_set(new, fmnist_lake, other_checkpoint, fmnist_lake.root)
    np.testing.assert_array_equal(codeset.read_codes(old)[1], old_codes)  # old shards kept for old readers

    # Encoding again from nothing gives byte-identical shards: the rows do not depend on how
    # the work was split between attempts, actors or arrival order.
    storage.remove(storage.join(out, new_run), recursive=True)
    fresh = run_encode(cfg)
    assert fresh.shards == new.shards and fresh.errors == new.errors
