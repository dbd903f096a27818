"""The sanitizer check's plumbing, without the sanitizers.

The ASan + UBSan run itself (csrc/sanitize.sh: deepencoder._C rebuilt instrumented, then driven by
csrc/sanitize_driver.py) is `make sanitize`, its own CI step in .ci/run with its own time limit: it once
ran here under a 240 s wall-clock kill and failed on a busy machine for no fault of the code. What stays
here is quick and speed-independent: the driver (every mode of both families, strides, bit depths,
threads, kernel sets, error paths, pixels against PIL) passes against the regular in-place build, so a
broken driver shows up in `make test` and not only in the sanitize step; and .ci/run runs both steps and
fails when either does.
"""

import os
import subprocess
import sys

import pytest

from deepencoder import preprocess as P

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
DRIVER = os.path.join(ROOT, "csrc", "sanitize_driver.py")


@pytest.mark.skipif(not P.cpp_available(), reason="deepencoder._C not importable (see test_preprocess.py)")
def test_sanitize_driver_passes_on_the_regular_build():
    so = P._C.__file__
    # the timeout only guards against a hang (the driver takes seconds); it is not a speed verdict
    r = subprocess.run([sys.executable, DRIVER, so], cwd=ROOT, capture_output=True, text=True, timeout=1800)
    assert r.returncode == 0, f"sanitize_driver.py failed ({r.returncode}):\n{(r.stdout + r.stderr)[-6000:]}"
    assert "cases + error paths OK" in r.stdout, r.stdout[-3000:]


def _fake_make(tmp_path, test_rc, sanitize_rc):
    """A copy of .ci/run beside a stub `make` that records its targets and exits with the given codes."""
    ci = tmp_path / "repo" / ".ci"
    ci.mkdir(parents=True)
    (ci / "run").write_text(open(os.path.join(ROOT, ".ci", "run")).read())
    bindir = tmp_path / "bin"
    bindir.mkdir()
    log = tmp_path / "make.log"
    (bindir / "make").write_text(f'#!/bin/sh\necho "$1" >> {log}\n'
                                 f'[ "$1" = test ] && exit {test_rc}\n[ "$1" = sanitize ] && exit {sanitize_rc}\n'
                                 'exit 99\n')
    (bindir / "make").chmod(0o755)
    env = dict(os.environ, PATH=f"{bindir}{os.pathsep}{os.environ['PATH']}")
    r = subprocess.run(["bash", str(ci / "run")], env=env, capture_output=True, text=True, timeout=600)
    return r.returncode, log.read_text().split()


@pytest.mark.parametrize("test_rc,sanitize_rc", [(0, 0), (1, 0), (0, 3), (2, 86)])
def test_ci_runs_both_steps_and_fails_if_either_fails(tmp_path, test_rc, sanitize_rc):
    rc, targets = _fake_make(tmp_path, test_rc, sanitize_rc)
    assert targets == ["test", "sanitize"]
    assert (rc == 0) == (test_rc == 0 and sanitize_rc == 0), rc
