"""Index building and exact top-k search over faiss binary indexes (pure: no Ray)."""

from rayhash.index.build import IndexBuildConfig, build_from_config, build_index_set, build_shards
from rayhash.index.search import merge_topk, topk

__all__ = ["IndexBuildConfig", "build_from_config", "build_index_set", "build_shards", "merge_topk", "topk"]
