"""A wheel built from the tree carries every data file the library reads: installed (not editable) into a
fresh virtual environment, it loads its own spec and runs `moe-cts check`, `list` and `coverage`."""
from __future__ import annotations

import os
import subprocess
import sys
import sysconfig
import venv
import zipfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def installed(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("wheel")
    proc = subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q",
                           "-w", str(tmp / "dist"), str(ROOT)], capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    (whl,) = (tmp / "dist").glob("moe_cts-*.whl")
    env_dir = tmp / "venv"
    venv.EnvBuilder(with_pip=False).create(env_dir)
    py = env_dir / "bin" / "python"
    # the dependencies come from this environment (a path entry: its own .pth files, the editable install
    # of this checkout among them, are not processed); moe_cts itself only from the wheel
    site = subprocess.run([str(py), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
                          capture_output=True, text=True, check=True).stdout.strip()
    Path(site, "host-deps.pth").write_text(sysconfig.get_paths()["purelib"] + "\n")
    proc = subprocess.run([sys.executable, "-m", "pip", "--python", str(py), "install", "--no-deps", "-q", str(whl)],
                          capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return whl, env_dir, tmp


def _run(installed, *args):
    _, env_dir, tmp = installed
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "VIRTUAL_ENV")}
    return subprocess.run([str(env_dir / "bin" / "moe-cts"), *args], cwd=tmp, env=env, capture_output=True,
                          text=True, timeout=300)


def test_wheel_carries_the_data_files(installed):
    names = set(zipfile.ZipFile(installed[0]).namelist())
    for must in ("moe_cts/spec/profiles/v4-doc.yaml", "moe_cts/spec/waivers.yaml",
                 "moe_cts/binding/torch_npu_schemas.yaml"):
        assert must in names, f"{must} missing from {installed[0].name}"


def test_installed_copy_is_the_one_used(installed):
    _, env_dir, tmp = installed
    out = subprocess.run([str(env_dir / "bin" / "python"), "-c", "import moe_cts; print(moe_cts.__file__)"],
                         cwd=tmp, capture_output=True, text=True, check=True).stdout.strip()
    assert str(env_dir) in out and str(ROOT) not in out, out


def test_installed_check_and_list(installed):
    r = _run(installed, "check", "--product", "A3", "--set", "ep_world_size=8", "--set", "moe_expert_num=16",
             "--set", "bs=8", "--set", "h=7168", "--set", "k=8")
    assert r.returncode == 0 and "LEGAL" in r.stdout, r.stdout + r.stderr
    r = _run(installed, "check", "--product", "A3", "--set", "ep_world_size=8", "--set", "moe_expert_num=16",
             "--set", "bs=8", "--set", "h=7168", "--set", "k=17")
    assert r.returncode == 1 and "any.k.range" in r.stdout, r.stdout + r.stderr
    r = _run(installed, "list", "--tier", "smoke")
    assert r.returncode == 0 and "A3-legal-base" in r.stdout, r.stderr
    r = _run(installed, "coverage")
    assert "combine.oriX.required" in r.stdout, r.stdout[-2000:] + r.stderr
