"""Plots of real evaluations render to valid PNG files."""

import numpy as np
import pytest
from PIL import Image

from rayhash import plots, storage
from rayhash.baselines import ITQ, LSH
from rayhash.codespec import binary as codes
from rayhash.metrics import evaluate_codes

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


@pytest.fixture(scope="module")
def evaluations():
    rng = np.random.default_rng(0)
    centres = rng.standard_normal((5, 40)) * 3
    labels = rng.integers(0, 5, 600)
    x = centres[labels] + rng.standard_normal((600, 40))
    out = {}
    for model in (LSH(), ITQ()):
        model.fit(x[100:], 16, seed=0)
        packed = codes.pack(model.encode(x))
        out[type(model).__name__] = evaluate_codes(packed[:100], packed[100:], labels[:100], labels[100:], 16, k=200)
    return out


def _check_png(path):
    data = path.read_bytes()
    assert data.startswith(PNG_SIGNATURE)
    assert len(data) > 10_000  # axes, lines and text, not an empty canvas
    with Image.open(path) as image:
        image.verify()
    with Image.open(path) as image:
        assert min(image.size) > 200
        assert len(np.unique(np.asarray(image.convert("L")))) > 10  # something was drawn


def test_pr_curves(evaluations, tmp_path):
    curves = {name: ev["pr_curve"] for name, ev in evaluations.items()}
    curves["nothing at radius 0"] = {"precision": [None, 0.9, 0.8], "recall": [0.0, 0.3, 0.6]}  # a gap
    plots.plot_pr_curves(curves, str(tmp_path / "pr.png"))
    _check_png(tmp_path / "pr.png")


def test_precision_at_n(evaluations, tmp_path):
    curves = {name: ev["precision_at_n"] for name, ev in evaluations.items()}
    plots.plot_precision_at_n(curves, str(tmp_path / "sub" / "pn.png"))
    _check_png(tmp_path / "sub" / "pn.png")


def test_map_table_with_seed_spread(tmp_path):
    rows = [
        {"method": m, "nbits": b, "seed": s, "map": base + 0.02 * b / 16 + 0.01 * s}
        for m, base in (("LSH", 0.45), ("ITQ", 0.6), ("DSCH", 0.7))
        for b in (16, 32, 64)
        for s in range(3)
    ]
    rows.append({"method": "ITQ-features", "nbits": 64, "map": 0.67})  # one run, one bits: no error bar
    plots.plot_map_table(rows, str(tmp_path / "map.png"))
    _check_png(tmp_path / "map.png")


def test_writes_to_s3(evaluations, s3_bucket):
    uri = f"{s3_bucket}/plots/pn.png"
    plots.plot_precision_at_n({n: ev["precision_at_n"] for n, ev in evaluations.items()}, uri)
    data = storage.read_bytes(uri)
    assert data.startswith(PNG_SIGNATURE) and len(data) > 10_000


def test_bad_inputs_say_what_is_wrong(tmp_path):
    with pytest.raises(ValueError, match="non-empty dict"):
        plots.plot_pr_curves({}, str(tmp_path / "x.png"))
    with pytest.raises(ValueError, match="'precision' and 'recall'"):
        plots.plot_pr_curves({"a": {"precision": [1.0]}}, str(tmp_path / "x.png"))
    with pytest.raises(ValueError, match="2 precision values but 1 recall"):
        plots.plot_pr_curves({"a": {"precision": [1.0, 0.5], "recall": [0.1]}}, str(tmp_path / "x.png"))
    with pytest.raises(ValueError, match="sequence of numbers"):
        plots.plot_precision_at_n({"a": ["high"]}, str(tmp_path / "x.png"))
    with pytest.raises(ValueError, match="'method', 'nbits' and 'map'"):
        plots.plot_map_table([{"method": "ITQ", "map": 0.6}], str(tmp_path / "x.png"))
    with pytest.raises(ValueError, match="rows is empty"):
        plots.plot_map_table([], str(tmp_path / "x.png"))
    assert not (tmp_path / "x.png").exists()
