"""A fan-out batch that holds requests of two index versions (as while a swap runs) answers each
request from its own version: Serve runs a batch on one instance, so the split is rayhash's."""

import asyncio

import numpy as np

from rayhash.serve.versions import fan_out_by_version, version_rows


class Shards:
    def __init__(self, name: str):
        self.name, self.calls = name, []

    async def search(self, codes: list, ks: list[int]) -> list[tuple]:
        self.calls.append(len(codes))
        return [(self.name, c.tolist(), k) for c, k in zip(codes, ks, strict=True)]


class Version:
    def __init__(self, name: str):
        self.shards = Shards(name)


def test_each_request_is_answered_by_its_own_version_in_one_call_per_version():
    a, b = Version("a"), Version("b")
    codes = [np.full((n, 8), i, dtype=np.uint8) for i, n in enumerate([1, 3, 2, 1])]
    work = [(a, codes[0]), (b, codes[1]), (a, codes[2]), (b, codes[3])]
    ks = [10, 5, 7, 1]
    out = asyncio.run(fan_out_by_version(work, ks))
    assert [o[0] for o in out] == ["a", "b", "a", "b"]
    assert [o[1] for o in out] == [c.tolist() for c in codes] and [o[2] for o in out] == ks
    assert a.shards.calls == [2] and b.shards.calls == [2]  # one fan-out per version
    assert version_rows(work) == 7
