"""Which instruction set the CPU kernels run: ``ATTN_CPU_ISA`` (``avx512`` | ``avx2`` | ``generic``)
forces one, e.g. to test the fallbacks on a newer CPU; by default the best one this CPU supports."""
from __future__ import annotations

import os
from typing import Optional

from attn.cpu import _cpu


def supported_isas() -> list[str]:
    """Instruction sets this CPU can run, best first."""
    return list(_cpu.supported_isas())


def resolve_isa(isa: Optional[str]) -> str:
    """The instruction set to run: ``isa``, else ``$ATTN_CPU_ISA``, else "" (the best supported)."""
    if isa is None:
        isa = os.environ.get("ATTN_CPU_ISA", "")
        if isa and isa not in supported_isas():
            raise ValueError(f"cpu backend: environment variable ATTN_CPU_ISA expected one of "
                             f"{supported_isas()} (what this CPU supports), got {isa!r}")
    return isa
