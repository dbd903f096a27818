"""Runs csrc/sanitize.sh: deepencoder._C rebuilt with ASan + UBSan in a temporary directory (the
in-place build is untouched) and driven by csrc/sanitize_driver.py. About 35 s on 2 cores."""

import os
import shutil
import subprocess
import sys

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SCRIPT = os.path.join(ROOT, "csrc", "sanitize.sh")


def _have_asan() -> bool:
    cxx = os.environ.get("CXX", "g++")
    if shutil.which(cxx) is None or shutil.which("bash") is None:
        return False
    r = subprocess.run([cxx, "-print-file-name=libasan.so"], capture_output=True, text=True)
    return r.returncode == 0 and os.path.isabs(r.stdout.strip()) and os.path.exists(r.stdout.strip())


@pytest.mark.slow
@pytest.mark.xdist_group("csrc_sanitize")
@pytest.mark.skipif(not _have_asan(), reason="needs g++ with libasan (AddressSanitizer runtime)")
def test_extension_is_clean_under_asan_ubsan():
    r = subprocess.run(["bash", SCRIPT, sys.executable], cwd=ROOT, capture_output=True, text=True, timeout=240)
    out = r.stdout + r.stderr
    assert r.returncode == 0, f"csrc/sanitize.sh failed ({r.returncode}):\n{out[-6000:]}"
    assert "sanitize: OK" in out and "cases + error paths OK" in out, out[-3000:]
