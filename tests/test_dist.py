import pytest
import torch

from rayhash import dist


def test_identity_without_process_group():
    assert not dist.is_distributed()
    assert (dist.world_size(), dist.rank()) == (1, 0)
    dist.barrier()
    t = torch.arange(6.0).view(3, 2)
    for out in (dist.all_reduce_sum(t), dist.broadcast(t, src=0), dist.all_gather_cat(t)):
        assert torch.equal(out, t)
        out += 1  # a copy: the caller's tensor must not change
    assert torch.equal(t, torch.arange(6.0).view(3, 2))
    with pytest.raises(ValueError, match="scalar"):
        dist.all_gather_cat(torch.tensor(1.0))
    assert dist.all_gather_object("node-a") == ["node-a"]


def _collectives(rows_per_rank):
    r = dist.rank()
    rows = rows_per_rank[r]
    start = sum(rows_per_rank[:r])
    mine = torch.arange(start * 3, (start + rows) * 3, dtype=torch.float32).view(rows, 3)
    summed_in = torch.tensor([r + 1.0, 10.0 * (r + 1)])
    summed = dist.all_reduce_sum(summed_in)
    try:
        dist.all_gather_cat(torch.zeros(2, 3 + r))
        mismatch = ""
    except ValueError as e:
        mismatch = str(e)
    return {
        "world_size": dist.world_size(),
        "gathered": dist.all_gather_cat(mine),
        "gathered_ids": dist.all_gather_cat(torch.arange(start, start + rows)),
        "empty": dist.all_gather_cat(torch.zeros(0, 4)),
        "summed": summed,
        "summed_in": summed_in,
        "broadcast": dist.broadcast(torch.full((2,), float(r)), src=1),
        "mismatch": mismatch,
        "objects": dist.all_gather_object(f"node-{r}"),
    }


def test_collectives_on_two_gloo_ranks():
    rows_per_rank = [3, 5]
    results = dist.launch_local(_collectives, 2, args=(rows_per_rank,))
    expected = torch.arange(8 * 3, dtype=torch.float32).view(8, 3)
    for r, out in enumerate(results):
        assert out["world_size"] == 2
        assert torch.equal(out["gathered"], expected)
        assert torch.equal(out["gathered_ids"], torch.arange(8))
        assert out["empty"].shape == (0, 4)
        assert torch.equal(out["summed"], torch.tensor([3.0, 30.0]))
        assert torch.equal(out["summed_in"], torch.tensor([r + 1.0, 10.0 * (r + 1)]))
        assert torch.equal(out["broadcast"], torch.ones(2))
        assert "equal trailing sizes" in out["mismatch"]
        assert out["objects"] == ["node-0", "node-1"]
