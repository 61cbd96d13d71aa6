"""Context parallelism on ``torch.distributed`` (docs/design.md §6): ring attention with the
load-balanced zigzag layout, and all-to-all (Ulysses) attention."""
from attn.distributed.ring import ring_flash_attn_func
from attn.distributed.sharding import zigzag_shard, zigzag_unshard
from attn.distributed.ulysses import ulysses_flash_attn_func

__all__ = ["ring_flash_attn_func", "ulysses_flash_attn_func", "zigzag_shard", "zigzag_unshard"]
