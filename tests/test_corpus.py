"""deepencoder.corpus: shards + manifest, bad pages recorded, resume after SIGKILL / SIGINT / a crash
between the two renames (byte-identical shards), reruns refused on changed options, the queue bound,
and the Ray engine (local Ray, 2 CPUs) giving the local engine's exact bytes.

Small config, mode tiny, CPU, one torch thread everywhere (this process and the subprocesses) so the
runs compared byte for byte do the same arithmetic.
"""

import os
import shutil
import signal
import subprocess
import sys
import time

import pytest
import torch
from PIL import Image

from deepencoder.corpus import CorpusError, CorpusOptions, manifest_digest, read_manifest, run_corpus, store
from tests.test_sources import broken_page_pdf, encrypted_pdf, solid_pdf

BASE = dict(mode="tiny", config="small-test", batch_pages=2, shard_pages=4, workers=0, progress_interval=-1)
# folder order (sorted): a.pdf b.png bad.png c.tif corrupt.pdf d.pdf enc.pdf half.pdf
EXPECTED = [("a.pdf", 1), ("a.pdf", 2), ("a.pdf", 3), ("b.png", 1), ("bad.png", 1), ("c.tif", 1), ("c.tif", 2),
            ("corrupt.pdf", 0), ("d.pdf", 1), ("d.pdf", 2), ("d.pdf", 3), ("d.pdf", 4), ("enc.pdf", 0),
            ("half.pdf", 1), ("half.pdf", 2)]
FAILED = {"bad.png": "bad.png", "corrupt.pdf": "cannot open PDF", "enc.pdf": "encrypted", "half.pdf": "page 2"}


@pytest.fixture(autouse=True)
def one_thread():
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    d = tmp_path_factory.mktemp("corpus")
    solid_pdf(d / "a.pdf", [(100, 140), (140, 100), (60, 60)])
    Image.new("RGB", (90, 70), (10, 120, 200)).save(d / "b.png")
    (d / "bad.png").write_bytes(b"\x89PNG\r\n\x1a\n truncated")
    frames = [Image.new("RGB", (50, 80), (200, 200, 0)), Image.new("RGB", (80, 50), (0, 60, 60))]
    frames[0].save(d / "c.tif", save_all=True, append_images=frames[1:])
    (d / "corrupt.pdf").write_bytes(b"%PDF-1.4\n 1 0 obj garbage\n")
    solid_pdf(d / "d.pdf", [(70, 100), (100, 70), (120, 120), (40, 90)])
    encrypted_pdf(d / "enc.pdf")
    broken_page_pdf(d / "half.pdf")
    return d


def _opts(inputs, out, **kw):
    return CorpusOptions(inputs=[str(x) for x in inputs], out=str(out), **{**BASE, **kw})


def _files(out):
    return sorted(os.path.relpath(os.path.join(r, f), out) for r, _, fs in os.walk(out) for f in fs)


def _shard_bytes(out):
    return {f: open(os.path.join(out, f), "rb").read() for f in sorted(os.listdir(out)) if f.startswith("tokens-")}


@pytest.fixture(scope="module")
def reference_run(corpus, tmp_path_factory):
    """An uninterrupted run: the corpus every interrupted run is compared with."""
    out = tmp_path_factory.mktemp("ref") / "out"
    logs = []
    torch.set_num_threads(1)
    rc = run_corpus(_opts([corpus], out), log=logs.append)
    return out, rc, logs


def test_manifest_rows_failures_and_tokens(corpus, reference_run):
    out, rc, logs = reference_run
    assert rc == 1  # some pages failed: non-zero exit after the whole run
    t = read_manifest(out)
    assert t.schema.names == store.MANIFEST_COLUMNS
    rows = t.to_pylist()
    assert [(os.path.basename(r["source"]), r["page"]) for r in rows] == EXPECTED
    assert [r["index"] for r in rows] == list(range(len(EXPECTED)))
    for r in rows:
        name = os.path.basename(r["source"])
        bad = name in FAILED and (name != "half.pdf" or r["page"] == 2)
        assert r["status"] == ("failed" if bad else "ok"), r
        if bad:
            assert FAILED[name] in r["error"] and name in r["error"] and r["offset"] is None
        else:
            assert r["error"] is None and r["num_tokens"] == 73 and r["mode"] == "tiny"
            assert (r["grid_cols"], r["grid_rows"]) == (1, 1) and r["seconds"] > 0
    assert [(r["width"], r["height"]) for r in rows[:3]] == [(200, 280), (280, 200), (120, 120)]  # 144 dpi
    # shards close at the first chunk boundary holding >= 4 pages: 4 + 4 + 4 + 3 rows
    assert _files(out) == ["manifest.parquet", "manifest/part-00000.parquet", "manifest/part-00001.parquet",
                           "manifest/part-00002.parquet", "manifest/part-00003.parquet", "run.json",
                           "tokens-00000.safetensors", "tokens-00001.safetensors", "tokens-00002.safetensors",
                           "tokens-00003.safetensors"]  # and no temporary file
    assert [r["shard"] for r in rows] == [store.shard_name(i // 4) for i in range(len(rows))]
    assert any("4 page(s) FAILED" in m for m in logs) and any("SEEDED RANDOM" in m for m in logs)
    # tokens: chunk 0 (a.pdf pages 1-2) is one encoder batch; encoding the same pages directly agrees bit for bit
    from deepencoder import DeepEncoder, DeepEncoderConfig
    from deepencoder.sources import load_page

    enc = DeepEncoder(config=DeepEncoderConfig.small_test(), device="cpu", dtype="float32", backend="reference", seed=0)
    direct = enc.encode([load_page(str(corpus / "a.pdf"), 1), load_page(str(corpus / "a.pdf"), 2)], mode="tiny")
    for r, d in zip(rows[:2], direct):
        got = store.load_page_tokens(str(out), r)
        assert got.shape == (73, 96)
        torch.testing.assert_close(got, d.tokens, rtol=0, atol=0)
    import json

    run = json.load(open(out / "run.json"))
    assert run["random_weights"] is True and run["options"]["weights"] == "random:seed=0"
    assert run["options"]["mode"] == "tiny" and "torch" in run["versions"]


def test_second_run_does_no_work_and_changed_options_are_refused(corpus, reference_run, tmp_path, monkeypatch):
    ref, _, _ = reference_run
    out = tmp_path / "out"
    shutil.copytree(ref, out)
    before = {f: os.stat(out / f).st_mtime_ns for f in _files(out)}
    import deepencoder.corpus.job as job

    monkeypatch.setattr(job, "build_encoder", lambda *a, **k: pytest.fail("a finished corpus loaded the encoder"))
    logs = []
    assert run_corpus(_opts([corpus], out), log=logs.append) == 1  # the failures are still reported
    assert any("nothing to do" in m for m in logs)
    assert {f: os.stat(out / f).st_mtime_ns for f in _files(out)} == before
    with pytest.raises(CorpusError, match=r"different options: --mode was 'tiny', now 'small'"):
        run_corpus(_opts([corpus], out, mode="small"))
    with pytest.raises(CorpusError, match=r"--shard-pages was 4, now 8"):
        run_corpus(_opts([corpus], out, shard_pages=8))
    with pytest.raises(CorpusError, match="inputs differ"):
        run_corpus(_opts([corpus / "a.pdf"], out))


def test_crash_between_renames_and_leftover_temporaries(corpus, reference_run, tmp_path):
    """Killed after shard 2's rename but before its part's, with shard 3 half written: the next run keeps
    shard 2 as it is (rebuilds the part from its header), removes the temporary, redoes shard 3."""
    ref, _, _ = reference_run
    out = tmp_path / "out"
    shutil.copytree(ref, out)
    for f in ("manifest.parquet", store.part_name(2), store.part_name(3), store.shard_name(3)):
        os.remove(out / f)
    (out / (store.shard_name(3) + ".tmp-4242")).write_bytes(b"half a shard")
    inode = os.stat(out / store.shard_name(2)).st_ino
    mtime = os.stat(out / store.shard_name(2)).st_mtime_ns
    logs = []
    assert run_corpus(_opts([corpus], out), log=logs.append) == 1
    assert any("removed 1 temporary" in m for m in logs)
    assert (os.stat(out / store.shard_name(2)).st_ino, os.stat(out / store.shard_name(2)).st_mtime_ns) == (inode, mtime)
    assert _files(out) == _files(ref)
    assert _shard_bytes(out) == _shard_bytes(ref)
    assert manifest_digest(str(out)) == manifest_digest(str(ref))
    secs = read_manifest(str(out)).column("seconds").to_pylist()
    assert all(s is None for s in secs[8:12]) and all(s is not None for s in secs[:8])


def test_finished_shard_is_never_rewritten(tmp_path):
    rows = [{"index": 0, "source": "x.png", "page": 1, "status": "ok", "offset": 0, "num_tokens": 2}]
    store.write_shard(str(tmp_path), 0, rows, [torch.ones(2, 3)], 3, torch.float32)
    with pytest.raises(FileExistsError, match="never rewritten"):
        store.write_shard(str(tmp_path), 0, rows, [torch.ones(2, 3)], 3, torch.float32)


def _cli(corpus, out, workers):
    env = dict(os.environ, OMP_NUM_THREADS="1", MKL_NUM_THREADS="1")
    cmd = [sys.executable, "-m", "deepencoder.cli", "encode-corpus", str(corpus), "--out", str(out), "--mode", "tiny",
           "--config", "small-test", "--batch-pages", "2", "--shard-pages", "2", "--workers", str(workers)]
    return subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            cwd=os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def _wait_for(path, proc, timeout=120):
    t0 = time.monotonic()
    while not os.path.exists(path):
        assert proc.poll() is None, f"run ended before {path} appeared: {proc.communicate()[1][-2000:]}"
        assert time.monotonic() - t0 < timeout, f"{path} did not appear"
        time.sleep(0.02)


def test_sigkill_then_sigint_then_resume_is_byte_identical(corpus, tmp_path):
    ref = tmp_path / "ref"
    assert run_corpus(_opts([corpus], ref, shard_pages=2), log=lambda m: None) == 1  # 8 shards of 2 pages
    out = tmp_path / "out"
    p = _cli(corpus, out, workers=1)  # decode in a worker process
    _wait_for(out / store.part_name(0), p)
    p.send_signal(signal.SIGKILL)
    p.wait()
    assert p.returncode == -signal.SIGKILL
    killed_at = len([f for f in os.listdir(out) if f.startswith("tokens-") and ".tmp-" not in f])
    assert 1 <= killed_at < 8
    p = _cli(corpus, out, workers=0)
    _wait_for(out / store.part_name(killed_at), p)
    p.send_signal(signal.SIGINT)
    _, err = p.communicate(timeout=120)
    assert p.returncode == 130, err
    assert "Traceback" not in err and err.strip().splitlines()[-1].startswith("deepencoder: interrupted;")
    assert not [f for f in _files(out) if ".tmp-" in f]  # Ctrl-C leaves no partial file
    assert not os.path.exists(out / "manifest.parquet")
    logs = []
    assert run_corpus(_opts([corpus], out, shard_pages=2), log=logs.append) == 1
    assert any("resuming" in m for m in logs)
    assert _files(out) == _files(ref)
    assert _shard_bytes(out) == _shard_bytes(ref)
    assert manifest_digest(str(out)) == manifest_digest(str(ref))


def test_queue_depth_bounds_chunks_in_flight(monkeypatch):
    """Memory is bounded by the queue depth: with a slow encoder, at most ~2 * depth + 2 chunks exist
    between decode and encode however many chunks the corpus has."""
    from deepencoder.corpus import local
    from deepencoder.corpus.plan import Plan
    from deepencoder.sources import Document

    live, peak = [0], [0]

    def decode(items, dpi):
        live[0] += 1
        peak[0] = max(peak[0], live[0])
        return [(it.index, None, "x", 0.0) for it in items]

    def encode(enc, prep, dtype):
        time.sleep(0.002)
        live[0] -= 1
        return [{"index": it.index, "status": "failed"} for it in prep], []

    monkeypatch.setattr(local, "decode_chunk", decode)
    monkeypatch.setattr(local, "preprocess_chunk", lambda items, *a: items)
    monkeypatch.setattr(local, "encode_chunk", encode)
    plan = Plan([Document("x.png", "image", (1,), 1)] * 400, batch_pages=1)

    class Enc:
        device, dtype = torch.device("cpu"), torch.float32

    got = []
    local.run_local(plan, range(plan.n_chunks), Enc(), BASE_STAGE, lambda r, t: got.extend(r), workers=0, depth=3)
    assert [r["index"] for r in got] == list(range(400))  # in order, none lost
    assert peak[0] <= 2 * 3 + 2


class _Stage:
    dpi, mode, max_tiles, family, store_dtype = 144, "tiny", 9, "ocr1", torch.float32


BASE_STAGE = _Stage()


@pytest.mark.ray
def test_ray_engine_gives_the_local_engines_bytes(corpus, tmp_path):
    import ray  # the test extra installs it: a missing Ray fails here rather than skipping
    inputs = [corpus / "a.pdf", corpus / "corrupt.pdf", corpus / "b.png"]
    local_out, ray_out = tmp_path / "local", tmp_path / "ray"
    assert run_corpus(_opts(inputs, local_out), log=lambda m: None) == 1
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False,
             runtime_env={"env_vars": {"OMP_NUM_THREADS": "1"}})
    try:
        import ray.data

        ray.data.DataContext.get_current().enable_progress_bars = False
        assert run_corpus(_opts(inputs, ray_out, engine="ray", cpu_tasks=1), log=lambda m: None) == 1
    finally:
        ray.shutdown()
    assert _files(ray_out) == _files(local_out)
    assert _shard_bytes(ray_out) == _shard_bytes(local_out)
    assert manifest_digest(str(ray_out)) == manifest_digest(str(local_out))


def test_error_mid_run_is_one_line_keeps_shards_and_resumes(corpus, reference_run, tmp_path, monkeypatch):
    from deepencoder.corpus import local

    ref, _, _ = reference_run
    out = tmp_path / "out"
    real = local.encode_chunk

    def failing(enc, prep, dtype):
        if prep.items[0].index >= 8:
            raise RuntimeError("CUDA out of memory (simulated)\nsecond line")
        return real(enc, prep, dtype)

    monkeypatch.setattr(local, "encode_chunk", failing)
    logs = []
    assert run_corpus(_opts([corpus], out), log=logs.append) == 3
    assert "RuntimeError: CUDA out of memory (simulated) second line" in logs[-1] and "2 finished shard(s)" in logs[-1]
    assert _files(out) == ["manifest/part-00000.parquet", "manifest/part-00001.parquet", "run.json",
                           "tokens-00000.safetensors", "tokens-00001.safetensors"]
    monkeypatch.setattr(local, "encode_chunk", real)
    assert run_corpus(_opts([corpus], out), log=logs.append) == 1
    assert _shard_bytes(out) == _shard_bytes(ref)
    assert manifest_digest(str(out)) == manifest_digest(str(ref))


def test_ocr2_corpus_matches_direct_encode(corpus, tmp_path):
    """encode-corpus with the OCR-2 family: family defaults (gundam, MAX 6), 257 tokens per small page,
    tokens equal to DeepEncoder(family="ocr2").encode on the same page, family recorded in run.json; a rerun
    with the other family is refused."""
    import json

    from deepencoder import DeepEncoder
    from deepencoder.config import DeepEncoderV2Config
    from deepencoder.corpus import load_page_tokens

    out = tmp_path / "out2"
    src = [corpus / "b.png"]
    assert run_corpus(_opts(src, out, model="ocr2", mode=None), log=lambda m: None) == 0
    rows = read_manifest(out).to_pylist()
    assert len(rows) == 1 and rows[0]["status"] == "ok"
    assert rows[0]["mode"] == "gundam" and rows[0]["num_tokens"] == 257  # 90x70: no crops
    run = json.loads((out / "run.json").read_text())
    assert run["options"]["model"] == "ocr2" and run["options"]["max_tiles"] == 6
    enc = DeepEncoder(DeepEncoderV2Config.small_test(), device="cpu", dtype="float32", backend="reference")
    want = enc.encode([str(corpus / "b.png")])[0].tokens
    torch.testing.assert_close(load_page_tokens(str(out), rows[0]).float(), want, rtol=0, atol=0)
    with pytest.raises(CorpusError, match="different options"):
        run_corpus(_opts(src, out, model="ocr1", mode=None), log=lambda m: None)
