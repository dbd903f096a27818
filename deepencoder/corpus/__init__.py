"""Corpus-scale encoding: PDFs and images in, sharded tokens and a Parquet manifest out, resumable.

    deepencoder encode-corpus scans/ more.pdf:1-20 @list.txt --out corpus/ --mode gundam

Python::

    from deepencoder.corpus import CorpusOptions, run_corpus, read_manifest, load_page_tokens
    code = run_corpus(CorpusOptions(inputs=["scans/"], out="corpus/"))

Modules: :mod:`.plan` (global page order, chunks), :mod:`.stages` (decode, preprocess, encode),
:mod:`.local` (the default engine), :mod:`.ray_engine` (Ray Data), :mod:`.store` (shards, manifest,
commit and resume rules, run.json), :mod:`.job` (one run, whatever the engine), :mod:`.cli`.
"""

from .job import CorpusError, CorpusOptions, run_corpus  # noqa: F401
from .store import load_page_tokens, manifest_digest, read_manifest  # noqa: F401

__all__ = ["CorpusOptions", "CorpusError", "run_corpus", "read_manifest", "load_page_tokens", "manifest_digest"]
