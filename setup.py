"""Build script: maps the repo's folders into the ``deepencoder`` namespace and builds ``deepencoder._C``.

* ``kernels/`` ships as ``deepencoder.kernels`` (never as a top-level ``kernels``: a PyPI package owns
  that name and transformers imports it).
* ``bench/`` ships as ``deepencoder.bench`` so ``deepencoder bench`` works from an installed wheel.
* ``csrc/*.cpp`` builds into ``deepencoder._C`` with pybind11. A failed build fails the install, so a
  broken C++ engine can never hide behind the Python fallback; on a machine without a C++ compiler,
  ``DEEPENCODER_NO_EXT=1`` installs without it (preprocessing then runs on the Python path, and the
  test suite must be run with the same variable, see ``tests/test_preprocess.py``).
* ``deepencoder/optical/fonts`` (no ``__init__.py``: data only) is listed as a package so setuptools
  ships its files as package data without a warning.
"""

import glob
import os
import sys

from setuptools import find_namespace_packages, find_packages, setup
from setuptools.command.build_ext import build_ext

HERE = os.path.dirname(os.path.abspath(__file__))


# (installed name, source folder); a folder without __init__.py is not shipped
_MAPPED = [("deepencoder.kernels", "kernels"), ("deepencoder.bench", "bench")]


def _mapped():
    return [(name, src) for name, src in _MAPPED if os.path.exists(os.path.join(HERE, src, "__init__.py"))]


def _packages():
    # data-only folders (the renderer's fonts) are namespace packages: listing them is how setuptools
    # wants package data in a folder without __init__.py
    pkgs = ["deepencoder"] + ["deepencoder." + p for p in find_namespace_packages("deepencoder", exclude=["*__pycache__*"])]
    for name, src in _mapped():
        pkgs += [name] + [name + "." + p for p in find_packages(src)]
    return pkgs


def _package_dir():
    d = {"deepencoder": "deepencoder"}
    for name, src in _mapped():
        d[name] = src
        for p in find_packages(src):
            d[name + "." + p] = os.path.join(src, *p.split("."))
    return d


class BuildExt(build_ext):
    """Builds the C++ extension; a failure fails the install with a line saying how to opt out."""

    def build_extension(self, ext):
        try:
            super().build_extension(ext)
        except Exception as e:
            print(f"ERROR: building {ext.name} failed ({e}). Install a C++17 compiler, or set "
                  "DEEPENCODER_NO_EXT=1 to install without it (slower Python preprocessing).", file=sys.stderr)
            raise


def _ext_modules():
    sources = sorted(glob.glob(os.path.join("csrc", "*.cpp")))
    if os.environ.get("DEEPENCODER_NO_EXT") == "1":
        print("NOTE: DEEPENCODER_NO_EXT=1: deepencoder._C is not built.", file=sys.stderr)
        return []
    if not sources:
        sys.exit("ERROR: csrc/*.cpp not found; set DEEPENCODER_NO_EXT=1 to install without deepencoder._C")
    try:
        from pybind11.setup_helpers import Pybind11Extension
    except ImportError:
        sys.exit("ERROR: pybind11 is missing (a build requirement in pyproject.toml); install it, or set "
                 "DEEPENCODER_NO_EXT=1 to install without deepencoder._C")
    extra_compile = ["-O3", "-std=c++17", "-pthread"]
    extra_link = ["-pthread"]
    if os.environ.get("DEEPENCODER_SANITIZE") == "1":
        extra_compile = ["-O1", "-g", "-std=c++17", "-pthread", "-fsanitize=address,undefined",
                         "-fno-omit-frame-pointer", "-fno-sanitize-recover=undefined"]
        extra_link = ["-pthread", "-fsanitize=address,undefined"]
    return [Pybind11Extension("deepencoder._C", sources, include_dirs=["csrc"],
                              extra_compile_args=extra_compile, extra_link_args=extra_link)]


setup(
    packages=_packages(),
    package_dir=_package_dir(),
    package_data={"deepencoder.optical.fonts": ["*.ttf", "*.txt"],
                  "deepencoder.bench": ["schema.json", "gpu_suite.sh"]},
    ext_modules=_ext_modules(),
    cmdclass={"build_ext": BuildExt},
    zip_safe=False,
)
