"""DeepQuan's codebook E-step, losses and embedding width: against numpy Lloyd and nearest-centroid
references, explicit loops, gradcheck, and 2 gloo ranks = one process."""

import logging
import math

import numpy as np
import pytest
import torch
from torch import nn

from rayhash import dist
from rayhash.config import ConfigError, load
from rayhash.methods import DeepQuanConfig, ShardInputs, ViewBatch, build_method, losses
from rayhash.models import ModelConfig, build_model
from rayhash.train.config import TrainConfig
from rayhash.train.loop import TrainStep, with_method_embedding

BITS, D_SUB, INPUT_DIM = 16, 3, 12  # M = 2 sub-spaces of 3 dims: z has 6
CFG = DeepQuanConfig(d_sub=D_SUB, codewords=4, warmup_rounds=0, decoder_hidden=5, kmeans_iters=50, seed=1)


def _method(cfg=CFG):
    return build_method(cfg, BITS, input_dim=INPUT_DIM)


def _z(n=40, seed=0, blobs=4):
    """Embeddings in blobs per sub-space (tanh outputs), so that k-means has structure to find."""
    g = torch.Generator().manual_seed(seed)
    centres = 2 * torch.randn(blobs, 2 * D_SUB, generator=g)
    which = torch.randint(blobs, (n,), generator=g)
    return torch.tanh(centres[which] + 0.3 * torch.randn(n, 2 * D_SUB, generator=g))


def _nearest_np(z: np.ndarray, books: np.ndarray) -> np.ndarray:
    """Per sub-space, the index of the nearest codeword by brute force."""
    m, _, d = books.shape
    parts = z.reshape(len(z), m, d)
    return np.stack([((parts[:, j, None, :] - books[j][None]) ** 2).sum(-1).argmin(1) for j in range(m)], axis=1)


def _lloyd_np(x: np.ndarray, init: np.ndarray, n_iter: int, tol: float = 1e-4) -> np.ndarray:
    """Plain Lloyd from ``init``, stopping as rayhash.clustering.kmeans does (relative centre shift)."""
    threshold = tol * x.var(axis=0).mean()
    centers = init.copy()
    for _ in range(n_iter):
        labels = ((x[:, None, :] - centers[None]) ** 2).sum(-1).argmin(1)
        new = np.stack([x[labels == c].mean(0) for c in range(len(centers))])
        shift = ((new - centers) ** 2).sum()
        centers = new
        if shift <= threshold:
            break
    return centers


# --- embedding width and config -----------------------------------------------------------------


def test_the_embedding_is_m_sub_spaces_of_d_sub_and_binary_methods_keep_bits():
    for bits, m in ((16, 2), (32, 4), (64, 8)):
        cfg = load(TrainConfig, None, [f"--model.bits={bits}", "--method.name=deepquan", "--method.d_sub=16"])
        resolved = with_method_embedding(cfg)
        assert resolved.model.embed_dim == m * 16
        assert build_model(resolved.model).head.out_features == m * 16
    # d_sub = 8 gives exactly bits dims: nothing to set.
    cfg = load(TrainConfig, None, ["--model.bits=32", "--method.name=deepquan", "--method.d_sub=8"])
    assert with_method_embedding(cfg) is cfg
    for name in ("dsch", "dcuh", "psch"):
        binary = load(TrainConfig, None, ["--model.bits=32", f"--method.name={name}"])
        assert with_method_embedding(binary) is binary and build_model(binary.model).head.out_features == 32
    with pytest.raises(ValueError, match=r"model.embed_dim=20 but method 'deepquan' trains an embedding of 32"):
        with_method_embedding(
            load(TrainConfig, None, ["--method.name=deepquan", "--model.bits=32", "--model.embed_dim=20"])
        )
    with pytest.raises(ValueError, match=r"model.embed_dim=20 but method 'dsch' trains an embedding of 64"):
        with_method_embedding(load(TrainConfig, None, ["--model.embed_dim=20"]))


def test_config_refuses_codes_wider_than_a_byte():
    with pytest.raises(ConfigError, match="between 1 and 256"):
        load(TrainConfig, None, ["--method.name=deepquan", "--method.codewords=257"])
    with pytest.raises(ValueError, match="input_dim must be >= 1"):
        build_method(CFG, BITS)


# --- E-step -------------------------------------------------------------------------------------


def test_e_step_codes_are_the_nearest_codewords_and_codebooks_are_lloyd_from_the_last_round():
    z = _z()
    method = _method()
    stats = method.e_step(ShardInputs(codes=z), 0)
    books = method.codebooks.numpy()
    assert method.codebooks.dtype == torch.float32 and books.shape == (2, 4, D_SUB)
    np.testing.assert_array_equal(method.codes.numpy(), _nearest_np(z.numpy(), books))
    recon = np.concatenate([books[j][method.codes[:, j].numpy()] for j in range(2)], axis=1)
    assert stats["pq_distortion"] == pytest.approx(float(((z.numpy() - recon) ** 2).sum(1).mean()), rel=1e-5)
    assert stats["codewords_used_min"] == 4.0 == stats["codewords_used_mean"]

    # The next round starts from these codebooks: numpy Lloyd from them, per sub-space, on moved z.
    z2 = 0.8 * z + 0.1 * torch.randn(z.shape, generator=torch.Generator().manual_seed(5))
    method.e_step(ShardInputs(codes=z2), 1)
    x2 = z2.double().numpy()
    for j in range(2):
        want = _lloyd_np(x2[:, j * D_SUB : (j + 1) * D_SUB], books[j].astype(np.float64), 50)
        np.testing.assert_allclose(method.codebooks[j].numpy(), want, atol=1e-5)
    np.testing.assert_array_equal(method.codes.numpy(), _nearest_np(x2, method.codebooks.double().numpy()))


def test_warmup_rounds_fit_no_codebooks():
    method = _method(DeepQuanConfig(d_sub=D_SUB, codewords=4, warmup_rounds=2, decoder_hidden=5))
    assert method.e_step(ShardInputs(codes=_z()), 1) == {} and method.codebooks is None
    assert method.state_dict() == {}
    assert method.e_step(ShardInputs(codes=_z()), 2) != {} and method.codebooks is not None


def test_fewer_items_than_codewords_cap_k_with_a_warning(caplog):
    z = _z(n=6)
    method = _method(DeepQuanConfig(d_sub=D_SUB, codewords=256, warmup_rounds=0, decoder_hidden=5))
    with caplog.at_level(logging.WARNING):
        stats = method.e_step(ShardInputs(codes=z), 0)
    assert "only 6 training items: using 6 codewords per sub-space instead of 256" in caplog.text
    assert method.codebooks.shape == (2, 6, D_SUB)
    assert stats["pq_distortion"] == pytest.approx(0.0, abs=1e-10)  # every item its own codeword


def _rank_e_steps(z: torch.Tensor, cut: int) -> dict:
    """Each rank holds a slice of z; two rounds (k-means++, then warm); returns its codes and the codebooks."""
    part = slice(0, cut) if dist.rank() == 0 else slice(cut, None)
    method = _method(DeepQuanConfig(**{**CFG.__dict__, "kmeans_iters": 8}))
    first = method.e_step(ShardInputs(codes=z[part]), 0)
    books0 = method.codebooks.clone()
    second = method.e_step(ShardInputs(codes=z[part] * 0.9), 1)
    return {"codes": method.codes, "books0": books0, "books": method.codebooks, "first": first, "second": second}


def test_two_gloo_ranks_equal_one_process():
    z = _z(n=50)
    single = _rank_e_steps(z, len(z))
    ranks = dist.launch_local(_rank_e_steps, nprocs=2, args=(z, 21))
    assert torch.equal(torch.cat([r["codes"] for r in ranks]), single["codes"])
    for r in ranks:
        for key in ("books0", "books"):
            torch.testing.assert_close(r[key], single[key], rtol=0, atol=1e-6)
        for round_stats in ("first", "second"):
            for key, value in single[round_stats].items():
                assert r[round_stats][key] == pytest.approx(value, rel=1e-9)


def test_state_dict_round_trip(tmp_path):
    method = _method()
    method.e_step(ShardInputs(codes=_z()), 0)
    torch.save(method.state_dict(), tmp_path / "deepquan.pt")
    other = _method()
    other.load_state_dict(torch.load(tmp_path / "deepquan.pt", weights_only=True))
    assert torch.equal(other.codebooks, method.codebooks) and other.codebooks.dtype == torch.float32
    # A resumed run warm-starts from the loaded codebooks: its next E-step equals the original's.
    z2 = 0.8 * _z() + 0.1
    method.e_step(ShardInputs(codes=z2), 1)
    other.e_step(ShardInputs(codes=z2), 1)
    assert torch.equal(other.codebooks, method.codebooks) and torch.equal(other.codes, method.codes)


# --- losses -------------------------------------------------------------------------------------


def _hand_quantization(z: torch.Tensor, books: torch.Tensor) -> float:
    """Mean over items of the squared distance to the nearest codeword, sub-space by sub-space."""
    m, k, d = books.shape
    total = 0.0
    for row in z.tolist():
        for j in range(m):
            part = row[j * d : (j + 1) * d]
            total += min(sum((a - b) ** 2 for a, b in zip(part, books[j, c].tolist(), strict=True)) for c in range(k))
    return total / len(z)


def _hand_triplet(a, p, n, w, margin) -> float:
    hinge = [
        max(0.0, margin + float(((a[i] - p[i]) ** 2).sum()) - float(((a[i] - n[i]) ** 2).sum())) for i in range(len(a))
    ]
    return sum(wi * h for wi, h in zip(w.tolist(), hinge, strict=True)) / float(w.sum())


def test_losses_against_explicit_loops():
    g = torch.Generator().manual_seed(2)
    x, x_hat = torch.randn(5, 7, generator=g), torch.randn(5, 7, generator=g)
    hand = sum((x[i, j] - x_hat[i, j]) ** 2 for i in range(5) for j in range(7)) / (5 * 7)
    assert losses.reconstruction_loss(x, x_hat).item() == pytest.approx(float(hand), rel=1e-6)

    xa, xp, xn = (torch.randn(5, 7, generator=g) for _ in range(3))
    s = [math.exp(-float(((xa[i] - xp[i]) ** 2).sum()) / (7 * 1.5**2)) for i in range(5)]
    t = [math.exp(-float(((xa[i] - xn[i]) ** 2).sum()) / (7 * 1.5**2)) for i in range(5)]
    w = losses.triplet_weights(xa, xp, xn, 1.5)
    np.testing.assert_allclose(w.numpy(), [si * (1 - ti) for si, ti in zip(s, t, strict=True)], rtol=1e-6)

    a, p, n = (torch.randn(6, 4, generator=g) for _ in range(3))
    w6 = torch.rand(6, generator=g)
    for margin in (0.0, 2.0, 8.0):  # none, some and all triplets active
        got = losses.weighted_triplet_loss(a, p, n, w6, margin).item()
        assert got == pytest.approx(_hand_triplet(a, p, n, w6, margin), rel=1e-6, abs=1e-7)

    z, books = torch.randn(9, 6, generator=g), torch.randn(2, 5, 3, generator=g)
    assert losses.pq_quantization_loss(z, books).item() == pytest.approx(_hand_quantization(z, books), rel=1e-6)
    np.testing.assert_array_equal(losses.nearest_codewords(z, books).numpy(), _nearest_np(z.numpy(), books.numpy()))


def test_losses_pass_gradcheck():
    g = torch.Generator().manual_seed(3)

    def leaf(*shape):
        return torch.randn(*shape, generator=g, dtype=torch.float64, requires_grad=True)

    x = torch.randn(4, 7, generator=g, dtype=torch.float64)
    assert torch.autograd.gradcheck(lambda xh: losses.reconstruction_loss(x, xh), (leaf(4, 7),))
    w = torch.rand(6, generator=g, dtype=torch.float64)
    a, p, n = leaf(6, 4), leaf(6, 4), leaf(6, 4)
    assert 0 < losses.weighted_triplet_loss(a, p, n, w, 3.0).item()
    assert torch.autograd.gradcheck(lambda a, p, n: losses.weighted_triplet_loss(a, p, n, w, 3.0), (a, p, n))
    books = torch.randn(2, 5, 3, generator=g, dtype=torch.float64)
    assert torch.autograd.gradcheck(lambda z: losses.pq_quantization_loss(z, books), (leaf(9, 6),))


def _views(n=8, seed=4, dtype=torch.float32):
    g = torch.Generator().manual_seed(seed)
    x_a = torch.randn(n, 1, 3, 4, generator=g, dtype=dtype)  # flattens to INPUT_DIM
    x_b = x_a + 0.3 * torch.randn(n, 1, 3, 4, generator=g, dtype=dtype)
    h_a = torch.tanh(torch.randn(n, 2 * D_SUB, generator=g, dtype=dtype))
    h_b = torch.tanh(h_a + 0.2 * torch.randn(n, 2 * D_SUB, generator=g, dtype=dtype))
    return ViewBatch(h_a, h_b, torch.arange(n), inputs_a=x_a, inputs_b=x_b)


def _expected_loss(method, batch, seed):
    """The loss from its terms, with the negatives drawn as the method draws them."""
    cfg = method.cfg
    n = len(batch.h_a)
    z = torch.cat([batch.h_a, batch.h_b])
    xa, xb = batch.inputs_a.flatten(1), batch.inputs_b.flatten(1)
    x = torch.cat([xa, xb])
    with torch.no_grad():
        parts = {"rec": losses.reconstruction_loss(x, method.module(z)).item()}
        torch.manual_seed(seed)
        neg = (torch.arange(n) + torch.randint(1, n, (n,))) % n
        assert bool((neg != torch.arange(n)).all())
        if not cfg.ablation:
            p, ng = torch.cat([batch.h_b, batch.h_a]), torch.cat([batch.h_b[neg], batch.h_a[neg]])
            w = (
                torch.ones(2 * n)
                if cfg.unweighted_triplets
                else losses.triplet_weights(x, torch.cat([xb, xa]), torch.cat([xb[neg], xa[neg]]), cfg.sigma)
            )
            parts["triplet"] = _hand_triplet(z, p, ng, w, cfg.margin)
        if method.codebooks is not None:
            parts["quant"] = _hand_quantization(z, method.codebooks)
    total = parts["rec"] + cfg.alpha * parts.get("triplet", 0.0) + cfg.beta * parts.get("quant", 0.0)
    return total, parts


@pytest.mark.parametrize(
    "options, terms",
    [
        ({}, {"rec", "triplet", "quant"}),
        ({"unweighted_triplets": True}, {"rec", "triplet", "quant"}),
        ({"ablation": True}, {"rec", "quant"}),
    ],
)
def test_method_loss_is_its_terms_and_the_ablations_switch_them(options, terms):
    cfg = DeepQuanConfig(**{**CFG.__dict__, "alpha": 0.7, "beta": 1.3, "margin": 2.0, "sigma": 0.8, **options})
    method = _method(cfg)
    method.e_step(ShardInputs(codes=_z()), 0)
    batch = _views()
    torch.manual_seed(11)
    loss, parts = method.loss(batch)
    total, want = _expected_loss(method, batch, 11)
    assert set(parts) == terms == set(want)
    for key in terms:
        assert parts[key] == pytest.approx(want[key], rel=1e-5), key
    assert loss.item() == pytest.approx(total, rel=1e-5)


def test_weighting_changes_the_triplet_term():
    batch = _views()
    weighted, unweighted = _method(), _method(DeepQuanConfig(**{**CFG.__dict__, "unweighted_triplets": True}))
    torch.manual_seed(12)
    w_parts = weighted.loss(batch)[1]
    torch.manual_seed(12)
    u_parts = unweighted.loss(batch)[1]
    assert w_parts["triplet"] != pytest.approx(u_parts["triplet"], rel=1e-3)


def test_before_the_first_codebooks_there_is_no_quantisation_term():
    method = _method(DeepQuanConfig(**{**CFG.__dict__, "warmup_rounds": 1}))
    method.e_step(ShardInputs(codes=_z()), 0)
    assert set(method.loss(_views())[1]) == {"rec", "triplet"}


def test_method_loss_passes_gradcheck_through_the_decoder():
    method = _method()
    method.e_step(ShardInputs(codes=_z()), 0)
    method.module.double()
    method.codebooks = method.codebooks.double()
    batch = _views(dtype=torch.float64)
    h_a, h_b = batch.h_a.clone().requires_grad_(), batch.h_b.clone().requires_grad_()

    def fn(a, b):
        torch.manual_seed(13)  # the same negatives on every evaluation
        return method.loss(ViewBatch(a, b, batch.index, inputs_a=batch.inputs_a, inputs_b=batch.inputs_b))[0]

    assert torch.autograd.gradcheck(fn, (h_a, h_b))
    fn(h_a, h_b).backward()
    assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in method.module.parameters())


def test_the_train_step_hands_the_views_as_inputs():
    torch.manual_seed(0)
    model = build_model(ModelConfig(backbone="mlp", bits=BITS, embed_dim=2 * D_SUB)).eval()
    method = build_method(CFG, BITS, model.feature_dim, input_dim=784)
    method.e_step(ShardInputs(codes=_z()), 0)
    step = TrainStep(model, method)
    assert isinstance(step.method_module, nn.Sequential)
    views = torch.randn(12, 1, 28, 28)
    torch.manual_seed(14)
    loss, parts = step(views, torch.arange(6))
    h = model(views)
    torch.manual_seed(14)
    want, want_parts = method.loss(ViewBatch(h[:6], h[6:], torch.arange(6), inputs_a=views[:6], inputs_b=views[6:]))
    assert loss.item() == pytest.approx(want.item(), rel=1e-6) and parts == pytest.approx(want_parts, rel=1e-6)
