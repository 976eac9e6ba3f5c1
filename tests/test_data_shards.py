"""Token shards: memmapped, small to pickle, cheap cache hits, streamed reading, epochs."""

from __future__ import annotations

import hashlib
import json
import os
import pickle

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from progtune import corpus as corpus_mod
from progtune import file_hashes
from progtune.batches import planned_epochs
from progtune.cli import main
from progtune.data import prepare_data
from progtune.tokenizer import shard_dtype
from tests.test_data import (
    decoded_docs,
    expect_interleave,
    expect_split,
    settings,
    words_text,
    write_docs,
)


def test_shards_are_memmaps_and_pickle_as_their_path(tmp_path):
    write_docs(tmp_path / "corpus", 6)
    data = prepare_data(settings(corpus=str(tmp_path / "corpus")), tmp_path / "c")
    assert isinstance(data.train, np.memmap) and isinstance(data.val, np.memmap)
    assert data.train.dtype == np.uint16 and not data.train.flags.writeable
    index = json.loads((tmp_path / "c" / f"tokens-{data.fingerprint}" / "index.json").read_text())
    assert (index["train_tokens"], index["val_tokens"]) == (data.train.size, data.val.size)
    blob = pickle.dumps(data)
    assert len(blob) < len(data.tokenizer_json) // 4 + 1_000  # a path, not the tokens
    again = pickle.loads(blob)
    assert isinstance(again.train, np.memmap)
    np.testing.assert_array_equal(again.train, data.train)
    assert again.fingerprint == data.fingerprint and again.tokenizer_json == data.tokenizer_json


def test_shard_dtype_fits_vocabulary():
    assert shard_dtype(65_536) == np.uint16
    assert shard_dtype(65_537) == np.uint32


def test_cache_hit_reads_no_file_and_rehashes_only_changed_ones(tmp_path, monkeypatch):
    write_docs(tmp_path / "corpus", 6)
    s = settings(corpus=str(tmp_path / "corpus"))
    first = prepare_data(s, tmp_path / "c")
    hashed = []
    real_digest = hashlib.file_digest

    def counting_digest(f, name):
        hashed.append(f.name)
        return real_digest(f, name)

    def no_read(*args, **kwargs):
        raise AssertionError("a cache hit read a document")

    monkeypatch.setattr(file_hashes.hashlib, "file_digest", counting_digest)
    monkeypatch.setattr(corpus_mod, "_decode", no_read)
    assert prepare_data(s, tmp_path / "c").fingerprint == first.fingerprint
    assert hashed == []

    doc = tmp_path / "corpus" / "doc02.txt"
    doc.write_text(doc.read_text().replace("ka", "lo", 1))  # same size, new content and mtime
    os.utime(doc, ns=(1, 1))
    monkeypatch.undo()
    monkeypatch.setattr(file_hashes.hashlib, "file_digest", counting_digest)
    changed = prepare_data(s, tmp_path / "c")
    assert hashed == [str(doc.resolve())] or [os.path.basename(h) for h in hashed] == [doc.name]
    assert changed.fingerprint != first.fingerprint


def test_large_single_file_is_read_in_pieces(tmp_path, monkeypatch):
    monkeypatch.setattr(corpus_mod, "LARGE_FILE_BYTES", 20_000)
    monkeypatch.setattr(corpus_mod, "PIECE_BYTES", 4_096)
    big = words_text(7, 60_000) + "é" * 5_000 + "\n" + words_text(8, 2_000)  # a line > a piece
    (tmp_path / "big.txt").write_text(big)
    data = prepare_data(settings(corpus=str(tmp_path / "big.txt"), val_every=2), tmp_path / "c")
    docs = decoded_docs(data) + decoded_docs(data, "val")
    assert all(len(d) <= corpus_mod.CHUNK_BYTES for d in docs)
    assert "".join(expect_interleave(decoded_docs(data), decoded_docs(data, "val"))) == big


def test_max_tokens_cuts_the_stream(tmp_path):
    write_docs(tmp_path / "corpus", 9)
    s = settings(corpus=str(tmp_path / "corpus"))
    whole = prepare_data(s, tmp_path / "c")
    cut = prepare_data(settings(corpus=str(tmp_path / "corpus"), max_tokens=3_000), tmp_path / "c")
    assert cut.train.size + cut.val.size == 3_000 < whole.train.size + whole.val.size
    assert cut.fingerprint != whole.fingerprint


@pytest.mark.parametrize("kind", ["parquet", "json"])
def test_hf_streaming_path_on_local_data_files(tmp_path, monkeypatch, kind):
    datasets = pytest.importorskip("datasets")
    texts = [words_text(i, 200) for i in range(8)]
    path = tmp_path / f"rows.{'parquet' if kind == 'parquet' else 'jsonl'}"
    if kind == "parquet":
        pq.write_table(pa.table({"body": texts, "n": list(range(8))}), path)
    else:
        path.write_text("".join(json.dumps({"body": t}) + "\n" for t in texts))
    real_load = datasets.load_dataset
    calls = []

    def offline_load(name, config=None, **kwargs):
        calls.append(kwargs)
        return real_load(name, config, data_files=str(path), **kwargs)

    monkeypatch.setattr(datasets, "load_dataset", offline_load)
    monkeypatch.setenv("HF_DATASETS_OFFLINE", "1")
    s = settings(corpus=f"hf:{kind}", text_column="body", val_every=4, allow_download=True)
    data = prepare_data(s, tmp_path / "c")
    assert calls and all(c["streaming"] is True for c in calls)
    want_train, want_val = expect_split(texts, 4)
    assert decoded_docs(data) == want_train
    assert decoded_docs(data, "val") == want_val


def test_planned_epochs_counts_whole_windows():
    assert planned_epochs(1_000, 101, 10) == 10.0  # 10 windows of 10 tokens per epoch
    assert planned_epochs(50, 101, 10) == 0.5


def test_train_dry_run_and_train_say_epochs_once(tmp_path, capsys, monkeypatch):
    write_docs(tmp_path / "corpus", 6)
    monkeypatch.setenv("PROGTUNE_CACHE", str(tmp_path / "cache"))
    knobs = [f"data.corpus={tmp_path / 'corpus'}", "data.vocab_size=300", "data.val_every=3"]
    assert main(["train", "--preset", "tiny", "--dry-run", *knobs]) == 0
    out = capsys.readouterr().out
    assert "FLOPs" in out and "epochs" in out and "corpus repeats" in out
    assert not (tmp_path / "runs").exists()

    out_dir = tmp_path / "run"
    small = [*knobs, "budget.tokens=8192", "eval.points=2"]
    assert main(["train", "--preset", "tiny", "--quiet", "--out", str(out_dir), *small]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert sum("epochs" in line for line in lines) == 1
    assert (out_dir / "trials.parquet").is_file()


def test_search_dry_run_says_epochs(tmp_path, capsys, monkeypatch):
    write_docs(tmp_path / "corpus", 6)
    monkeypatch.setenv("PROGTUNE_CACHE", str(tmp_path / "cache"))
    knobs = [f"data.corpus={tmp_path / 'corpus'}", "data.vocab_size=300", "data.val_every=3"]
    args = ["search", "--dry-run", "--preset", "tiny", "--num-samples", "1", *knobs]
    assert main(args) == 0
    out = capsys.readouterr().out
    assert "epochs of the" in out and "corpus repeats" in out
