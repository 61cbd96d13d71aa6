"""The process-group plumbing shared by ring and all-to-all attention: ranks, neighbours, the
shard-shape agreement check and the ring's asynchronous point-to-point step."""
from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.distributed as dist

from attn.core import validation as V


@dataclass(frozen=True)
class Ring:
    """A process group seen as a ring: this rank sends to ``next`` and receives from ``prev``
    (global ranks, which ``torch.distributed``'s point-to-point ops take)."""

    group: dist.ProcessGroup | None
    world_size: int
    rank: int
    next: int
    prev: int

    def start(self, send: torch.Tensor) -> tuple[torch.Tensor, list]:
        """Posts ``send -> next`` and a receive of the same shape from ``prev``; returns the receive
        buffer and the works to wait on. Both are posted in one ``batch_isend_irecv`` so every rank
        issues them in the same order (gloo matches by order, NCCL needs it)."""
        recv = torch.empty_like(send)
        ops = [dist.P2POp(dist.isend, send, self.next, self.group),
               dist.P2POp(dist.irecv, recv, self.prev, self.group)]
        return recv, dist.batch_isend_irecv(ops)


def wait(works: list) -> None:
    for work in works:
        work.wait()


def ring_of(fn: str, group: dist.ProcessGroup | None) -> Ring:
    """The ring over ``group`` (None: the default group); RuntimeError without an initialized
    process group."""
    if not dist.is_available() or not dist.is_initialized():
        raise RuntimeError(f"{fn}: torch.distributed is not initialized; call "
                           "torch.distributed.init_process_group (gloo for CPU tensors, nccl for CUDA) first")
    world_size, rank = dist.get_world_size(group), dist.get_rank(group)

    def global_rank(r: int) -> int:
        return r if group is None else dist.get_global_rank(group, r)

    return Ring(group, world_size, rank, global_rank((rank + 1) % world_size), global_rank((rank - 1) % world_size))


def check_same_shapes(fn: str, ring: Ring, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> None:
    """Raises ValueError on every rank when the ranks' ``q, k, v`` shapes differ (a mismatched
    receive would otherwise fail on one rank and leave the others waiting): one all-gather of
    six integers."""
    if ring.world_size == 1:
        return
    mine = torch.tensor([*q.shape, k.shape[2], v.shape[3]], dtype=torch.int64, device=q.device)
    shapes = [torch.empty_like(mine) for _ in range(ring.world_size)]
    dist.all_gather(shapes, mine, group=ring.group)
    shapes = [tuple(s.tolist()) for s in shapes]
    if any(s != shapes[0] for s in shapes):
        V._fail(fn, "q", "the same (B, S_local, H, D, Hkv, Dv) on every rank", f"{shapes} (by rank)")
