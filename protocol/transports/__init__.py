"""Weight transports behind one small registry: how a full weight set travels from the learner's ranks
into the vLLM engines.

One module per transport in this package (shm.py, broadcast.py, ipc.py, vllm_nccl.py). Each holds both halves of
its transport in one `Transport` subclass: the learner side (`open_sender`, `send`) runs in the
learner's ranks, the engine side (`open_receiver`, `receive`, `finish`) inside every vLLM worker
process, and class attributes tell the driver how to schedule it (base.py). A module registers its
class with `@register`; every module of this package is imported on first lookup, so adding a
transport is one new file here (plus its test): cluster/loop/sync.py, learner/worker.py and
rollout/vllm_compat/extension.py only call `get(name)`.
"""
from __future__ import annotations

import importlib
import pkgutil

from protocol.transports.base import SyncSetup, Transport

_REGISTRY: dict[str, type[Transport]] = {}
_LOADED = False


def register(cls: type[Transport]) -> type[Transport]:
    """Class decorator: make `cls` available under `cls.name`."""
    if cls.name in _REGISTRY and _REGISTRY[cls.name] is not cls:
        raise ValueError(f"two weight transports are called {cls.name!r}")
    _REGISTRY[cls.name] = cls
    return cls


def _load_all() -> None:
    global _LOADED
    if not _LOADED:
        for module in pkgutil.iter_modules(__path__):
            if module.name != "base":
                importlib.import_module(f"{__name__}.{module.name}")
        _LOADED = True


def names() -> list[str]:
    _load_all()
    return sorted(_REGISTRY)


def get(name: str) -> type[Transport]:
    _load_all()
    if name not in _REGISTRY:
        raise ValueError(f"unknown weight transport {name!r}; known: {', '.join(sorted(_REGISTRY))}")
    return _REGISTRY[name]


__all__ = ["SyncSetup", "Transport", "get", "names", "register"]
