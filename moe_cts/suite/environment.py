"""The environment fingerprint of a run: what a qualification diff or a bug report needs to name the stack.

Written into allure-results (``environment.properties``, ``moe-cts-run.json``) and into every baseline.
"""
from __future__ import annotations

import glob
import os
import platform
from pathlib import Path


def _read(path: str) -> str | None:
    try:
        return Path(path).read_text().strip()
    except OSError:
        return None


def _version_info(path_glob: str) -> str:
    for p in sorted(glob.glob(path_glob)):
        txt = _read(p)
        if txt:
            for line in txt.splitlines():
                if "version" in line.lower() and "=" in line:
                    return line.split("=", 1)[1].strip()
            return txt.splitlines()[0][:80]
    return "absent"


def fingerprint(st=None) -> dict[str, str]:
    """python, platform, moe_cts, torch, torch_npu, CANN, driver, firmware, SoC and the HCCL variables of
    this process; with the session state ``st`` also the fixture, backend, spec profile, tolerance and the
    fixture's environment."""
    from moe_cts import __version__

    fp: dict[str, str] = {"python": platform.python_version(), "platform": platform.platform(),
                          "moe_cts": __version__}
    if st is not None:
        fp.update({"backend": st.backend_spec, "spec_profile": st.profile, "hw_tolerance": str(st.tolerance.active)})
        fx = st.fixture
        fp["fixture"] = fx.name
        fp["fixture.devices"] = str(getattr(fx, "devices", "?"))
        fp["fixture.dist_backend"] = str(getattr(fx, "dist_backend", "?"))
        for k, v in sorted(fx.env.items()):
            fp[f"env.{k}"] = str(v)
    try:
        import torch

        fp["torch"] = torch.__version__
    except Exception:  # noqa: BLE001
        fp["torch"] = "absent"
    try:
        from importlib.metadata import version

        fp["torch_npu"] = version("torch_npu")
    except Exception:  # noqa: BLE001
        fp["torch_npu"] = "absent"
    home = os.environ.get("ASCEND_TOOLKIT_HOME") or os.environ.get("ASCEND_HOME_PATH") or "/usr/local/Ascend/ascend-toolkit/latest"
    fp["cann"] = _version_info(os.path.join(home, "*version.info")) if os.path.isdir(home) else "absent"
    fp["driver"] = _version_info("/usr/local/Ascend/driver/version.info")
    fp["firmware"] = _version_info("/usr/local/Ascend/firmware/version.info")
    soc = "none"
    if fp["torch_npu"] != "absent":
        try:
            import torch_npu  # noqa: F401
            import torch

            soc = torch.npu.get_device_name(0)
        except Exception:  # noqa: BLE001
            soc = "unknown"
    fp["soc"] = soc
    for k, v in sorted(os.environ.items()):
        if k.startswith("HCCL_"):
            fp.setdefault(f"env.{k}", v)
    return fp


