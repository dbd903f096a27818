"""The corpus on disk: shards, manifest parts, the manifest, ``run.json``; commit and resume rules.

Layout of ``OUT/``::

    run.json                          options, config, weights fingerprint, versions (written once)
    tokens-00000.safetensors          shard: "tokens" [N, n_embed] (pages concatenated), "pages" [n, 3]
    manifest/part-00000.parquet       the manifest rows of shard 00000 (every page, failed ones too)
    manifest.parquet                  all parts, in order (rebuilt when a run completes)

**Commit rule.** A shard is written to ``tokens-K.safetensors.tmp-PID``, flushed, fsynced and renamed;
then its manifest part the same way. The part's rename is the commit point. Shards cover whole chunks of
the global page sequence and are committed in order, so the finished shards are always a prefix; a
resumed run starts at the first page after it. A finished shard is never opened for writing again.

**Crash windows.** Killed mid-write: a ``*.tmp-*`` file is left and removed by the next run (nothing
else is ever named so). Killed between the two renames: the shard is complete and its header holds
every manifest field but ``seconds``, so the next run rebuilds the part from it (``seconds`` null)
instead of rewriting the shard.

**Determinism.** Shard bytes depend only on the pages, the options and the weights: no timestamps, the
header's metadata is one sorted-key JSON string, batches are the plan's fixed chunks. The manifest's
columns are the same deterministic fields plus ``seconds`` (measured wall time). Rule: *an interrupted
and resumed run gives byte-identical shards, and a manifest equal row for row in every column except
``seconds``* (:func:`manifest_digest` hashes exactly those columns).
"""

from __future__ import annotations

import glob
import hashlib
import json
import os
from typing import Dict, List, Optional

import torch

FORMAT = "deepencoder-corpus/1"
MANIFEST_COLUMNS = ["index", "source", "page", "status", "error", "mode", "grid_cols", "grid_rows", "width",
                    "height", "num_tokens", "shard", "offset", "seconds"]
TIMING_COLUMNS = ("seconds",)
_META_KEY = "deepencoder_corpus"


def shard_name(k: int) -> str:
    return f"tokens-{k:05d}.safetensors"


def part_name(k: int) -> str:
    return os.path.join("manifest", f"part-{k:05d}.parquet")


def manifest_schema():
    import pyarrow as pa

    return pa.schema([("index", pa.int64()), ("source", pa.string()), ("page", pa.int32()),
                      ("status", pa.string()), ("error", pa.string()), ("mode", pa.string()),
                      ("grid_cols", pa.int32()), ("grid_rows", pa.int32()), ("width", pa.int32()),
                      ("height", pa.int32()), ("num_tokens", pa.int32()), ("shard", pa.string()),
                      ("offset", pa.int64()), ("seconds", pa.float64())])


def _tmp(path: str) -> str:
    return f"{path}.tmp-{os.getpid()}"


def _fsync_replace(tmp: str, path: str) -> None:
    fd = os.open(tmp, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
    os.replace(tmp, path)


def remove_temporaries(out_dir: str) -> List[str]:
    """Delete ``*.tmp-*`` files a killed run left in ``out_dir`` and ``out_dir/manifest``."""
    gone = []
    for pat in ("*.tmp-*", os.path.join("manifest", "*.tmp-*")):
        for f in glob.glob(os.path.join(out_dir, pat)):
            os.remove(f)
            gone.append(f)
    return gone


def _write_part(out_dir: str, k: int, rows: List[dict]) -> None:
    import pyarrow as pa
    import pyarrow.parquet as pq

    path = os.path.join(out_dir, part_name(k))
    os.makedirs(os.path.dirname(path), exist_ok=True)
    table = pa.Table.from_pylist([{c: r.get(c) for c in MANIFEST_COLUMNS} for r in rows],
                                 schema=manifest_schema())
    tmp = _tmp(path)
    try:
        pq.write_table(table, tmp)
        _fsync_replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.remove(tmp)


def write_shard(out_dir: str, k: int, rows: List[dict], tokens: List[torch.Tensor], n_embed: int,
                dtype: torch.dtype) -> None:
    """Commit shard ``k``: ``rows`` (manifest rows of every page in it, in index order; ok rows carry
    ``offset``/``num_tokens``) and ``tokens`` (the ok pages' ``[T_i, n_embed]`` tensors, same order)."""
    from safetensors.torch import save_file

    path = os.path.join(out_dir, shard_name(k))
    if os.path.exists(path):  # never rewrite a finished shard (resume must have skipped it)
        raise FileExistsError(f"{path} exists: a finished shard is never rewritten")
    flat = (torch.cat([t.to(dtype) for t in tokens]) if tokens else torch.zeros(0, n_embed, dtype=dtype))
    ok = [r for r in rows if r["status"] == "ok"]
    pages = torch.tensor([[r["index"], r["offset"], r["num_tokens"]] for r in ok], dtype=torch.int64)
    det = [{c: r.get(c) for c in MANIFEST_COLUMNS if c not in TIMING_COLUMNS} for r in rows]
    meta = {_META_KEY: json.dumps({"format": FORMAT, "rows": det}, sort_keys=True, separators=(",", ":"))}
    tmp = _tmp(path)
    try:
        save_file({"tokens": flat.contiguous(), "pages": pages.reshape(-1, 3).contiguous()}, tmp, metadata=meta)
        _fsync_replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.remove(tmp)
    _write_part(out_dir, k, rows)


def shard_rows(path: str) -> List[dict]:
    """The manifest rows stored in a shard's header (``seconds`` None)."""
    from safetensors import safe_open

    with safe_open(path, framework="pt") as f:
        meta = json.loads(f.metadata()[_META_KEY])
    return [dict(r, seconds=None) for r in meta["rows"]]


def finished_prefix(out_dir: str) -> Dict[str, int]:
    """Scan ``out_dir``: the number of finished shards (a prefix) and the next page index to encode.

    A shard without its part (killed between the two renames) gets its part rebuilt from its header.
    """
    import pyarrow.parquet as pq

    k, next_index = 0, 0
    while True:
        shard = os.path.join(out_dir, shard_name(k))
        part = os.path.join(out_dir, part_name(k))
        if not os.path.exists(shard):
            break
        if not os.path.exists(part):
            _write_part(out_dir, k, shard_rows(shard))
        idx = pq.read_table(part, columns=["index"]).column("index")
        if len(idx):
            next_index = int(idx[-1].as_py()) + 1
        k += 1
    return {"shards": k, "next_index": next_index}


def write_manifest(out_dir: str, n_shards: int) -> str:
    """Concatenate the parts into ``manifest.parquet`` (one row group per shard; streamed, flat memory)."""
    import pyarrow.parquet as pq

    path = os.path.join(out_dir, "manifest.parquet")
    tmp = _tmp(path)
    try:
        with pq.ParquetWriter(tmp, manifest_schema()) as w:
            for k in range(n_shards):
                w.write_table(pq.read_table(os.path.join(out_dir, part_name(k)), schema=manifest_schema()))
        _fsync_replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.remove(tmp)
    return path


def read_manifest(out_dir: str):
    """The manifest as a ``pyarrow.Table`` (from ``manifest.parquet``, or the parts of a run in progress)."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    path = os.path.join(out_dir, "manifest.parquet")
    if os.path.exists(path):
        return pq.read_table(path)
    parts = sorted(glob.glob(os.path.join(out_dir, "manifest", "part-*.parquet")))
    if not parts:
        return manifest_schema().empty_table()
    return pa.concat_tables([pq.read_table(p, schema=manifest_schema()) for p in parts])


def manifest_digest(out_dir: str) -> str:
    """sha256 over every manifest column except ``seconds``: equal for interrupted+resumed and clean runs."""
    t = read_manifest(out_dir).drop_columns(list(TIMING_COLUMNS))
    return hashlib.sha256(json.dumps(t.to_pylist(), sort_keys=True).encode()).hexdigest()


def load_page_tokens(out_dir: str, row) -> torch.Tensor:
    """``[num_tokens, n_embed]`` of one manifest row (a dict or a pandas row), read lazily from its shard."""
    from safetensors import safe_open

    with safe_open(os.path.join(out_dir, row["shard"]), framework="pt") as f:
        sl = f.get_slice("tokens")
        return sl[int(row["offset"]):int(row["offset"]) + int(row["num_tokens"])]


# ------------------------------------------------------------------------------------------------ run.json

# Options that change the bytes written: a rerun into the same folder must match them all.
OUTPUT_OPTIONS = ("inputs", "inputs_digest", "pages", "dpi", "mode", "max_tiles", "model", "config",
                  "weights", "backend", "device", "dtype", "store_dtype", "batch_pages", "shard_pages",
                  "shard_bytes")


def weights_fingerprint(weights: Optional[str], seed: int, blocks: int = 64, block: int = 1 << 16) -> str:
    """``random:seed=S``, or ``sha256:<hex>`` over each checkpoint file's name, size, safetensors header
    and ``blocks`` evenly spaced blocks of its data: fast on a multi-GB checkpoint (4 MiB read per file),
    and a fine-tune of the same architecture (every weight moved) changes it with near certainty."""
    if weights is None:
        return f"random:seed={seed}"
    from ..weights import checkpoint_files

    h = hashlib.sha256()
    for f in sorted(checkpoint_files(weights)):
        size = os.path.getsize(f)
        h.update(f"{os.path.basename(f)}\0{size}\0".encode())
        with open(f, "rb") as fh:
            head = fh.read(8)
            n = int.from_bytes(head, "little") if len(head) == 8 else 0
            h.update(head + fh.read(min(n, size)))
            start = 8 + n
            for i in range(blocks):
                fh.seek(start + (size - start) * i // blocks)
                h.update(fh.read(block))
    return "sha256:" + h.hexdigest()


def versions() -> Dict[str, str]:
    import platform

    import PIL
    import safetensors

    from .. import __version__

    v = {"deepencoder": __version__, "python": platform.python_version(), "torch": torch.__version__,
         "pillow": PIL.__version__, "safetensors": safetensors.__version__}
    for mod in ("pypdfium2", "pyarrow"):
        try:
            m = __import__(mod)
            v[mod] = getattr(m, "__version__", None) or str(getattr(m.version, "PYPDFIUM_INFO", "?"))
        except ImportError:
            pass
    return v


class OptionsMismatch(ValueError):
    """A rerun into a folder that holds a run with different options."""


def check_or_write_run(out_dir: str, run: dict) -> bool:
    """Write ``run.json`` (first run) or check the options against it. Returns True when resuming.

    Raises OptionsMismatch naming the first differing option.
    """
    path = os.path.join(out_dir, "run.json")
    if os.path.exists(path):
        with open(path, encoding="utf-8") as f:
            old = json.load(f)
        if old.get("format") != FORMAT:
            raise OptionsMismatch(f"{path} is not a {FORMAT} run (format {old.get('format')!r})")
        for key in OUTPUT_OPTIONS:
            a, b = old["options"].get(key), run["options"].get(key)
            if a != b:
                flag = "--" + key.replace("_", "-")
                if key in ("inputs", "inputs_digest"):
                    what = "the inputs differ (files added, removed or changed page counts)"
                else:
                    what = f"{flag} was {a!r}, now {b!r}"
                raise OptionsMismatch(f"{out_dir} holds a run with different options: {what}; "
                                      "rerun with the same options to resume, or use a new --out")
        return True
    os.makedirs(out_dir, exist_ok=True)
    tmp = _tmp(path)
    with open(tmp, "w", encoding="utf-8") as f:
        json.dump(run, f, indent=2, sort_keys=True)
        f.write("\n")
    _fsync_replace(tmp, path)
    return False


__all__ = ["FORMAT", "MANIFEST_COLUMNS", "shard_name", "part_name", "write_shard", "shard_rows",
           "finished_prefix", "write_manifest", "read_manifest", "manifest_digest", "load_page_tokens",
           "remove_temporaries", "check_or_write_run", "weights_fingerprint", "versions", "OptionsMismatch"]
