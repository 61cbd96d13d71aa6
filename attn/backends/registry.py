"""Backend registry and per-call selection.

A backend is an object with

* ``name``;
* ``devices``: the tensor device types it runs on (``{"cuda"}``, ``{"cpu"}``, or both);
* ``capabilities``: for each op (``"forward"``, ``"decode"``) the optional features it honours
  (names from :meth:`attn.core.spec.AttentionSpec.options_in_use`, plus ``"backward"``);
* ``status(device_type) -> Optional[str]``: ``None`` when usable for that device here, else why not;
* one method per op it implements (``forward(q, k, v, spec) -> (out, lse)``,
  ``decode(q, k_cache, v_cache, seqlens_k, cache_batch_idx, block_table, spec, num_splits) -> (out, lse)``
  on a validated, already-appended cache (see :mod:`attn.api.decode`), ...).

Backends are imported lazily, so ``import attn`` never imports Triton or a compiled extension.
"""
from __future__ import annotations

import contextlib
import contextvars
import importlib
from dataclasses import dataclass, field
from typing import Iterable, Iterator, Mapping, Optional

import torch

# name -> "module:attribute" of the backend object
_REGISTRY: dict[str, str] = {
    "triton": "attn.backends.triton:TRITON",
    "cpu": "attn.backends.cpu:CPU",
    "torch": "attn.backends.torch:TORCH",
    "reference": "attn.backends.reference:REFERENCE",
    "cuda": "attn.backends.cuda:CUDA",
    "cuda-sim": "attn.backends.cuda:CUDA_SIM",
}

# Order tried by "auto", per device type. The Triton interpreter is never picked automatically
# on CPU: it is a correctness tool, orders of magnitude slower than PyTorch there; neither is
# "cuda-sim" (the CUDA kernel run by the SIMT emulator), for the same reason.
_AUTO_ORDER = {
    "cuda": ("cuda", "triton", "torch", "reference"),
    "cpu": ("cpu", "torch", "reference"),
}

_current: contextvars.ContextVar[Optional[str]] = contextvars.ContextVar("attn_backend", default=None)
_loaded: dict[str, object] = {}


def register(name: str, target: str, auto_order: Iterable[tuple[str, int]] = ()) -> None:
    """Registers a backend ``name`` -> ``"module:attribute"``; ``auto_order`` inserts it into
    the "auto" order of a device type at a position."""
    _REGISTRY[name] = target
    for device_type, position in auto_order:
        order = [n for n in _AUTO_ORDER.get(device_type, ()) if n != name]
        order.insert(position, name)
        _AUTO_ORDER[device_type] = tuple(order)


def names() -> tuple[str, ...]:
    return tuple(_REGISTRY)


def load(name: str):
    """Returns the backend object, or a string saying why it cannot be imported."""
    if name not in _loaded:
        module_name, attr = _REGISTRY[name].split(":")
        try:
            _loaded[name] = getattr(importlib.import_module(module_name), attr)
        except ImportError as exc:  # a missing optional dependency or extension
            _loaded[name] = f"cannot import {module_name}: {exc}"
    return _loaded[name]


@dataclass(frozen=True)
class BackendInfo:
    """Whether one backend works on this machine, as reported by :func:`available_backends`.

    Attributes:
        name: The backend's name, as accepted by ``backend=`` and :func:`use_backend`
            ("triton", "cpu", "torch", "reference", "cuda", "cuda-sim").
        available: True when it can run calls on at least one device type here.
        detail: When available, the tensor device types it runs on (e.g. "runs on cuda
            tensors; not cpu: ..."); otherwise why not (a missing optional dependency or
            unbuilt extension, no CUDA device, compute capability below 8.0, Triton on CPU
            without ``TRITON_INTERPRET=1``, ...).
        capabilities: For each op it implements (``"forward"``, ``"decode"``), the optional
            features it honours (``"causal"``, ``"window_size"``, ``"softcap"``,
            ``"alibi_slopes"``, ``"attn_mask"``, ``"return_lse"``, ``"backward"``; the table of
            docs/design.md §2). Empty when the backend cannot be imported.

    ``str(info)`` reads ``"name: available (detail)"`` or ``"name: unavailable (detail)"``.
    Being available does not mean it supports every option: that is checked per call.
    """

    name: str
    available: bool
    detail: str
    capabilities: Mapping[str, frozenset[str]] = field(default_factory=dict, hash=False)

    def __str__(self) -> str:
        return f"{self.name}: {'available' if self.available else 'unavailable'} ({self.detail})"


def available_backends() -> dict[str, BackendInfo]:
    """Every known backend, whether it works on this machine, and why not when it doesn't.

    Imports each backend lazily (a failing import is reported, never raised), so the first call
    may import Triton or load a compiled extension.

    Returns:
        A dict from backend name to :class:`BackendInfo`, for every registered backend:
        "triton", "cpu", "torch", "reference", "cuda", "cuda-sim" (plus any added with
        :func:`register`).
    """
    out = {}
    for name in _REGISTRY:
        backend = load(name)
        if isinstance(backend, str):
            out[name] = BackendInfo(name, False, backend)
            continue
        caps = {op: frozenset(options) for op, options in backend.capabilities.items()}
        reasons = {dev: backend.status(dev) for dev in sorted(backend.devices)}
        usable = [dev for dev, why in reasons.items() if why is None]
        if usable:
            detail = "runs on " + ", ".join(f"{d} tensors" for d in usable)
            blocked = [f"{d}: {why}" for d, why in reasons.items() if why is not None]
            if blocked:
                detail += "; not " + "; ".join(blocked)
            out[name] = BackendInfo(name, True, detail, caps)
        else:
            out[name] = BackendInfo(name, False, "; ".join(f"{d}: {w}" for d, w in reasons.items()), caps)
    return out


def usable(name: str, device_type: str) -> bool:
    """True when backend ``name`` can run calls on ``device_type`` tensors here."""
    backend = load(name)
    return not isinstance(backend, str) and device_type in backend.devices and backend.status(device_type) is None


@contextlib.contextmanager
def use_backend(name: Optional[str]) -> Iterator[None]:
    """Context manager: within the block, calls that pass ``backend=None`` use ``name``.

    Applies to every public function and module that takes ``backend=`` (an explicit
    ``backend=`` argument still wins). Stored in a ``contextvars.ContextVar``, so it is local to
    the thread / asyncio task and restored on exit, nesting included. Under
    ``torch.compile`` the choice is made while tracing, so the backend active then is baked
    into the compiled graph.

    Example::

        with attn.use_backend("reference"):
            out = attn.flash_attn_func(q, k, v)

    Args:
        name: A backend name ("triton", "cuda", "cuda-sim", "cpu", "torch", "reference"),
            or ``"auto"``/``None`` for per-call automatic selection (on CUDA tensors the first
            of "cuda", "triton", "torch", "reference" that is available and supports every
            option of the call; on CPU tensors "cpu", "torch", "reference"). Whether the named
            backend is usable is checked at each call, not here.

    Raises:
        ValueError: ``name`` is not a registered backend name, "auto" or None (raised when the
            ``with`` block is entered).
    """
    if name is not None and name != "auto" and name not in _REGISTRY:
        raise ValueError(f"use_backend: argument 'name' expected one of {sorted(_REGISTRY)} or 'auto', got {name!r}")
    token = _current.set(name)
    try:
        yield
    finally:
        _current.reset(token)


def _missing(backend, op: str, options: Iterable[str]) -> Optional[str]:
    caps = backend.capabilities.get(op)
    if caps is None:
        return op
    for option in options:
        if option not in caps:
            return option
    return None


def supporters(op: str, option: str) -> list[str]:
    """Backends that implement ``op`` with ``option`` (or ``op`` at all, when option is the op)."""
    found = []
    for name in _REGISTRY:
        backend = load(name)
        if isinstance(backend, str) or op not in backend.capabilities:
            continue
        if option == op or option in backend.capabilities[op]:
            found.append(name)
    return found


def select(fn: str, requested: Optional[str], device_type: str, op: str, options: Iterable[str]):
    """Picks the backend for one call; raises a clear error when the choice cannot work."""
    return load(_select_name(fn, requested, device_type, op, tuple(options)))


# Under torch.compile the choice is made once, while tracing (it depends only on Python values:
# the arguments, the registry and use_backend's context variable), and the traced graph keeps
# the chosen backend's ops; Dynamo could not trace the context variable or the lazy import.
@torch.compiler.assume_constant_result
def _select_name(fn: str, requested: Optional[str], device_type: str, op: str, options: tuple[str, ...]) -> str:
    if requested is None:
        requested = _current.get()
    if requested is None or requested == "auto":
        tried = []
        for name in _AUTO_ORDER.get(device_type, ()):
            if name not in _REGISTRY:
                continue
            backend = load(name)
            if isinstance(backend, str):
                tried.append(f"{name} ({backend})")
                continue
            why = backend.status(device_type) if device_type in backend.devices else f"does not run on {device_type}"
            if why is None:
                why_not = _missing(backend, op, options)
                if why_not is None:
                    return name
                why = f"does not support '{why_not}'"
            tried.append(f"{name} ({why})")
        raise NotImplementedError(f"{fn}: no backend can run this call on {device_type} tensors: " + "; ".join(tried))
    if requested not in _REGISTRY:
        raise ValueError(f"{fn}: argument 'backend' expected one of {sorted(_REGISTRY)}, 'auto' or None, got {requested!r}")
    backend = load(requested)
    if isinstance(backend, str):
        raise RuntimeError(f"{fn}: backend '{requested}' is not available: {backend}")
    if device_type not in backend.devices:
        raise ValueError(
            f"{fn}: backend '{requested}' runs on {sorted(backend.devices)} tensors, got {device_type} tensors"
        )
    why = backend.status(device_type)
    if why is not None:
        raise RuntimeError(f"{fn}: backend '{requested}' is not available for {device_type} tensors: {why}")
    option = _missing(backend, op, options)
    if option is not None:
        raise NotImplementedError(
            f"{fn}: option '{option}' is not supported by backend '{requested}'; "
            f"backends that support it: {supporters(op, option) or 'none'}"
        )
    return requested
