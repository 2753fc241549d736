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
