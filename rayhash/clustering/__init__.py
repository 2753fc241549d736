"""Cluster-wide clustering for the E-step: every rank holds a shard, statistics are all-reduced."""

from rayhash.clustering.gmm import GMMState, fit_gmm, responsibilities, score, state_from_dict, state_to_dict
from rayhash.clustering.kmeans import KMeansResult, kmeans, kmeans_plusplus

__all__ = [
    "GMMState",
    "KMeansResult",
    "fit_gmm",
    "kmeans",
    "kmeans_plusplus",
    "responsibilities",
    "score",
    "state_from_dict",
    "state_to_dict",
]
