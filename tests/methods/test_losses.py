import math

import torch
import torch.nn.functional as F

from rayhash.methods import losses


def _hand_ntxent(h_a, h_b, tau):
    """Cross-view NT-Xent written out term by term (the DSCH.md form with S = I)."""
    n = len(h_a)
    za, zb = F.normalize(h_a, dim=1), F.normalize(h_b, dim=1)
    total = 0.0
    for x, y in ((za, zb), (zb, za)):
        for i in range(n):
            num = math.exp(float(x[i] @ y[i]) / tau)
            den = sum(math.exp(float(x[i] @ y[j]) / tau) for j in range(n))
            total += -math.log(num / den)
    return total / (2 * n)


def test_identity_weights_give_ntxent_exactly():
    g = torch.Generator().manual_seed(0)
    h_a, h_b = torch.randn(6, 16, generator=g).tanh(), torch.randn(6, 16, generator=g).tanh()
    got = losses.instance_correlation_loss(h_a, h_b, torch.eye(6), tau=0.3)
    assert abs(float(got) - _hand_ntxent(h_a, h_b, 0.3)) < 1e-5
    # and it is what cross_entropy with the diagonal as targets gives
    logits = F.normalize(h_a, dim=1) @ F.normalize(h_b, dim=1).T / 0.3
    ref = 0.5 * (F.cross_entropy(logits, torch.arange(6)) + F.cross_entropy(logits.T, torch.arange(6)))
    assert torch.allclose(got, ref, atol=1e-6)


def test_cooccurrence_weights_by_hand():
    p = torch.tensor([[1.0, 0.0], [1.0, 0.0], [0.0, 1.0]])
    w = losses.cooccurrence_weights(p)
    expected = torch.tensor([[0.5, 0.5, 0.0], [0.5, 0.5, 0.0], [0.0, 0.0, 1.0]])
    assert torch.allclose(w, expected, atol=1e-6)
    assert torch.allclose(losses.cooccurrence_weights(torch.eye(4)), torch.eye(4), atol=1e-6)


def test_weighted_positives_by_hand():
    g = torch.Generator().manual_seed(1)
    h_a, h_b = torch.randn(3, 8, generator=g), torch.randn(3, 8, generator=g)
    w = torch.tensor([[0.5, 0.5, 0.0], [0.5, 0.5, 0.0], [0.0, 0.0, 1.0]])
    za, zb = F.normalize(h_a, dim=1), F.normalize(h_b, dim=1)
    expected = 0.0
    for x, y, ww in ((za, zb, w), (zb, za, w.T)):
        for i in range(3):
            logz = math.log(sum(math.exp(float(x[i] @ y[j]) / 0.5) for j in range(3)))
            expected += -sum(float(ww[i, j]) * (float(x[i] @ y[j]) / 0.5 - logz) for j in range(3))
    got = losses.instance_correlation_loss(h_a, h_b, w, tau=0.5)
    assert abs(float(got) - expected / 6) < 1e-5


def test_component_loss_by_hand():
    h = torch.tensor([[1.0, -1.0, 0.5], [-0.2, 0.3, 0.9]])
    mu = torch.tensor([[1.0, -1.0, 1.0], [-1.0, 1.0, 1.0]])
    pi = torch.tensor([0.25, 0.75])
    p = torch.tensor([[1.0, 0.0], [0.3, 0.7]])
    tau = 0.7
    expected = 0.0
    for i in range(2):
        cos = [float(F.cosine_similarity(h[i], mu[k], dim=0)) for k in range(2)]
        den = sum(float(pi[k]) * math.exp(cos[k] / tau) for k in range(2))
        expected += -sum(float(p[i, k]) * math.log(float(pi[k]) * math.exp(cos[k] / tau) / den) for k in range(2))
    got = losses.component_loss(h, mu, pi.log(), p, tau)
    assert abs(float(got) - expected / 2) < 1e-5


def test_component_loss_pulls_codes_to_their_centres():
    mu = torch.tensor([[1.0, 1.0, -1.0, -1.0], [-1.0, -1.0, 1.0, 1.0]])
    p = torch.tensor([[1.0, 0.0]])
    near, far = torch.tensor([[0.9, 0.8, -0.9, -0.7]]), torch.tensor([[-0.9, -0.8, 0.9, 0.7]])
    prior = torch.tensor([0.5, 0.5]).log()
    assert losses.component_loss(near, mu, prior, p, 0.5) < losses.component_loss(far, mu, prior, p, 0.5)


def test_quantization_loss_zero_at_corners():
    assert float(losses.quantization_loss(torch.tensor([[1.0, -1.0]]))) == 0.0
    assert float(losses.quantization_loss(torch.tensor([[0.0, 0.0]]))) == 1.0


def _supcon_reference(h, labels, tau):
    """Khosla et al.'s L_out written out anchor by anchor; anchors without a positive left out."""
    z = F.normalize(h, dim=1)
    n, total, anchors = len(z), 0.0, 0
    for i in range(n):
        positives = [p for p in range(n) if p != i and int(labels[p]) == int(labels[i])]
        if not positives:
            continue
        den = sum(math.exp(float(z[i] @ z[a]) / tau) for a in range(n) if a != i)
        total += -sum(math.log(math.exp(float(z[i] @ z[p]) / tau) / den) for p in positives) / len(positives)
        anchors += 1
    return total / anchors


def test_supervised_contrastive_loss_by_hand():
    g = torch.Generator().manual_seed(2)
    h = torch.randn(7, 8, generator=g, dtype=torch.float64)
    labels = torch.tensor([0, 0, 1, 2, 1, 1, 3])  # anchors 3 and 6 have no positive
    for tau in (0.3, 1.0):
        got = losses.supervised_contrastive_loss(h, labels, tau)
        assert abs(float(got) - _supcon_reference(h, labels, tau)) < 1e-10
    # Two views of distinct images: each anchor's one positive is its other view, as in NT-Xent,
    # but contrasted against its own view's batch as well.
    h_a, h_b = h[:3], h[3:6]
    got = losses.supervised_contrastive_loss(torch.cat([h_a, h_b]), torch.arange(3).repeat(2), 0.5)
    assert abs(float(got) - _supcon_reference(torch.cat([h_a, h_b]), torch.arange(3).repeat(2), 0.5)) < 1e-10


def test_supervised_contrastive_loss_without_positives_is_zero_with_a_gradient():
    h = torch.randn(4, 6, dtype=torch.float64, requires_grad=True)
    loss = losses.supervised_contrastive_loss(h, torch.arange(4), 0.3)
    loss.backward()
    assert loss.item() == 0.0 and torch.equal(h.grad, torch.zeros_like(h))


def _soft_pair_reference(h, targets, mask):
    """Squared error of the clamped code similarity, averaged over positive and negative pairs apart."""
    k, parts = h.shape[1], {True: [], False: []}
    for i in range(len(h)):
        for j in range(len(h)):
            if i != j and bool(mask[i, j]):
                s = min(max(float(h[i] @ h[j]) / k, 0.0), 1.0)
                parts[float(targets[i, j]) > 0].append((s - float(targets[i, j])) ** 2)
    return sum(sum(errs) / len(errs) for errs in parts.values() if errs)


def test_soft_pair_loss_by_hand():
    g = torch.Generator().manual_seed(3)
    h = 1.5 * torch.randn(6, 4, generator=g, dtype=torch.float64)
    h[1] = 2.0 * h[0]
    sim = h @ h.T / 4
    off = ~torch.eye(6, dtype=torch.bool)
    assert bool((sim[off] > 1).any()) and bool((sim[off] < 0).any())  # both clamps are exercised
    targets = torch.rand(6, 6, generator=g, dtype=torch.float64) * (torch.rand(6, 6, generator=g) > 0.4)
    mask = torch.rand(6, 6, generator=g) > 0.3
    got = losses.soft_pair_loss(h, targets, mask)
    assert abs(float(got) - _soft_pair_reference(h, targets, mask)) < 1e-12
    # Only the diagonal kept: no pair counts, the loss is 0 (with a gradient).
    assert float(losses.soft_pair_loss(h, targets, torch.eye(6, dtype=torch.bool))) == 0.0


def test_ntxent_loss_is_the_cross_view_contrast():
    g = torch.Generator().manual_seed(4)
    h_a, h_b = torch.randn(5, 8, generator=g), torch.randn(5, 8, generator=g)
    assert abs(float(losses.ntxent_loss(h_a, h_b, 0.4)) - _hand_ntxent(h_a, h_b, 0.4)) < 1e-5


def test_new_losses_pass_gradcheck():
    g = torch.Generator().manual_seed(5)

    def leaf(*shape, low=None, high=None):
        x = torch.randn(*shape, generator=g, dtype=torch.float64)
        if low is not None:
            x = low + (high - low) * torch.rand(*shape, generator=g, dtype=torch.float64)
        return x.requires_grad_()

    h_a, h_b = leaf(5, 6), leaf(5, 6)
    assert torch.autograd.gradcheck(lambda a, b: losses.ntxent_loss(a, b, 0.3), (h_a, h_b))

    labels = torch.tensor([0, 1, 0, 2, 1, 0, 3])
    assert torch.autograd.gradcheck(lambda h: losses.supervised_contrastive_loss(h, labels, 0.5), (leaf(7, 6),))

    # Away from the clamps' kinks: every code similarity strictly inside (0, 1).
    h = leaf(6, 4, low=0.2, high=0.9)
    sim = (h @ h.T / 4).detach()
    assert float(sim.min()) > 0.01 and float(sim.max()) < 0.99
    targets = torch.rand(6, 6, generator=g, dtype=torch.float64) * (torch.rand(6, 6, generator=g) > 0.4)
    mask = torch.rand(6, 6, generator=g) > 0.2
    assert torch.autograd.gradcheck(lambda x: losses.soft_pair_loss(x, targets, mask), (h,))
