"""What a world run gives back: per-rank outcomes, or a broken world; and how exceptions travel.

Exceptions cross the process boundary as (class path, args, __dict__, traceback text) and are rebuilt
with ``cls.__new__`` + attribute restore, NOT by calling ``cls(*args)``: exceptions whose ``__init__``
takes other arguments than ``args`` (``AclnnError(status, message, constraint)``) would not survive a
plain pickle round trip. A class that cannot be imported in the parent becomes a RuntimeError with the
remote repr. Every rebuilt exception carries ``.rank`` and ``.remote_traceback``.
"""
from __future__ import annotations

import importlib
import pickle
import traceback
from dataclasses import dataclass
from typing import Any


@dataclass
class RankOutcome:
    rank: int
    value: Any = None
    error: BaseException | None = None

    @property
    def ok(self) -> bool:
        return self.error is None


class WorldBroken(Exception):
    """The world could not finish a multi-rank action and was killed.

    ``kind``: "hang" (deadline passed), "crash" (a rank process died), "infra" (the world could not
    start, or its groups could not be made). ``stacks``: {rank: Python stack text} taken just before
    the kill (for a loopback world, per rank-thread; key -1 holds the whole process dump).
    ``outcomes``: the RankOutcomes that did arrive before the world broke.
    """

    def __init__(self, kind: str, message: str, stacks: dict[int, str] | None = None,
                 outcomes: list[RankOutcome] | None = None):
        self.kind = kind
        self.message = message
        self.stacks = dict(stacks or {})
        self.outcomes = list(outcomes or [])
        super().__init__(f"broken: {kind}: {message}")

    def __reduce__(self):
        return (WorldBroken, (self.kind, self.message, self.stacks, self.outcomes))

    def stacks_text(self) -> str:
        return "\n".join(f"===== rank {r} =====\n{s}" for r, s in sorted(self.stacks.items()))


def pack_exception(exc: BaseException) -> bytes:
    cls = type(exc)
    tb = "".join(traceback.format_exception(type(exc), exc, exc.__traceback__))
    state = {"module": cls.__module__, "qualname": cls.__qualname__, "repr": repr(exc), "tb": tb,
             "args": exc.args, "dict": dict(getattr(exc, "__dict__", {}))}
    try:
        return pickle.dumps(state, protocol=pickle.HIGHEST_PROTOCOL)
    except Exception:  # noqa: BLE001 - unpicklable args/attributes: keep type, lose payload
        state["args"] = None
        state["dict"] = None
        return pickle.dumps(state, protocol=pickle.HIGHEST_PROTOCOL)


def unpack_exception(blob: bytes, rank: int) -> BaseException:
    state = pickle.loads(blob)
    exc: BaseException | None = None
    if state.get("args") is not None:
        try:
            obj: Any = importlib.import_module(state["module"])
            for part in state["qualname"].split("."):
                obj = getattr(obj, part)
            if isinstance(obj, type) and issubclass(obj, BaseException):
                exc = obj.__new__(obj)
                exc.args = tuple(state["args"])
                if state.get("dict"):
                    exc.__dict__.update(state["dict"])
        except Exception:  # noqa: BLE001
            exc = None
    if exc is None:
        exc = RuntimeError(f"rank {rank} raised {state['repr']}")
    try:
        exc.rank = rank
        exc.remote_traceback = state["tb"]
        exc.add_note(f"(raised on rank {rank}; remote traceback:)\n{state['tb'].rstrip()}")
    except Exception:  # noqa: BLE001 - exceptions with __slots__ and no __dict__
        pass
    return exc


def errors_note(outcomes: dict) -> str:
    """"; before that rank r: Error: first line ..." for the ranks that raised before a world broke."""
    errs = [f"rank {r}: {type(o.error).__name__}: {str(o.error).splitlines()[0] if str(o.error) else ''}"
            for r, o in sorted(outcomes.items()) if o.error is not None]
    return ("; before that " + "; ".join(errs[:4]) + (" ..." if len(errs) > 4 else "")) if errs else ""
