"""Packaging: a wheel built from the repo installs ``deepencoder.kernels`` and no top-level ``kernels``."""

import os
import subprocess
import sys
import sysconfig
import zipfile

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


@pytest.mark.slow
def test_wheel_installs_kernels_inside_namespace(tmp_path):
    wheel_dir = tmp_path / "wheels"
    env = dict(os.environ, DEEPENCODER_NO_EXT="1")  # the C++ build is tested elsewhere; keep this fast
    subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q",
                    "-w", str(wheel_dir), ROOT], check=True, env=env, cwd=tmp_path)
    wheels = list(wheel_dir.glob("deepencoder-*.whl"))
    assert len(wheels) == 1
    names = zipfile.ZipFile(wheels[0]).namelist()
    assert "deepencoder/kernels/__init__.py" in names
    assert "deepencoder/kernels/_common.py" in names
    assert "deepencoder/optical/fonts/DejaVuSansMono.ttf" in names  # package data (the renderer's font)
    assert "deepencoder/bench/__init__.py" in names and "deepencoder/bench/schema.json" in names
    assert not any(n.startswith("kernels/") for n in names), "a top-level 'kernels' package would shadow PyPI's"
    assert any(n.startswith("deepencoder-") and n.endswith("entry_points.txt") for n in names)

    # a clean venv (no site packages); torch & co. come from this interpreter's site-packages appended
    # to sys.path at run time, which does not process its .pth files (so the editable install is not seen)
    venv = tmp_path / "clean"
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True)
    py = venv / "bin" / "python"
    subprocess.run([str(py), "-m", "pip", "install", "-q", "--no-deps", "--no-index", str(wheels[0])], check=True)
    purelib = sysconfig.get_paths()["purelib"]
    code = (
        "import sys, os, importlib.util; sys.path.append(%r)\n"
        "import deepencoder, deepencoder.kernels, deepencoder.kernels.clip_attention\n"
        "assert deepencoder.__file__.startswith(%r), deepencoder.__file__\n"
        "assert importlib.util.find_spec('kernels') is None, 'top-level kernels importable'\n"
        "print('ok', deepencoder.kernels.__file__)\n" % (purelib, str(venv))
    )
    r = subprocess.run([str(py), "-c", code], capture_output=True, text=True, cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    assert "ok" in r.stdout and str(venv) in r.stdout
    site = subprocess.run([str(py), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
                          capture_output=True, text=True, check=True).stdout.strip()
    assert os.path.isdir(os.path.join(site, "deepencoder", "kernels"))
    assert not os.path.exists(os.path.join(site, "kernels"))


def test_license_is_an_spdx_string_and_the_build_needs_a_setuptools_that_reads_it():
    """A table-style ``license`` printed a deprecation banner at every install; the SPDX string needs
    setuptools >= 77 (older ones reject it), so the build requirement says so."""
    tomllib = pytest.importorskip("tomllib")  # Python >= 3.11
    with open(os.path.join(ROOT, "pyproject.toml"), "rb") as f:
        cfg = tomllib.load(f)
    assert cfg["project"]["license"] == "MIT"
    assert "setuptools>=77" in cfg["build-system"]["requires"]
