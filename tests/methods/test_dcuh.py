"""DCUH's E-step, loss and sampling: against hand computations, gradcheck, and 2 gloo ranks = one process."""

import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn
from torch.func import functional_call

from rayhash import dist
from rayhash.methods import DCUHConfig, ShardInputs, ViewBatch, build_method, losses

CFG = DCUHConfig(clusters=4, warmup_rounds=0, seed=0)


def _shard(sizes=(30, 12, 6, 6), d=6, bits=16, seed=0):
    """Features in blobs of unequal sizes and codes that follow them (tanh outputs)."""
    g = torch.Generator().manual_seed(seed)
    blob = torch.repeat_interleave(torch.arange(len(sizes)), torch.tensor(sizes))
    blob = blob[torch.randperm(len(blob), generator=g)]
    centres = 4 * torch.randn(len(sizes), d, generator=g)
    features = (centres[blob] + torch.randn(len(blob), d, generator=g)).relu()
    signs = torch.where(torch.rand(len(sizes), bits, generator=g) > 0.5, 1.0, -1.0)
    codes = torch.tanh(signs[blob] + 0.5 * torch.randn(len(blob), bits, generator=g))
    return ShardInputs(codes=codes, features=features)


def _fitted(cfg=CFG, inputs=None):
    method = build_method(cfg, 16)
    stats = method.e_step(inputs or _shard(), 0)
    return method, stats


def test_e_step_sets_the_classifier_to_the_clusters_mean_codes():
    inputs = _shard()
    method, stats = _fitted(inputs=inputs)
    labels = method.labels.numpy()
    sizes = np.bincount(labels, minlength=4)
    assert stats["clusters_used"] == 4.0 == float((sizes > 0).sum())
    assert stats["largest_cluster_share"] == pytest.approx(sizes.max() / sizes.sum())
    codes = inputs.codes.numpy()
    means = np.stack([codes[labels == c].mean(0) for c in range(4)])
    np.testing.assert_allclose(method.module.weight.detach().numpy(), means, atol=1e-6)
    assert method.centers.shape == (4, 6)


def test_capped_clusters_leave_zero_rows_in_the_classifier():
    inputs = _shard(sizes=(2, 1))
    method, stats = _fitted(DCUHConfig(clusters=5, warmup_rounds=0), inputs)
    assert sorted(method.labels.tolist()) == [0, 1, 2] and stats["clusters_used"] == 3.0
    weight = method.module.weight.detach()
    assert torch.equal(weight[3:], torch.zeros(2, 16))
    torch.testing.assert_close(weight[method.labels], inputs.codes)


def test_warmup_rounds_skip_the_e_step():
    method = build_method(DCUHConfig(warmup_rounds=2), 16)
    assert method.e_step(_shard(), 1) == {} and method.labels is None
    assert method.sample_order(10, torch.Generator()) is None and method.partners(torch.Generator()) is None


def _hand_ce(h, weight, y, temperature):
    """Cross-entropy of the cosine classifier, with log-softmax written out row by row."""
    total = 0.0
    for i in range(len(h)):
        logits = [float(F.cosine_similarity(h[i], w, dim=0)) / temperature for w in weight]
        total += -(logits[int(y[i])] - math.log(sum(math.exp(v) for v in logits)))
    return total / len(h)


def test_loss_is_its_terms_by_hand():
    cfg = DCUHConfig(
        clusters=4, warmup_rounds=0, lambda_cls=0.7, lambda_inv=1.3, lambda_local=0.4, tau=0.5, cls_temperature=0.2
    )
    method, _ = _fitted(cfg)
    g = torch.Generator().manual_seed(1)
    index = torch.randperm(54, generator=g)[:10]
    h_a, h_b = torch.randn(10, 16, generator=g), torch.randn(10, 16, generator=g)
    loss, parts = method.loss(ViewBatch(h_a, h_b, index))
    y = method.labels[index]
    assert len(y.unique()) < len(y)  # the local term has in-batch positives
    weight = method.module.weight.detach()
    cls = _hand_ce(h_a, weight, y, 0.2) + _hand_ce(h_b, weight, y, 0.2)
    logits = F.normalize(h_a, dim=1) @ F.normalize(h_b, dim=1).T / 0.5
    inv = 0.5 * (F.cross_entropy(logits, torch.arange(10)) + F.cross_entropy(logits.T, torch.arange(10)))
    local = losses.supervised_contrastive_loss(torch.cat([h_a, h_b]), torch.cat([y, y]), 0.5)
    assert set(parts) == {"cls", "inv", "local"}
    assert parts["cls"] == pytest.approx(cls, rel=1e-5)
    assert parts["inv"] == pytest.approx(float(inv), rel=1e-5)
    assert parts["local"] == pytest.approx(float(local), rel=1e-5)
    assert loss.item() == pytest.approx(0.7 * cls + 1.3 * float(inv) + 0.4 * float(local), rel=1e-5)


def test_ablation_is_plain_ntxent_and_never_needs_labels():
    method = build_method(DCUHConfig(ablation=True, warmup_rounds=0, lambda_inv=2.0), 16)
    assert method.e_step(_shard(), 0) == {} and method.labels is None
    g = torch.Generator().manual_seed(2)
    h_a, h_b = torch.randn(8, 16, generator=g), torch.randn(8, 16, generator=g)
    loss, parts = method.loss(ViewBatch(h_a, h_b, torch.arange(1000, 1008)))  # no shard this large
    assert set(parts) == {"inv"}
    torch.testing.assert_close(loss, 2.0 * losses.ntxent_loss(h_a, h_b, 0.3))
    loss.backward()
    # The unused classifier still gets a (zero) gradient, so DDP finds every parameter used.
    assert torch.equal(method.module.weight.grad, torch.zeros(100, 16))
    assert method.sample_order(54, g) is None and method.partners(g) is None


def test_anchors_are_uniform_over_clusters_and_partners_share_their_label():
    method, _ = _fitted()
    sizes = torch.bincount(method.labels, minlength=4)
    assert int(sizes.max()) >= 3 * int(sizes.min()) > 0  # clusters of unequal sizes
    g = torch.Generator().manual_seed(3)
    order = method.sample_order(8000, g)
    per_cluster = torch.bincount(method.labels[order], minlength=4).double()
    assert float((per_cluster / 2000 - 1).abs().max()) < 0.08
    partners = method.partners(g)
    assert torch.equal(method.labels[partners], method.labels)
    assert bool((partners != torch.arange(54)).all())  # every cluster has company here
    uniform_off = build_method(DCUHConfig(clusters=4, warmup_rounds=0, uniform_sampling=False), 16)
    uniform_off.e_step(_shard(), 0)
    assert uniform_off.sample_order(54, g) is None and uniform_off.partners(g) is not None
    partners_off = build_method(DCUHConfig(clusters=4, warmup_rounds=0, partner_sampling=False), 16)
    partners_off.e_step(_shard(), 0)
    assert partners_off.partners(g) is None and partners_off.sample_order(54, g) is not None


def test_state_dict_round_trip(tmp_path):
    method, _ = _fitted()
    torch.save(method.state_dict(), tmp_path / "dcuh.pt")
    other = build_method(CFG, 16)
    other.load_state_dict(torch.load(tmp_path / "dcuh.pt", weights_only=True))
    assert torch.equal(other.centers, method.centers)
    torch.save(build_method(CFG, 16).state_dict(), tmp_path / "empty.pt")
    fresh = build_method(CFG, 16)
    fresh.load_state_dict(torch.load(tmp_path / "empty.pt", weights_only=True))
    assert fresh.centers is None


class _LossOf(nn.Module):
    """The method's loss as a module whose parameter is the classifier's, for functional_call."""

    def __init__(self, method):
        super().__init__()
        self.method, self.cls = method, method.module

    def forward(self, h_a, h_b, index):
        return self.method.loss(ViewBatch(h_a, h_b, index))[0]


def test_method_loss_passes_gradcheck():
    method, _ = _fitted(DCUHConfig(clusters=4, warmup_rounds=0, lambda_local=0.5))
    loss_of = _LossOf(method)
    g = torch.Generator().manual_seed(4)
    index = torch.randperm(54, generator=g)[:6]
    h_a = torch.randn(6, 16, generator=g, dtype=torch.float64, requires_grad=True)
    h_b = torch.randn(6, 16, generator=g, dtype=torch.float64, requires_grad=True)
    weight = method.module.weight.detach().double().requires_grad_()

    def fn(a, b, w):
        return functional_call(loss_of, {"cls.weight": w}, (a, b, index))

    with torch.no_grad():
        assert fn(h_a, h_b, weight) != fn(h_a, h_b, weight.flip(0))  # the weight reaches the loss
    assert torch.autograd.gradcheck(fn, (h_a, h_b, weight), fast_mode=True)


def _rank_e_step(inputs: ShardInputs, cut: int):
    """Each rank holds a slice of the shard; returns its labels and the global state."""
    r = dist.rank()
    part = slice(0, cut) if r == 0 else slice(cut, None)
    method = build_method(DCUHConfig(clusters=4, warmup_rounds=0, pca_dims=4, seed=2), 16)
    # A different random classifier on each rank: the E-step must overwrite all of it.
    method.module.weight.data.normal_(generator=torch.Generator().manual_seed(r + 1))
    stats = method.e_step(ShardInputs(codes=inputs.codes[part], features=inputs.features[part]), 0)
    return {"labels": method.labels, "centers": method.centers, "weight": method.module.weight.detach(), **stats}


def test_two_gloo_ranks_equal_one_process():
    inputs = _shard()
    single = _rank_e_step(inputs, len(inputs))
    ranks = dist.launch_local(_rank_e_step, nprocs=2, args=(inputs, 31))
    assert torch.equal(torch.cat([r["labels"] for r in ranks]), single["labels"])
    for r in ranks:
        torch.testing.assert_close(r["centers"], single["centers"], rtol=0, atol=1e-6)
        torch.testing.assert_close(r["weight"], single["weight"], rtol=0, atol=1e-6)
        for key in ("kmeans_inertia", "clusters_used", "largest_cluster_share"):
            assert r[key] == pytest.approx(single[key], rel=1e-9)
