"""The index stage (pure: no Ray): build an index set (``build``), read and write it (``indexset``),
search its loaded shards (``shards``) and merge their top-k exactly (``search``)."""

from rayhash.index.build import IndexBuildConfig, build_from_config, build_index_set, build_shards
from rayhash.index.search import merge_topk, topk

__all__ = ["IndexBuildConfig", "build_from_config", "build_index_set", "build_shards", "merge_topk", "topk"]
