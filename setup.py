"""Build script: maps the repo's folders into the ``deepencoder`` namespace and builds ``deepencoder._C``.

* ``kernels/`` ships as ``deepencoder.kernels`` (never as a top-level ``kernels``: a PyPI package owns
  that name and transformers imports it).
* ``bench/`` ships as ``deepencoder.bench`` so ``deepencoder bench`` works from an installed wheel.
* ``csrc/*.cpp`` builds into ``deepencoder._C`` with pybind11. The build is optional: when no compiler
  is present or it fails, the package installs without it and falls back to the Python preprocessing
  path (with a visible notice at import time).
"""

import glob
import os
import sys

from setuptools import find_packages, setup
from setuptools.command.build_ext import build_ext

HERE = os.path.dirname(os.path.abspath(__file__))


# (installed name, source folder); a folder without __init__.py is not shipped
_MAPPED = [("deepencoder.kernels", "kernels"), ("deepencoder.bench", "bench")]


def _mapped():
    return [(name, src) for name, src in _MAPPED if os.path.exists(os.path.join(HERE, src, "__init__.py"))]


def _packages():
    pkgs = ["deepencoder"] + ["deepencoder." + p for p in find_packages("deepencoder")]
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


class OptionalBuildExt(build_ext):
    """Builds the C++ extension if it can; never fails the install because of it."""

    def run(self):
        try:
            super().run()
        except Exception as e:  # noqa: BLE001 - any build failure falls back to Python
            print(f"WARNING: deepencoder._C was not built ({e}); the Python preprocessing path will be used.",
                  file=sys.stderr)

    def build_extension(self, ext):
        try:
            super().build_extension(ext)
        except Exception as e:  # noqa: BLE001
            print(f"WARNING: building {ext.name} failed ({e}); the Python preprocessing path will be used.",
                  file=sys.stderr)


def _ext_modules():
    sources = sorted(glob.glob(os.path.join("csrc", "*.cpp")))
    if not sources or os.environ.get("DEEPENCODER_NO_EXT") == "1":
        return []
    try:
        from pybind11.setup_helpers import Pybind11Extension
    except ImportError:
        print("WARNING: pybind11 is missing; deepencoder._C will not be built.", file=sys.stderr)
        return []
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
    package_data={"deepencoder.optical": ["fonts/*.ttf", "fonts/*.txt"],
                  "deepencoder.bench": ["schema.json", "gpu_suite.sh"]},
    ext_modules=_ext_modules(),
    cmdclass={"build_ext": OptionalBuildExt},
    zip_safe=False,
)
