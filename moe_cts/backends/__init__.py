"""Backends: the protocol (base), the software device ``sim`` and its transports, ``npu`` (torch_npu)."""
from moe_cts.backends.base import Backend, BackendLoadError, RankContext, load_backend

__all__ = ["Backend", "BackendLoadError", "RankContext", "load_backend"]
