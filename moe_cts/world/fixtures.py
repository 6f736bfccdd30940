"""Testbed fixtures: one YAML file per multi-device fixture (fixtures/*.yaml).

A fixture says what the suite runs on: which products it can stand for, which backend, how many
devices one host runs as rank processes, which hosts, the torch.distributed backend and process
start method, the spec profile, the deadlines, and the environment every rank gets (HCCL_BUFFSIZE
...). ``load_fixture(path)`` validates everything and raises :class:`FixtureError` with ONE line::

    fixtures/x.yaml: key 'deadlines.case_s': expected a positive number, got 'abc'

Keys (defaults in brackets)::

    name            str            [file stem]
    description     str            ['']
    products        [A2|A3, ...]   required; the products this fixture can stand for
    backend         str            required; "sim", "npu" or "package.module:factory"
    backend_options mapping        [{}]; keyword options for the backend factory
    device_type     cpu|cuda|npu   required
    devices         int > 0        required; ranks ONE host runs as processes
    hosts           [str, ...]     [["localhost"]]
    launcher        local|torchrun [local]; torchrun: ranks are started by torchrun (multi-host)
    torchrun        mapping        [{}]; store_host, store_port, nproc_per_node, nnodes, max_restarts
    dist_backend    gloo|nccl|hccl [cpu: gloo, cuda: nccl, npu: hccl]
    start_method    fork|spawn|forkserver [cpu: fork, else spawn]
    spec_profile    str            [the doc profile, moe_cts.spec.DEFAULT_PROFILE]
    deadlines       mapping        case_s [60] per multi-rank action, start_s [120] to start a world,
                                   error_grace_s [10] for the other ranks once one has raised
    env             mapping str->str [{}]; set in every rank process (HCCL_BUFFSIZE, TASK_QUEUE_ENABLE ...)
    loopback_above  int >= 1       [devices]; cpu only: larger worlds run as threads in one process
"""
from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from moe_cts import repo
from moe_cts.model import PRODUCTS
from moe_cts.spec import DEFAULT_PROFILE

REPO_FIXTURES = repo.FIXTURES
DEFAULT_FIXTURE = "sim"

DEVICE_TYPES = ("cpu", "cuda", "npu")
DIST_BACKENDS = {"cpu": ("gloo",), "cuda": ("nccl", "gloo"), "npu": ("hccl",)}
START_METHODS = {"cpu": ("fork", "forkserver", "spawn"), "cuda": ("spawn", "forkserver"), "npu": ("spawn", "forkserver")}
LAUNCHERS = ("local", "torchrun")
TOP_KEYS = ("name", "description", "products", "backend", "backend_options", "device_type", "devices", "hosts",
            "launcher", "torchrun", "dist_backend", "start_method", "spec_profile", "deadlines", "env",
            "loopback_above")
DEADLINE_KEYS = ("case_s", "start_s", "error_grace_s")
TORCHRUN_KEYS = ("store_host", "store_port", "nproc_per_node", "nnodes", "max_restarts")
REQUIRED = ("products", "backend", "device_type", "devices")


class FixtureError(ValueError):
    """A fixture file that cannot be used; ``str()`` is one line naming the file, the key and what was expected."""


@dataclass(frozen=True)
class Deadlines:
    case_s: float = 60.0  # one multi-rank action (one pool.run call)
    start_s: float = 120.0  # starting a world (processes, rendezvous, backend load)
    # once a rank has raised, how long the others may still take: a rank that left a collective leaves
    # its peers waiting forever, and gloo/nccl cannot cancel them, so waiting the full case_s is waste
    error_grace_s: float = 10.0


@dataclass(frozen=True)
class Fixture:
    name: str
    path: str
    products: tuple[str, ...]
    backend: str
    device_type: str
    devices: int
    backend_options: dict = field(default_factory=dict)
    hosts: list = field(default_factory=lambda: ["localhost"])
    launcher: str = "local"
    torchrun: dict = field(default_factory=dict)
    dist_backend: str = "gloo"
    start_method: str = "fork"
    spec_profile: str = DEFAULT_PROFILE
    deadlines: Deadlines = field(default_factory=Deadlines)
    env: dict = field(default_factory=dict)
    loopback_above: int = 16
    description: str = ""

    @property
    def hccl_buffsize_mb(self) -> int:
        """HCCL_BUFFSIZE in MB as the ranks see it (the doc's default: 200)."""
        return int(self.env.get("HCCL_BUFFSIZE", 200))

    @property
    def total_devices(self) -> int:
        return self.devices * len(self.hosts)

    def capacity(self) -> int | None:
        """The largest world this fixture can run; None = no limit (cpu: big worlds run on loopback)."""
        if self.device_type == "cpu" and self.launcher == "local":
            return None
        return self.total_devices


def _show(v: Any) -> str:
    s = repr(v)
    return s if len(s) <= 60 else s[:57] + "..."


def _one_line(s: str) -> str:
    return " ".join(str(s).split())


def resolve_fixture_path(path: str | os.PathLike) -> Path:
    """A path as given, or a bare name ("sim", "a3-16") looked up in the repository's fixtures/."""
    p = Path(path)
    if not p.exists() and p.suffix == "" and len(p.parts) == 1:
        cand = REPO_FIXTURES / f"{p.name}.yaml"
        if cand.exists():
            return cand
    return p


def load_fixture(path: str | os.PathLike = DEFAULT_FIXTURE) -> Fixture:
    import yaml

    p = resolve_fixture_path(path)
    where = str(path) if p == Path(path) else str(p)

    def bad(key: str | None, expected: str, got: str) -> FixtureError:
        k = f" key {key!r}:" if key else ""
        return FixtureError(_one_line(f"{where}:{k} expected {expected}, got {got}"))

    try:
        text = p.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise bad(None, "an existing fixture file", "no such file") from None
    except OSError as exc:
        raise bad(None, "a readable fixture file", f"{type(exc).__name__}: {exc.strerror or exc}") from None
    try:
        raw = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        at = f" at line {mark.line + 1} column {mark.column + 1}" if mark is not None else ""
        problem = getattr(exc, "problem", None) or str(exc)
        raise bad(None, "valid YAML", f"a parse error{at}: {problem}") from None
    if not isinstance(raw, dict):
        raise bad(None, "a mapping of fixture keys at top level", type(raw).__name__ if raw is not None else "an empty file")

    for k in raw:
        if k not in TOP_KEYS:
            raise bad(str(k), "one of " + ", ".join(TOP_KEYS), "an unknown key")
    for k in REQUIRED:
        if k not in raw:
            raise bad(k, "a value (the key is required)", "nothing")

    def string(key: str, v: Any, nonempty: bool = True) -> str:
        if not isinstance(v, str) or (nonempty and not v.strip()):
            raise bad(key, "a non-empty string" if nonempty else "a string", _show(v))
        return v

    def pos_int(key: str, v: Any) -> int:
        if isinstance(v, bool) or not isinstance(v, int) or v <= 0:
            raise bad(key, "a positive integer", _show(v))
        return v

    def pos_num(key: str, v: Any) -> float:
        if isinstance(v, bool) or not isinstance(v, (int, float)) or not v > 0 or v != v or v == float("inf"):
            raise bad(key, "a positive number", _show(v))
        return float(v)

    def choice(key: str, v: Any, options) -> str:
        if v not in options:
            raise bad(key, "one of " + ", ".join(repr(o) for o in options), _show(v))
        return v

    def mapping(key: str, v: Any) -> dict:
        if v is None:
            return {}
        if not isinstance(v, dict):
            raise bad(key, "a mapping", _show(v))
        return v

    name = string("name", raw.get("name", p.stem))
    description = string("description", raw.get("description", ""), nonempty=False)

    products = raw["products"]
    if isinstance(products, str):
        products = [products]
    if not isinstance(products, list) or not products:
        raise bad("products", "a non-empty list of " + ", ".join(PRODUCTS), _show(products))
    for i, prod in enumerate(products):
        choice(f"products[{i}]", prod, PRODUCTS)

    backend = string("backend", raw["backend"])
    backend_options = mapping("backend_options", raw.get("backend_options"))
    for k in backend_options:
        if not isinstance(k, str) or not k.isidentifier():
            raise bad(f"backend_options.{k}", "a keyword-argument name", _show(k))

    device_type = choice("device_type", raw["device_type"], DEVICE_TYPES)
    devices = pos_int("devices", raw["devices"])

    hosts = raw.get("hosts", ["localhost"])
    if isinstance(hosts, str):
        hosts = [hosts]
    if not isinstance(hosts, list) or not hosts:
        raise bad("hosts", "a non-empty list of host names", _show(hosts))
    for i, h in enumerate(hosts):
        string(f"hosts[{i}]", h)

    launcher = choice("launcher", raw.get("launcher", "local"), LAUNCHERS)
    if len(hosts) > 1 and launcher != "torchrun":
        raise bad("launcher", f"'torchrun' for {len(hosts)} hosts", _show(launcher))
    torchrun = dict(mapping("torchrun", raw.get("torchrun")))
    for k, v in torchrun.items():
        if k not in TORCHRUN_KEYS:
            raise bad(f"torchrun.{k}", "one of " + ", ".join(TORCHRUN_KEYS), "an unknown key")
        if k == "store_host":
            string("torchrun.store_host", v)
        elif k == "max_restarts":
            if isinstance(v, bool) or not isinstance(v, int) or v < 0:
                raise bad("torchrun.max_restarts", "a non-negative integer", _show(v))
        else:
            pos_int(f"torchrun.{k}", v)

    dist_backend = choice("dist_backend", raw.get("dist_backend", DIST_BACKENDS[device_type][0]),
                          DIST_BACKENDS[device_type])
    start_method = choice("start_method", raw.get("start_method", START_METHODS[device_type][0]),
                          START_METHODS[device_type])
    spec_profile = string("spec_profile", raw.get("spec_profile", DEFAULT_PROFILE))

    dl_raw = mapping("deadlines", raw.get("deadlines"))
    for k in dl_raw:
        if k not in DEADLINE_KEYS:
            raise bad(f"deadlines.{k}", "one of " + ", ".join(DEADLINE_KEYS), "an unknown key")
    dl = {k: pos_num(f"deadlines.{k}", v) for k, v in dl_raw.items()}
    deadlines = Deadlines(**dl)

    env_raw = mapping("env", raw.get("env"))
    env: dict[str, str] = {}
    for k, v in env_raw.items():
        if not isinstance(k, str) or not k or "=" in k:
            raise bad(f"env.{k}", "an environment variable name", _show(k))
        if isinstance(v, bool) or not isinstance(v, (str, int)):
            raise bad(f"env.{k}", "a string (quote numbers: \"200\")", _show(v))
        env[k] = str(v)
    if "HCCL_BUFFSIZE" in env:
        try:
            ok = int(env["HCCL_BUFFSIZE"]) > 0
        except ValueError:
            ok = False
        if not ok:
            raise bad("env.HCCL_BUFFSIZE", "a positive integer number of MB", _show(env["HCCL_BUFFSIZE"]))

    loopback_above = pos_int("loopback_above", raw.get("loopback_above", devices))

    return Fixture(
        name=name, path=str(p), products=tuple(products), backend=backend, backend_options=dict(backend_options),
        device_type=device_type, devices=devices, hosts=list(hosts), launcher=launcher, torchrun=torchrun,
        dist_backend=dist_backend, start_method=start_method, spec_profile=spec_profile, deadlines=deadlines,
        env=env, loopback_above=loopback_above, description=description,
    )


def list_fixtures(directory: str | os.PathLike = REPO_FIXTURES) -> list[Path]:
    return sorted(Path(directory).glob("*.yaml"))
