"""The README's main job end to end (train -> evaluate -> encode -> index -> serve -> query), shortened.

The same ``rayhash.quickstart.run`` that ``bash scripts/main.sh`` calls, on the shipped configs with
2 rounds (one warm-up, one with the E-step), against the session's local Ray cluster: DSCH's on
the whole 70,000-image lake, each other method's on a lake of its first images (what differs
between methods is the checkpoint, which every stage after training takes as it is).
"""

import dataclasses
import io

import numpy as np
import pytest
from PIL import Image

from rayhash.cli import main
from rayhash.codespec import WRITABLE_KINDS
from rayhash.config import ConfigError, load
from rayhash.encode import codeset
from rayhash.index import indexset
from rayhash.methods import list_methods, method_entry
from rayhash.models import checkpoint
from rayhash.quickstart import METHOD_CONFIGS, QuickstartConfig, load_config, run
from rayhash.serve import stop
from rayhash.serve.app import ServeConfig
from rayhash.train.config import TrainConfig

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
    assert "mAP@1000" in final and "rayhash main job: dsch, 64 bits" in final
    for path in (out["checkpoint"], out["codeset"], out["index"], out["grid"], str(tmp_path / "qs" / "lake")):
        assert path in final, (path, final)


def test_config_bounds_k_and_query():
    # The job asks for k + 1 results (its query's own copy is dropped) from a service at default limits.
    max_k = ServeConfig.max_k
    for bad in ({"k": 0}, {"k": max_k}, {"query": 1000}, {"query": -1}):
        with pytest.raises(ConfigError, match=next(iter(bad))):
            QuickstartConfig(**bad)
    assert QuickstartConfig(k=max_k - 1).k == max_k - 1


LAKE = 3000  # images in the lake of a method's shortened main job


@pytest.mark.parametrize("method", ["dcuh", "psch", "deepquan"])
def test_main_job_with_each_method(ray_cluster, tmp_path, capsys, method):
    cfg = load_config(
        None,
        method,
        [
            f"--workdir={tmp_path / 'qs'}",
            f"--train.run.storage_path={tmp_path / 'runs'}",
            "--train.run.rounds=2",
            "--train.run.torch_threads=1",
            "--train.eval.baselines=[]",
            f"--lake_images={LAKE}",
            "--keep_serving=false",
        ],
    )
    assert cfg.train.method.name == method and cfg.train.run.name == f"quickstart-{method}"
    try:
        out = run(cfg)
    finally:
        stop()
    ckpt = checkpoint.load(out["checkpoint"])
    kind = "pq" if method == "deepquan" else "binary"
    assert ckpt.progress["round"] == 1 and ckpt.config["method"]["name"] == method and ckpt.code_kind == kind
    # round 1 ran the method's E-step: DCUH's classifier over its clusters, PSCH's thresholds,
    # DeepQuan's codebooks (M = bits / 8 sub-spaces)
    if method == "dcuh":
        assert ckpt.method_module["weight"].shape == (cfg.train.method.clusters, cfg.train.model.bits)
    elif method == "psch":
        assert ckpt.em["thresholds"].shape == (cfg.train.method.clusters,)
    else:
        m = cfg.train.model.bits // 8
        assert tuple(ckpt.em["codebooks"].shape) == (m, cfg.train.method.codewords, cfg.train.method.d_sub)
    codes = codeset.read_manifest(out["codeset"])
    assert codes.counts == {"inputs": LAKE, "encoded": LAKE, "rejected": 0}
    assert codes.checkpoint_sha256 == ckpt.sha256 and codes.code_kind == kind
    index = indexset.read_index_manifest(out["index"])
    assert index.items == LAKE and len(index.shards) == cfg.num_shards and index.code_kind == kind
    neighbours = out["neighbours"]
    assert len(neighbours) == cfg.k and all(int(n["id"]) < LAKE for n in neighbours)
    assert [n["distance"] for n in neighbours] == sorted(n["distance"] for n in neighbours)
    # mAP@1000 over the protocol's 1,000 queries: codes that ignored the images would score about
    # 0.1, the share of each class.
    assert out["map_at_k"][method] > 0.3, out["map_at_k"]
    final = capsys.readouterr().out
    final = final[final.rindex("== rayhash main job") :]
    assert f"rayhash main job: {method}, 64 bits" in final and f"\n{method} " in final  # the title and the mAP row
    assert str(tmp_path / "qs" / f"lake-{LAKE}") in final


def test_each_method_has_a_main_job_config_of_its_own():
    # The main job writes, indexes and serves codes of every writable kind, binary and pq alike.
    writable = [m for m in list_methods() if method_entry(m).code_kind in WRITABLE_KINDS]
    assert sorted(METHOD_CONFIGS) == writable == list_methods()
    configs = {m: load_config(None, m) for m in writable}
    assert {m: c.train.method.name for m, c in configs.items()} == {m: m for m in writable}
    assert load_config() == configs["dsch"] == load(QuickstartConfig, CONFIG)
    # A run name resumes its run, whatever the method: no two methods may share one, or a workdir.
    assert len({c.train.run.name for c in configs.values()}) == len({c.workdir for c in configs.values()}) == 4


@pytest.mark.parametrize("method", sorted(METHOD_CONFIGS))
def test_each_main_job_config_trains_its_methods_64_bit_recipe(method):
    """The main job shows the measured recipe, shortened: same data, model, augmentation, method
    keys and optimiser (weight averaging aside, which starts past the main job's rounds)."""
    main_job = load_config(None, method).train
    recipe = load(TrainConfig, f"configs/fmnist-{method}-64.yaml")
    for section in ("data", "model", "augment", "method"):
        assert getattr(main_job, section) == getattr(recipe, section), section
    assert main_job.optim == dataclasses.replace(recipe.optim, swa_start=main_job.optim.swa_start)


@pytest.mark.parametrize(
    "argv,error",
    [
        (["--method=nosuch"], "unknown method 'nosuch'; known: dcuh, deepquan, dsch, psch"),
        (["--method.name=nosuch", "--config", CONFIG], "unknown method 'nosuch'; known: dcuh, deepquan, dsch, psch"),
        (["--config", CONFIG, "--method.name=dcuh"], f"--method=dcuh, but {CONFIG} trains 'dsch'"),
        # the method renamed, the file's DSCH keys kept: refused, pointing at --method
        (["--train.method.name=dcuh"], "'train.method.fine_components' with train.method.name=dcuh"),
    ],
)
def test_main_job_refuses_an_unknown_or_mismatched_method(capsys, argv, error):
    assert main(["quickstart", *argv]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and error in err, err
    if "train.method.name" in argv[0]:
        assert err.endswith("pick its config: --method=NAME")
