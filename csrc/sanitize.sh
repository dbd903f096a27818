#!/usr/bin/env bash
# Build deepencoder._C with AddressSanitizer + UndefinedBehaviorSanitizer into a temporary directory
# (the normal in-place build is never touched) and run csrc/sanitize_driver.py against it.
# Usage: bash csrc/sanitize.sh [PYTHON]     Exit status: 0 clean, non-zero on a build failure,
# a failed check, or any sanitizer report. Run by `make sanitize` (its own CI step in .ci/run, with its
# own time limit: the instrumented build takes minutes on a busy machine, and no test verdict waits on it).
set -euo pipefail
PY=${1:-python3}
if [[ "${DEEPENCODER_NO_EXT:-}" == "1" ]]; then
    echo "sanitize: skipped (DEEPENCODER_NO_EXT=1: no C++ extension on this machine)"
    exit 0
fi
ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
CXX_BIN=${CXX:-g++}
TMP=$(mktemp -d "${TMPDIR:-/tmp}/deepencoder-sanitize.XXXXXX")
trap 'rm -rf "$TMP"' EXIT
cd "$ROOT"

echo "sanitize: building deepencoder._C with -fsanitize=address,undefined in $TMP"
build_rc=0
DEEPENCODER_SANITIZE=1 "$PY" setup.py -q build_ext --build-lib "$TMP/lib" --build-temp "$TMP/build" \
    >"$TMP/build.log" 2>&1 || build_rc=$?
SO=$(ls "$TMP"/lib/deepencoder/_C*.so 2>/dev/null | head -n1 || true)
if [[ $build_rc -ne 0 || -z "$SO" ]]; then
    cat "$TMP/build.log" >&2
    echo "sanitize: FAILED to build the sanitized extension" >&2
    exit 2
fi

LIBASAN=$("$CXX_BIN" -print-file-name=libasan.so)
if [[ ! -e "$LIBASAN" ]]; then
    echo "sanitize: libasan.so not found (via $CXX_BIN -print-file-name)" >&2
    exit 2
fi

# libstdc++ is preloaded too: python does not link it, and ASan's __cxa_throw interceptor must find it
# at start-up or the first C++ exception (the extension's error paths) aborts the process.
LIBSTDCXX=$("$CXX_BIN" -print-file-name=libstdc++.so)

echo "sanitize: running csrc/sanitize_driver.py against $(basename "$SO")"
set +e
LD_PRELOAD="$LIBASAN $LIBSTDCXX" \
ASAN_OPTIONS="detect_leaks=0:halt_on_error=1:abort_on_error=0:exitcode=86:allocator_may_return_null=1" \
UBSAN_OPTIONS="halt_on_error=1:print_stacktrace=1:exitcode=87" \
    "$PY" "$ROOT/csrc/sanitize_driver.py" "$SO" 2>"$TMP/run.err"
rc=$?
set -e
cat "$TMP/run.err" >&2
if grep -qE "ERROR: AddressSanitizer|runtime error:|UndefinedBehaviorSanitizer" "$TMP/run.err"; then
    echo "sanitize: sanitizer report found" >&2
    exit 3
fi
if [[ $rc -ne 0 ]]; then
    echo "sanitize: driver failed with status $rc" >&2
    exit $rc
fi
echo "sanitize: OK"
