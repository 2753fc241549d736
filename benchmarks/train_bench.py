"""Training speed (PROTOCOL.md "Speed"): samples per second of the M-step, through Ray Train and in
a plain process, and the E-step's clustering against scikit-learn and faiss on the same codes.

    python benchmarks/train_bench.py --threads 2 --rounds 3

Training: ``configs/fmnist-dsch-64.yaml`` for ``--rounds`` rounds (DSCH, so every round after the
first runs the full E-step), four ways on the same 5,000 protocol images:

- ``plain``: ``rayhash.train.loop.run_rounds`` in this process, no Ray (the collectives are
  identities): the plain PyTorch loop, with ``--threads`` torch threads and with one; the faster
  is the reference;
- ``ray-1``: Ray Train, one worker with ``--threads`` torch threads;
- ``ray-N``: Ray Train, ``--threads`` workers of one torch thread each (data-parallel, gloo).

Each reports the last round: M-step samples per second (augmentation included) and E-step
seconds. Clustering: the continuous codes of the 5,000 training images from the ``plain`` run's
last round (or ``--checkpoint``'s model), and on them, with the same thread count:
``rayhash.clustering.gmm.fit_gmm`` against ``sklearn.mixture.GaussianMixture`` (diagonal
covariances, the configured 1,000 components, k-means initialisation, the same ``max_iter``,
``tol`` and ``reg_covar``), and ``rayhash.clustering.kmeans.kmeans`` against ``faiss.Kmeans`` and
``sklearn.cluster.KMeans`` (the 1,000 fine components). The clusterings' iteration counts
differ with their stopping rules, so seconds per iteration are reported beside the totals, and
each fit's quality (mean log-likelihood, k-means inertia) beside its time.
"""

from __future__ import annotations

import argparse
import logging
import os
import platform
import tempfile
import time

import numpy as np
from results_io import command_line, write_result

logger = logging.getLogger("train_bench")
CONFIG = os.path.join(os.path.dirname(__file__), "..", "configs", "fmnist-dsch-64.yaml")


def train_config(rounds: int, threads: int, workers: int, storage_path: str, name: str):
    from rayhash.config import load
    from rayhash.train.config import TrainConfig

    return load(
        TrainConfig,
        CONFIG,
        [
            f"--run.rounds={rounds}",
            f"--run.torch_threads={threads}",
            f"--run.num_workers={workers}",
            f"--run.cpus_per_worker={threads}",
            f"--run.storage_path={storage_path}",
            f"--run.name={name}",
        ],
    )


def round_figures(metrics: dict, wall: float | None = None) -> dict:
    out = {
        "samples_per_second": round(metrics["samples_per_second"], 1),
        "m_step_seconds": round(metrics["m_step_seconds"], 2),
        "e_step_seconds": round(metrics["e_step_seconds"], 2),
    }
    if wall is not None:
        out["wall_seconds"] = round(wall, 1)
    return out


def plain_run(rounds: int, threads: int, storage_path: str) -> tuple[dict, dict]:
    """The loop in this process; returns (the last round's figures, its model state dict)."""
    import torch

    from rayhash.train.loop import run_rounds

    cfg = train_config(rounds, threads, 1, storage_path, f"plain-{threads}")
    last: dict = {}

    def report(metrics: dict, payload: dict | None) -> None:
        last.update(metrics=metrics, model=payload["model"])

    saved = torch.get_num_threads()
    t0 = time.perf_counter()
    try:
        run_rounds(cfg, device=torch.device("cpu"), report=report)
    finally:
        torch.set_num_threads(saved)
    return round_figures(last["metrics"], time.perf_counter() - t0), last["model"]


def ray_run(rounds: int, threads: int, workers: int, storage_path: str) -> dict:
    from rayhash.train.trainer import run_training

    cfg = train_config(rounds, threads, workers, storage_path, f"ray-{workers}x{threads}-{int(time.time())}")
    t0 = time.perf_counter()
    result = run_training(cfg)
    return round_figures(result.metrics, time.perf_counter() - t0)


def training_codes(model_state: dict, checkpoint: str | None):
    """Continuous codes of the protocol's 5,000 training images, as the E-step sees them."""
    import torch

    from rayhash.config import from_dict
    from rayhash.models import ModelConfig, build_model
    from rayhash.models import checkpoint as ckpt_lib
    from rayhash.train.loop import encode_shard, load_split

    cfg = train_config(1, 1, 1, tempfile.gettempdir(), "codes")
    model_cfg = cfg.model
    if checkpoint:
        loaded = ckpt_lib.load(checkpoint)
        model_state = loaded.model
        model_cfg = from_dict(ModelConfig, loaded.config["model"])
    model = build_model(model_cfg)
    model.load_state_dict(model_state)
    data, split = load_split(cfg.data)
    return encode_shard(model, data.images[np.asarray(split.train)], torch.device("cpu")).double(), cfg.method


def timed(fn):
    t0 = time.perf_counter()
    out = fn()
    return out, time.perf_counter() - t0


def inertia(x: np.ndarray, centers: np.ndarray) -> float:
    d2 = (x * x).sum(1)[:, None] - 2 * x @ centers.T + (centers * centers).sum(1)[None, :]
    return float(np.maximum(d2.min(1), 0).sum())


def kmeans_rows(x_t, m: int, iterations: int, seed: int) -> dict:
    """k-means++ seeding, then at most ``iterations`` Lloyd steps from the same seeds on every side
    (no tolerance), so the inertias should agree. scikit-learn and rayhash stop early once no
    label changes (a zero centre shift) and faiss always runs them all, so the sides compare by
    seconds per iteration (rayhash's total also holds the labelling pass after its loop, about one
    iteration's work)."""
    import faiss
    from sklearn.cluster import KMeans
    from sklearn.cluster import kmeans_plusplus as sk_plusplus

    from rayhash.clustering.kmeans import kmeans, kmeans_plusplus

    x = x_t.numpy()
    seeds, s_rh = timed(lambda: kmeans_plusplus(x_t, m, seed=seed))
    _, s_sk = timed(lambda: sk_plusplus(x, m, random_state=seed))
    init = seeds.numpy()
    out = {"lloyd_iterations": iterations, "plusplus_seconds": {"rayhash": round(s_rh, 3), "sklearn": round(s_sk, 3)}}
    km, s = timed(lambda: kmeans(x_t, m, n_iter=iterations, tol=0.0, init=seeds))
    out["rayhash"] = side_figures(s, km.n_iter, inertia(x, km.centers.double().numpy()))
    sk = KMeans(m, init=init, n_init=1, max_iter=iterations, tol=0.0, algorithm="lloyd")
    _, s = timed(lambda: sk.fit(x))
    out["sklearn"] = side_figures(s, sk.n_iter_, inertia(x, sk.cluster_centers_))
    fk = faiss.Kmeans(x.shape[1], m, niter=iterations, max_points_per_centroid=10**9, min_points_per_centroid=1)
    _, s = timed(lambda: fk.train(np.ascontiguousarray(x, dtype=np.float32), init_centroids=init.astype(np.float32)))
    out["faiss"] = side_figures(s, iterations, inertia(x, fk.centroids.astype(np.float64)))
    for side in ("sklearn", "faiss"):
        out[f"rayhash_speedup_per_iteration_over_{side}"] = round(
            out[side]["seconds_per_iteration"] / out["rayhash"]["seconds_per_iteration"], 2
        )
    return out


def side_figures(seconds: float, iterations: int, sse: float) -> dict:
    return {
        "seconds": round(seconds, 3),
        "iterations": int(iterations),
        "seconds_per_iteration": round(seconds / iterations, 4),
        "inertia": round(sse, 2),
    }


def gmm_rows(x_t, method, iterations: int, seed: int) -> dict:
    """EM as configured (each side stops by ``tol`` from its own k-means start) and for a fixed
    number of iterations (``tol`` 0); the k-means start is timed apart, so that seconds per EM
    iteration compare the same work."""
    from sklearn.cluster import KMeans
    from sklearn.mixture import GaussianMixture

    from rayhash.clustering.gmm import fit_gmm, score
    from rayhash.clustering.kmeans import kmeans

    x, m = x_t.numpy(), method.fine_components
    _, init_rh = timed(lambda: kmeans(x_t, m, n_iter=300, seed=seed))  # fit_gmm's own start
    _, init_sk = timed(lambda: KMeans(m, n_init=1, random_state=seed).fit(x))  # GaussianMixture's
    out = {
        "components": m,
        "covariance_type": method.covariance_type,
        "kmeans_start_seconds": {"rayhash": round(init_rh, 3), "sklearn": round(init_sk, 3)},
    }
    for label, max_iter, tol in (("as_configured", method.gmm_max_iter, method.gmm_tol), ("fixed", iterations, 0.0)):
        state, s_rh = timed(
            lambda: fit_gmm(  # noqa: B023 (timed calls it at once)
                x_t,
                m,
                covariance_type=method.covariance_type,
                max_iter=max_iter,  # noqa: B023
                tol=tol,  # noqa: B023
                reg_covar=method.reg_covar,
                seed=seed,
            )
        )
        g = GaussianMixture(
            m,
            covariance_type=method.covariance_type,
            max_iter=max_iter,
            tol=tol,
            reg_covar=method.reg_covar,
            init_params="kmeans",
            n_init=1,
            random_state=seed,
        )
        _, s_sk = timed(lambda: g.fit(x))  # noqa: B023 (timed calls it at once)
        row = {
            side: {
                "seconds": round(s, 2),
                "iterations": n,
                "seconds_per_em_iteration": round((s - init) / n, 4),
                "mean_log_likelihood": round(ll, 4),
            }
            for side, s, n, init, ll in (
                ("rayhash", s_rh, state.n_iter, init_rh, score(x_t, state)),
                ("sklearn", s_sk, int(g.n_iter_), init_sk, float(g.score(x))),
            )
        }
        row["rayhash_speedup_per_em_iteration"] = round(
            row["sklearn"]["seconds_per_em_iteration"] / row["rayhash"]["seconds_per_em_iteration"], 2
        )
        out[label] = row
    return out


def clustering(codes, method, threads: int, seed: int, iterations: int = 20) -> dict:
    import faiss
    import torch
    from threadpoolctl import threadpool_limits

    from rayhash.methods import ShardInputs, build_method

    torch.set_num_threads(threads)
    faiss.omp_set_num_threads(threads)
    out: dict = {"points": list(codes.shape), "threads": threads}
    with threadpool_limits(threads):
        out["kmeans"] = kmeans_rows(codes, method.fine_components, iterations, seed)
        out["gmm"] = gmm_rows(codes, method, iterations // 2, seed)
        dsch = build_method(method, codes.shape[1])
        _, s = timed(lambda: dsch.e_step(ShardInputs(codes=codes.float()), round_index=method.warmup_rounds))
        out["dsch_e_step_seconds"] = round(s, 2)  # GMM + responsibilities + coarse k-means, as a round runs it
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--rounds", type=int, default=3, help="training rounds per run (the last one is reported)")
    parser.add_argument("--checkpoint", help="cluster this checkpoint's codes instead of the plain run's")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", default="benchmarks/results/train.json")
    args = parser.parse_args()
    logging.basicConfig(level=logging.WARNING)
    if args.rounds < 2:
        parser.error("--rounds must be at least 2: the first round has no E-step")

    import ray

    load_before = os.getloadavg()[0]
    workdir = tempfile.mkdtemp(prefix="rayhash-train-bench-")
    runs: dict = {}
    runs[f"plain_{args.threads}_threads"], model_state = plain_run(args.rounds, args.threads, workdir)
    if args.threads != 1:
        runs["plain_1_thread"] = plain_run(args.rounds, 1, workdir)[0]
    ray.init(num_cpus=args.threads, include_dashboard=False, logging_level="WARNING")
    try:
        runs[f"ray_1_worker_{args.threads}_threads"] = ray_run(args.rounds, args.threads, 1, workdir)
        if args.threads > 1:
            runs[f"ray_{args.threads}_workers_1_thread"] = ray_run(args.rounds, 1, args.threads, workdir)
    finally:
        ray.shutdown()
    reference = max((r for name, r in runs.items() if name.startswith("plain")), key=lambda r: r["samples_per_second"])
    for r in runs.values():
        r["samples_per_second_over_plain"] = round(r["samples_per_second"] / reference["samples_per_second"], 3)

    codes, method = training_codes(model_state, args.checkpoint)
    cluster = clustering(codes, method, args.threads, args.seed)
    load_after = os.getloadavg()[0]
    result = {
        "command": command_line(),
        "config": "configs/fmnist-dsch-64.yaml (tiny_cnn, 64 bits, batch 64, 1,000/100 components, diag)",
        "training": runs,
        "clustering": cluster,
        "codes": f"checkpoint {args.checkpoint}"
        if args.checkpoint
        else f"the plain run's model after {args.rounds} rounds",
        "hardware": f"{platform.machine()}, {os.cpu_count()} cores, no GPU; 1-min load average {load_before:.1f} "
        f"before, {load_after:.1f} after",
        "notes": "Training figures are each run's last round: M-step samples per second (two augmented views "
        "per sample, augmentation in the loop) and its E-step seconds; samples_per_second_over_plain "
        "is against the faster plain run. Clustering runs with the same thread count on every side.",
    }
    print(write_result(args.out, result), end="")


if __name__ == "__main__":
    main()
