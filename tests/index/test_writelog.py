"""The write log and the live overlay: held against a numpy model of the index, and compaction
against a fresh build from the same items."""

import numpy as np
import pytest

from rayhash import storage
from rayhash.cli import main
from rayhash.codespec import binary as codes_lib
from rayhash.encode import codeset
from rayhash.index import build_index_set, indexset, writelog
from rayhash.index.compact import compact
from rayhash.index.live import LiveShard, search_all

SHA = "ab" * 32


@pytest.fixture(autouse=True)
def one_faiss_thread():
    # Tiny searches: OpenMP threads only wait for each other on a busy machine.
    import faiss

    saved = faiss.omp_get_max_threads()
    faiss.omp_set_num_threads(1)
    yield
    faiss.omp_set_num_threads(saved)


@pytest.fixture
def index(tmp_path):
    # 16-bit codes from 40 values: ties at the k-th distance are the rule, so the tie order counts.
    rng = np.random.default_rng(3)
    vocab = rng.integers(0, 256, (40, 2), dtype=np.uint8)
    ids = [f"img-{i:04d}" for i in rng.permutation(600)]
    codes = vocab[rng.integers(0, 40, 600)]
    cs = codeset.write_codeset(
        str(tmp_path / "cs"),
        ids=ids,
        codes=codes,
        sources=ids,
        nbits=16,
        checkpoint_uri="file:///m",
        checkpoint_sha256="cd" * 32,
        config={},
    )
    m = build_index_set(cs.uri, str(tmp_path / "index"), num_shards=3)
    return m, dict(zip(ids, codes, strict=True)), vocab


def brute_force(model: dict, queries: np.ndarray, k: int):
    ids = np.array(sorted(model), dtype=object)
    d = codes_lib.hamming(queries, np.stack([model[i] for i in ids]))
    order = np.lexsort((np.broadcast_to(np.arange(len(ids)), d.shape), d), axis=1)[:, :k]
    return np.take_along_axis(d, order, 1), ids[order]


def test_records_are_checksummed_numbered_and_never_overwritten(tmp_path):
    uri = str(tmp_path)
    assert writelog.head(uri) == 0 and list(writelog.replay(uri, SHA)) == []
    ops = [writelog.Op("add", "a", 0, "00ff"), writelog.Op("delete", "b", 1)]
    assert writelog.append(uri, SHA, ops) == 1
    assert writelog.append(uri, SHA, ops[:1]) == 2
    assert writelog.append(uri, SHA, ops[1:], after=0) == 3  # a stale hint moves on, not over
    assert writelog.head(uri) == 3
    assert [(r.seq, r.ops) for r in writelog.replay(uri, SHA)] == [
        (1, tuple(ops)),
        (2, tuple(ops[:1])),
        (3, tuple(ops[1:])),
    ]
    path = writelog.record_uri(uri, 2)
    data = storage.read_bytes(path)
    storage.write_bytes_atomic(path, data.replace(b'"a"', b'"z"'))
    with pytest.raises(writelog.CorruptRecord, match="does not match its bytes"):
        list(writelog.replay(uri, SHA))
    with pytest.raises(ValueError, match="belongs to the index set it sits in"):
        writelog.read_record(uri, 1, "cd" * 32)


def test_records_on_s3_are_new_objects(s3_bucket):
    uri = f"{s3_bucket}/index"
    assert writelog.append(uri, SHA, [writelog.Op("add", "a", 0, "00ff")]) == 1
    assert writelog.append(uri, SHA, [writelog.Op("delete", "a", 0)], after=0) == 2
    assert [r.seq for r in writelog.replay(uri, SHA)] == [1, 2] and writelog.head(uri) == 2


def test_owner_keeps_ids_ascending_across_shards():
    first = ["b", "f", "m"]
    assert [writelog.owner(first, i) for i in ["a", "b", "c", "f", "l", "m", "zz"]] == [0, 0, 0, 1, 1, 2, 2]


def test_a_thousand_random_writes_answer_like_a_numpy_model(index):
    m, model, vocab = index
    shards = [LiveShard(indexset.load_shard(m, i)) for i in range(len(m.shards))]
    first = [s.shard.ids[0].as_py() for s in shards]
    rng = np.random.default_rng(0)
    queries = vocab[rng.integers(0, 40, 12)] ^ (rng.random((12, 2)) < 0.1).astype(np.uint8)
    seq, done = 0, 0
    while done < 1000:
        ops = []
        for _ in range(rng.integers(1, 6)):
            roll = rng.random()
            if roll < 0.35 and model:  # delete an existing id
                item = sorted(model)[rng.integers(len(model))]
                del model[item]
                ops.append(writelog.Op("delete", item, writelog.owner(first, item)))
            else:  # add a new id (some below and above every built id) or replace one
                item = (
                    sorted(model)[rng.integers(len(model))]
                    if roll < 0.6
                    else f"{rng.choice(['a', 'img-', 'z'])}{rng.integers(10**6)}"
                )
                code = vocab[rng.integers(0, 40)] if rng.random() < 0.8 else rng.integers(0, 256, 2, dtype=np.uint8)
                model[item] = code
                ops.append(writelog.Op("add", item, writelog.owner(first, item), codes_lib.to_hex(code[None])[0]))
        seq = writelog.append(m.uri, m.sha256, ops, after=seq)
        done += len(ops)
        for s in shards:
            s.apply(writelog.replay(m.uri, m.sha256, after=s.seq))
        if seq % 25 == 0 or done >= 1000:
            for k in (1, 10, 57):
                got_d, got_i = search_all(shards, queries, k)
                want_d, want_i = brute_force(model, queries, k)
                np.testing.assert_array_equal(got_d, want_d)
                np.testing.assert_array_equal(got_i, want_i)
    assert sum(len(s) for s in shards) == len(model)
    for item in list(model)[:20]:
        s = shards[writelog.owner(first, item)]
        np.testing.assert_array_equal(s.code_of(item), model[item])
    # A replica that starts now replays the whole log and answers the same.
    fresh = [LiveShard(indexset.load_shard(m, i)) for i in range(len(m.shards))]
    for s in fresh:
        s.apply(writelog.replay(m.uri, m.sha256))
    for a, b in zip(search_all(fresh, queries, 30), search_all(shards, queries, 30), strict=True):
        np.testing.assert_array_equal(a, b)


def test_compaction_equals_a_fresh_build_of_the_same_items(index, tmp_path):
    m, model, _ = index
    first = [indexset.load_shard(m, i).ids[0].as_py() for i in range(len(m.shards))]
    ops = [writelog.Op("delete", i, writelog.owner(first, i)) for i in sorted(model)[::7]]
    ops += [writelog.Op("add", f"new-{i}", writelog.owner(first, f"new-{i}"), f"{i:04x}") for i in range(50)]
    ops += [writelog.Op("add", i, writelog.owner(first, i), "ffff") for i in sorted(model)[1::9]]
    writelog.append(m.uri, m.sha256, ops)
    for op in ops:
        if op.op == "delete":
            model.pop(op.id)
        else:
            model[op.id] = codes_lib.from_hex([op.code], 16)[0]
    # jobs/compact.py's entry point
    args = [f"--index={m.uri}", f"--codeset-out={tmp_path / 'cs2'}", f"--out={tmp_path / 'index2'}"]
    assert main(["compact", *args]) == 0
    got = indexset.read_index_manifest(str(tmp_path / "index2"))
    ids = sorted(model)
    cs = codeset.write_codeset(
        str(tmp_path / "cs3"),
        ids=ids,
        codes=np.stack([model[i] for i in ids]),
        sources=ids,
        nbits=16,
        checkpoint_uri="file:///m",
        checkpoint_sha256="cd" * 32,
        config={},
    )
    want = build_index_set(cs.uri, str(tmp_path / "index3"), num_shards=3)
    assert got.items == want.items == len(model)
    assert [(s.index_sha256, s.ids_sha256, s.rows) for s in got.shards] == [
        (s.index_sha256, s.ids_sha256, s.rows) for s in want.shards
    ]
    assert writelog.head(got.uri) == 0  # the new version starts with an empty log


def test_pq_writes_answer_as_their_compacted_index(tmp_path):
    from rayhash.codespec import pq

    rng = np.random.default_rng(4)
    spec = pq.fit(rng.standard_normal((64, 12)).astype(np.float32), 4, 16, niter=10, seed=1)
    ids = [f"img/{i:04d}" for i in range(300)]
    cs = codeset.write_codeset(
        str(tmp_path / "cs"),
        ids=ids,
        codes=rng.integers(0, 16, (300, 4)).astype(np.uint8),
        sources=ids,
        spec=spec,
        checkpoint_uri="ck",
        checkpoint_sha256="0" * 64,
        config={},
    )
    m = build_index_set(cs.uri, str(tmp_path / "index"), num_shards=2)
    first = [indexset.load_shard(m, i).ids[0].as_py() for i in range(2)]
    ops = [writelog.Op("delete", i, writelog.owner(first, i)) for i in ids[::5]]
    for i in [*ids[1::7], "a", "img/0150x", "z"]:
        ops.append(writelog.Op("add", i, writelog.owner(first, i), bytes(rng.integers(0, 16, 4, np.uint8)).hex()))
    writelog.append(m.uri, m.sha256, ops)
    live = [LiveShard(indexset.load_shard(m, i)) for i in range(2)]
    for s in live:
        s.apply(writelog.replay(m.uri, m.sha256))
    with pytest.raises(ValueError, match="centroid"):
        live[0].parse_code("00001f00")  # K = 16: no centroid 31
    c = compact(m.uri, str(tmp_path / "cs2"), str(tmp_path / "index2"))
    fresh = [LiveShard(indexset.load_shard(c, i)) for i in range(2)]
    queries = rng.standard_normal((15, 12)).astype(np.float32)
    for k in (1, 20, 400):
        got, want = search_all(live, queries, k), search_all(fresh, queries, k)
        np.testing.assert_array_equal(got[0], want[0])
        np.testing.assert_array_equal(got[1], want[1])
