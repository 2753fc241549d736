"""The README's main job end to end (train -> evaluate -> encode -> index -> serve -> query), shortened.

The same ``rayhash.quickstart.run`` that ``bash scripts/main.sh`` calls, on the shipped config with
2 rounds (one warm-up, one with the E-step), on the whole 70,000-image lake, against the
session's local Ray cluster.
"""

import io

import numpy as np
import pytest
from PIL import Image

from rayhash.config import ConfigError, load
from rayhash.encode import codeset
from rayhash.index import indexset
from rayhash.models import checkpoint
from rayhash.quickstart import QuickstartConfig, run
from rayhash.serve import stop
from rayhash.serve.app import ServeConfig

CONFIG = "configs/quickstart.yaml"


def test_main_job_end_to_end(ray_cluster, tmp_path, fashion_mnist, capsys):
    cfg = load(
        QuickstartConfig,
        CONFIG,
        [
            f"--workdir={tmp_path / 'qs'}",
            f"--train.run.storage_path={tmp_path / 'runs'}",
            "--train.run.rounds=2",
            "--keep_serving=false",
            "--train.eval.baselines=[]",
        ],
    )
    try:
        out = run(cfg)
    finally:
        stop()
    ckpt = checkpoint.load(out["checkpoint"])
    assert ckpt.progress["round"] == 1 and ckpt.config["model"]["backbone"] == cfg.train.model.backbone
    assert ckpt.em  # round 1 ran DSCH's E-step, so the EM state is in the checkpoint
    codes = codeset.read_manifest(out["codeset"])
    assert codes.counts["encoded"] == len(fashion_mnist) and codes.counts["rejected"] == 0
    index = indexset.read_index_manifest(out["index"])
    assert index.items == len(fashion_mnist) and len(index.shards) == cfg.num_shards
    neighbours = out["neighbours"]
    assert len(neighbours) == cfg.k
    # The query's own indexed copy is left out, so the count says something about the codes.
    assert str(out["query"]) not in {n["id"] for n in neighbours}
    assert [n["distance"] for n in neighbours] == sorted(n["distance"] for n in neighbours)
    # Even two rounds put most of a query's neighbours in its class (1 in 10 by chance).
    assert out["same_class"] >= 5, out
    grid = Image.open(io.BytesIO(open(out["grid"], "rb").read()))
    assert grid.format == "PNG" and np.asarray(grid).std() > 0
    printed = capsys.readouterr().out
    assert "round 1/2  loss" in printed and "round 2/2  loss" in printed  # one line per round
    # The job ends with the mAP table and every path it wrote, after everything else it prints.
    final = printed[printed.rindex("== rayhash main job") :]
    assert "mAP@1000" in final and "dsch" in final
    for path in (out["checkpoint"], out["codeset"], out["index"], out["grid"], str(tmp_path / "qs" / "lake")):
        assert path in final, (path, final)


def test_config_bounds_k_and_query():
    # The job asks for k + 1 results (its query's own copy is dropped) from a service at default limits.
    max_k = ServeConfig.max_k
    for bad in ({"k": 0}, {"k": max_k}, {"query": 1000}, {"query": -1}):
        with pytest.raises(ConfigError, match=next(iter(bad))):
            QuickstartConfig(**bad)
    assert QuickstartConfig(k=max_k - 1).k == max_k - 1
