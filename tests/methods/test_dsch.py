"""DSCH's E-step and loss, in one process and across 2 gloo ranks (which must agree)."""

import torch

from rayhash import dist
from rayhash.methods import DSCHConfig, ShardInputs, ViewBatch, build_method, losses
from rayhash.train.loop import _batches

CFG = DSCHConfig(fine_components=12, coarse_components=3, covariance_type="diag", warmup_rounds=0, seed=0)


def _blob_codes(n=240, bits=16, seed=0):
    """Codes from 6 well-separated binary centres plus noise, squashed like tanh outputs."""
    g = torch.Generator().manual_seed(seed)
    centres = torch.where(torch.rand(6, bits, generator=g) > 0.5, 1.0, -1.0)
    labels = torch.arange(n) % 6
    return torch.tanh(2 * centres[labels] + 0.5 * torch.randn(n, bits, generator=g)), labels


def test_e_step_finds_components_and_loss_has_all_terms():
    codes, labels = _blob_codes()
    method = build_method(CFG, 16)
    stats = method.e_step(ShardInputs(codes=codes), round_index=0)
    assert stats["fine_components"] == 12
    assert method.fine_resp.shape == (240, 12)
    assert torch.allclose(method.fine_resp.norm(dim=1), torch.ones(240), atol=1e-5)  # rows L2-normalised
    assert set(method.fine_centers.unique().tolist()) <= {-1.0, 1.0}
    assert method.coarse_centers.shape == (3, 16) and method.coarse_assign.shape == (12,)
    # items of one blob co-occur far more than items of different blobs
    s = method.fine_resp @ method.fine_resp.T
    same = labels[:, None] == labels[None, :]
    assert s[same].mean() > 5 * s[~same].mean()
    idx = torch.arange(32)
    loss, parts = method.loss(ViewBatch(codes[idx], codes[idx].flip(1), idx))
    assert set(parts) == {"ic", "fine", "coarse"} and torch.isfinite(loss)
    assert abs(float(loss) - (parts["ic"] + 0.1 * (parts["fine"] + parts["coarse"]))) < 1e-4


def test_ablation_is_plain_ntxent():
    codes, _ = _blob_codes()
    method = build_method(DSCHConfig(ablation=True), 16)
    assert method.e_step(ShardInputs(codes=codes), 0) == {}
    h_a, h_b, idx = codes[:20], codes[20:40], torch.arange(20)
    loss, parts = method.loss(ViewBatch(h_a, h_b, idx))
    assert torch.allclose(loss, losses.instance_correlation_loss(h_a, h_b, torch.eye(20), 0.3))
    assert set(parts) == {"ic"}


def test_warmup_rounds_skip_the_e_step():
    method = build_method(DSCHConfig(warmup_rounds=2), 16)
    assert method.e_step(ShardInputs(codes=_blob_codes()[0]), 1) == {} and method.fine_resp is None


def test_state_dict_round_trip(tmp_path):
    method = build_method(CFG, 16)
    method.e_step(ShardInputs(codes=_blob_codes()[0]), 0)
    torch.save(method.state_dict(), tmp_path / "em.pt")
    other = build_method(CFG, 16)
    other.load_state_dict(torch.load(tmp_path / "em.pt", weights_only=True))
    assert torch.equal(other.coarse_centers, method.coarse_centers)
    assert torch.allclose(other.gmm_state.means, method.gmm_state.means)


def _rank_e_step(codes: torch.Tensor, cut: int):
    """Each rank holds a slice of the codes; returns its responsibilities and the global components."""
    shard = codes[:cut] if dist.rank() == 0 else codes[cut:]
    method = build_method(CFG, 16)
    method.e_step(ShardInputs(codes=shard), 0)
    return {
        "resp": method.fine_resp,
        "centers": method.fine_centers,
        "prior": method.fine_log_prior,
        "coarse": method.coarse_centers,
        "means": method.gmm_state.means,
    }


def test_two_gloo_ranks_equal_one_process():
    codes, _ = _blob_codes()
    cut = 130  # unequal shards
    single = _rank_e_step(codes, len(codes))  # rank 0 of a one-process "cluster" holds everything
    ranks = dist.launch_local(_rank_e_step, nprocs=2, args=(codes, cut))
    assert torch.allclose(torch.cat([ranks[0]["resp"], ranks[1]["resp"]]), single["resp"], atol=1e-5)
    for r in ranks:
        assert torch.allclose(r["means"], single["means"], atol=1e-5)
        assert torch.equal(r["centers"], single["centers"])
        assert torch.allclose(r["prior"], single["prior"], atol=1e-5)
        assert torch.equal(r["coarse"], single["coarse"])


def test_partner_batches_put_co_members_together():
    codes, labels = _blob_codes()
    method = build_method(CFG, 16)
    assert method.partners(torch.Generator()) is None  # no components yet: plain shuffled batches
    method.e_step(ShardInputs(codes=codes), 0)
    g = torch.Generator().manual_seed(1)
    batches = torch.tensor(_batches(240, 16, 15, method.partners(g), g))
    assert batches.shape == (15, 16)
    anchors, partners = batches[:, :8], batches[:, 8:]
    assert len(anchors.unique()) == 120  # anchors drawn without replacement
    assign = method.fine_resp.argmax(dim=1)
    assert bool((assign[anchors] == assign[partners]).all())
    assert float((labels[anchors] == labels[partners]).float().mean()) > 0.9  # blobs' components are pure
    off = build_method(DSCHConfig(**{**CFG.__dict__, "partner_sampling": False}), 16)
    off.e_step(ShardInputs(codes=codes), 0)
    assert off.partners(g) is None
    plain = torch.tensor(_batches(240, 16, 15, None, g))
    assert len(plain.flatten().unique()) == 240
