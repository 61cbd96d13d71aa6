"""The bottom layer, shared by every other: the normalized call (:mod:`~attn.core.spec`), input
validation, KV-cache addressing (:mod:`~attn.core.cache_layout`), the split-KV count and output
allocation. It imports nothing above it (docs/design.md §1).
"""
