"""PSCH's parts, targets, loss and E-step: against hand computations and explicit loops, gradcheck,
and 2 gloo ranks = one process."""

import math

import pytest
import torch
import torch.nn.functional as F

from rayhash import dist
from rayhash.methods import PSCHConfig, ShardInputs, ViewBatch, build_method, losses
from rayhash.methods.psch import graded_similarity, multipart_similarity, pair_targets, part_descriptors
from rayhash.methods.pseudo_labels import UNLABELLED

CFG = PSCHConfig(clusters=4, alpha=0.5, groups=2, warmup_rounds=0, seed=0)
LN2 = math.log(2.0)


def _features(n=60, d=6, blobs=4, seed=0):
    g = torch.Generator().manual_seed(seed)
    centres = 3 * torch.randn(blobs, d, generator=g)
    return (centres[torch.arange(n) % blobs] + torch.randn(n, d, generator=g)).relu() + 0.01


def _fitted(cfg=CFG):
    method = build_method(cfg, 16)
    stats = method.e_step(ShardInputs(features=_features()), 0)
    return method, stats


def test_part_descriptors_by_hand():
    # Group 0 (channels 0, 1) sums to 0 everywhere: uniform attention. Group 1 (channels 2, 3)
    # sums to (ln 2, 0, 0, ln 4): attention (2, 1, 1, 4) / 8.
    one = torch.tensor(
        [
            [[1.0, 1.0], [1.0, 1.0]],
            [[-1.0, -1.0], [-1.0, -1.0]],
            [[LN2, 0.0], [0.0, 0.0]],
            [[0.0, 0.0], [0.0, 2 * LN2]],
        ]
    )
    # Doubled, group 1's sums give attention (4, 1, 1, 16) / 22.
    parts = part_descriptors(torch.stack([one, 2 * one]), groups=2)
    expected = torch.tensor(
        [
            [[1.0, -1.0], [LN2 / 4, 2 * LN2 / 2]],
            [[2.0, -2.0], [2 * LN2 * 4 / 22, 4 * LN2 * 16 / 22]],
        ]
    )
    torch.testing.assert_close(parts, expected)
    # Group 0's parts point the same way; group 1's are (1, 4) and (1, 8) up to scale.
    s = multipart_similarity(parts)
    torch.testing.assert_close(s[0, 1], torch.tensor((1 + 33 / math.sqrt(17 * 65)) / 2))


def _loop_parts(maps, groups):
    """Part descriptors with the attention's softmax written out position by position."""
    b, c, h, w = maps.shape
    width = c // groups
    out = torch.zeros(b, groups, width, dtype=torch.float64)
    for i in range(b):
        for g in range(groups):
            chans = range(g * width, (g + 1) * width)
            cells = [(y, x) for y in range(h) for x in range(w)]
            score = [sum(float(maps[i, ch, y, x]) for ch in chans) for y, x in cells]
            z = sum(math.exp(v) for v in score)
            for k, ch in enumerate(chans):
                out[i, g, k] = sum(math.exp(v) / z * float(maps[i, ch, y, x]) for v, (y, x) in zip(score, cells))
    return out


def _loop_similarity(parts):
    b, groups = parts.shape[:2]
    s = torch.zeros(b, b, dtype=torch.float64)
    for i in range(b):
        for j in range(b):
            cos = [float(F.cosine_similarity(parts[i, g], parts[j, g], dim=0)) for g in range(groups)]
            s[i, j] = min(max(sum(cos) / groups, 0.0), 1.0)
    return s


def test_part_descriptors_and_similarity_match_explicit_loops():
    g = torch.Generator().manual_seed(0)
    maps = torch.randn(3, 6, 2, 3, generator=g, dtype=torch.float64)
    parts = part_descriptors(maps, groups=3)
    torch.testing.assert_close(parts, _loop_parts(maps, 3))
    parts = torch.randn(5, 3, 4, generator=g, dtype=torch.float64)
    s = multipart_similarity(parts)
    ref = _loop_similarity(parts)
    torch.testing.assert_close(s, ref)
    off = ~torch.eye(5, dtype=torch.bool)
    assert bool((ref[off] == 0).any()) and bool((ref[off] > 0).any())  # the clamp is exercised


def test_a_channel_count_that_does_not_split_into_the_groups_is_refused():
    with pytest.raises(ValueError, match="6 channels do not split into 4 groups"):
        part_descriptors(torch.zeros(2, 6, 2, 2), groups=4)


def test_pair_targets_by_hand():
    items = torch.tensor([7, 8, 9, 3, 4, 7])  # the last row is item 7's other view
    labels = torch.tensor([0, 0, 1, UNLABELLED, UNLABELLED, 0])
    s = torch.arange(36, dtype=torch.float32).view(6, 6) / 100
    same_item, pair, neg, out = "I", "P", "N", "-"
    kind = [
        "IPN--I",
        "PIN--P",
        "NNI--N",
        "---I--",  # unlabelled: only its own item counts, even beside another unlabelled item
        "----I-",
        "IPN--I",
    ]
    for similarity, pair_value in ((s, s), (None, torch.ones(6, 6))):
        targets, mask = pair_targets(labels, items, similarity)
        for i in range(6):
            for j in range(6):
                k = kind[i][j]
                expected = {same_item: 1.0, pair: float(pair_value[i, j]), neg: 0.0, out: 0.0}[k]
                assert float(targets[i, j]) == pytest.approx(expected), (i, j)
                assert bool(mask[i, j]) == (k != out), (i, j)


def _batch(method, n=12, seed=1, positive=False):
    """A batch of shard items with random codes (in (0.2, 0.8) if ``positive``) and post-ReLU maps."""
    g = torch.Generator().manual_seed(seed)
    index = torch.randperm(60, generator=g)[:n]
    labels = method.labels[index]
    if positive:
        h_a, h_b = (0.2 + 0.6 * torch.rand(n, 16, generator=g, dtype=torch.float64) for _ in range(2))
    else:
        h_a, h_b = (torch.randn(n, 16, generator=g, dtype=torch.float64) for _ in range(2))
    maps_a, maps_b = (torch.randn(n, 8, 3, 3, generator=g, dtype=torch.float64).relu() for _ in range(2))
    return ViewBatch(h_a, h_b, index, feature_maps_a=maps_a, feature_maps_b=maps_b), labels


def test_loss_is_its_terms_by_hand():
    cfg = PSCHConfig(
        clusters=4,
        alpha=0.5,
        groups=4,
        target_floor=0.3,
        warmup_rounds=0,
        lambda_pair=0.8,
        lambda_inv=1.4,
        lambda_q=0.05,
        tau=0.4,
    )
    method, _ = _fitted(cfg)
    batch, labels = _batch(method)
    loss, parts = method.loss(batch)
    labelled = labels[labels != UNLABELLED]
    # Every kind of pair: unlabelled rows, same-label pairs of different items, different labels.
    assert bool((labels == UNLABELLED).any()) and 1 < len(labelled.unique()) < len(labelled)

    h = torch.cat([batch.h_a, batch.h_b])
    rows, items = labels.repeat(2), batch.index.repeat(2)
    s = _loop_similarity(_loop_parts(torch.cat([batch.feature_maps_a, batch.feature_maps_b]), 4))
    # Graded against the mean similarity of the pairs with different pseudo labels.
    others = [
        float(s[i, j])
        for i in range(24)
        for j in range(24)
        if UNLABELLED not in (rows[i], rows[j]) and rows[i] != rows[j]
    ]
    base = sum(others) / len(others)
    s = 0.3 + 0.7 * ((s - base) / (1 - base)).clamp(0, 1)
    targets, mask = torch.zeros(24, 24, dtype=torch.float64), torch.zeros(24, 24, dtype=torch.bool)
    for i in range(24):
        for j in range(24):
            if items[i] == items[j]:
                targets[i, j], mask[i, j] = 1.0, True
            elif rows[i] != UNLABELLED and rows[j] != UNLABELLED:
                targets[i, j], mask[i, j] = (s[i, j] if rows[i] == rows[j] else 0.0), True
    pair = float(losses.soft_pair_loss(h, targets, mask))
    logits = F.normalize(batch.h_a, dim=1) @ F.normalize(batch.h_b, dim=1).T / 0.4
    inv = float(0.5 * (F.cross_entropy(logits, torch.arange(12)) + F.cross_entropy(logits.T, torch.arange(12))))
    quant = float(((h.abs() - 1) ** 2).mean())
    assert parts == pytest.approx({"pair": pair, "inv": inv, "quant": quant}, rel=1e-5)
    assert loss.item() == pytest.approx(0.8 * pair + 1.4 * inv + 0.05 * quant, rel=1e-5)


def test_ablation_uses_hard_targets_and_no_feature_maps():
    method, _ = _fitted(PSCHConfig(**{**CFG.__dict__, "ablation": True}))
    batch, labels = _batch(method)
    hard = ViewBatch(batch.h_a, batch.h_b, batch.index)  # the ablation must not need the maps
    loss, parts = method.loss(hard)
    h = torch.cat([batch.h_a, batch.h_b])
    targets, mask = pair_targets(labels.repeat(2), batch.index.repeat(2), None)
    assert set(targets[mask].unique().tolist()) <= {0.0, 1.0}
    assert parts["pair"] == pytest.approx(float(losses.soft_pair_loss(h, targets, mask)), rel=1e-6)
    soft, _ = _fitted()
    assert torch.equal(soft.labels, method.labels)
    assert soft.loss(batch)[1]["pair"] != pytest.approx(parts["pair"], rel=1e-3)  # soft targets differ


def test_warmup_has_no_pair_term():
    method = build_method(PSCHConfig(warmup_rounds=2), 16)
    assert method.e_step(ShardInputs(features=_features()), 1) == {} and method.labels is None
    g = torch.Generator().manual_seed(2)
    h_a, h_b = torch.randn(6, 16, generator=g), torch.randn(6, 16, generator=g)
    loss, parts = method.loss(ViewBatch(h_a, h_b, torch.arange(6)))
    assert set(parts) == {"inv", "quant"}
    ref = losses.ntxent_loss(h_a, h_b, 0.3) + 0.01 * losses.quantization_loss(torch.cat([h_a, h_b]))
    torch.testing.assert_close(loss, ref)
    assert method.partners(g) is None


def test_thresholds_drop_members_and_partners_share_a_cluster():
    method, stats = _fitted()
    dropped = method.labels == UNLABELLED
    assert 0 < int(dropped.sum()) < 60
    assert stats["labelled_share"] == pytest.approx(1 - float(dropped.float().mean()))
    assert torch.equal(method.labels[~dropped], method.assign[~dropped])
    partners = method.partners(torch.Generator().manual_seed(0))
    assert torch.equal(method.assign[partners], method.assign)


def test_state_dict_round_trip(tmp_path):
    method, _ = _fitted()
    torch.save(method.state_dict(), tmp_path / "psch.pt")
    other = build_method(CFG, 16)
    other.load_state_dict(torch.load(tmp_path / "psch.pt", weights_only=True))
    assert torch.equal(other.centers, method.centers) and torch.equal(other.thresholds, method.thresholds.float())
    assert build_method(CFG, 16).state_dict() == {}


def test_method_loss_passes_gradcheck():
    method, _ = _fitted(PSCHConfig(**{**CFG.__dict__, "groups": 4}))
    batch, _ = _batch(method, n=6, positive=True)  # every code similarity strictly inside (0, 1)
    h = torch.cat([batch.h_a, batch.h_b])
    sim = h @ h.T / 16
    assert float(sim.min()) > 0.01 and float(sim.max()) < 0.99
    h_a, h_b = batch.h_a.clone().requires_grad_(), batch.h_b.clone().requires_grad_()

    def fn(a, b):
        maps = {"feature_maps_a": batch.feature_maps_a, "feature_maps_b": batch.feature_maps_b}
        return method.loss(ViewBatch(a, b, batch.index, **maps))[0]

    assert torch.autograd.gradcheck(fn, (h_a, h_b), fast_mode=True)


def _rank_e_step(features: torch.Tensor, cut: int):
    """Each rank holds a slice of the features; returns its labels and the global state."""
    method = build_method(PSCHConfig(**{**CFG.__dict__, "seed": 3}), 16)
    stats = method.e_step(ShardInputs(features=features[:cut] if dist.rank() == 0 else features[cut:]), 0)
    return {
        "labels": method.labels,
        "assign": method.assign,
        "centers": method.centers,
        "thresholds": method.thresholds,
        **stats,
    }


def test_two_gloo_ranks_equal_one_process():
    features = _features()
    single = _rank_e_step(features, len(features))
    ranks = dist.launch_local(_rank_e_step, nprocs=2, args=(features, 23))
    labels = torch.cat([r["labels"] for r in ranks])
    assert torch.equal(labels, single["labels"]) and bool((labels == UNLABELLED).any())
    assert torch.equal(torch.cat([r["assign"] for r in ranks]), single["assign"])
    for r in ranks:
        torch.testing.assert_close(r["centers"], single["centers"], rtol=0, atol=1e-6)
        torch.testing.assert_close(r["thresholds"], single["thresholds"], rtol=0, atol=1e-12)
        for key in ("kmeans_inertia", "labelled_share"):
            assert r[key] == pytest.approx(single[key], rel=1e-9)


def test_graded_similarity_by_hand():
    s = torch.tensor(
        [
            [1.0, 0.9, 0.6, 0.5],
            [0.9, 1.0, 0.8, 0.7],
            [0.6, 0.8, 1.0, 0.95],
            [0.5, 0.7, 0.95, 1.0],
        ]
    )
    labels = torch.tensor([0, 0, 1, UNLABELLED])
    # Pairs of different pseudo labels: (0, 2) and (1, 2), both ways; the unlabelled row is not one.
    base = (0.6 + 0.8) / 2
    g = graded_similarity(s, labels, floor=0.5)
    assert g[0, 1].item() == pytest.approx(0.5 + 0.5 * (0.9 - base) / (1 - base))
    assert g[0, 2].item() == pytest.approx(0.5)  # below the base: the floor
    assert g[1, 2].item() == pytest.approx(0.5 + 0.5 * (0.8 - base) / (1 - base))
    assert g[2, 2].item() == pytest.approx(1.0)
    # With a single pseudo label in the batch, the base is the mean over all pairs of different rows.
    one = graded_similarity(s, torch.zeros(4, dtype=torch.long), floor=0.0)
    base_all = float(s[~torch.eye(4, dtype=torch.bool)].mean())
    assert one[0, 1].item() == pytest.approx((0.9 - base_all) / (1 - base_all))
