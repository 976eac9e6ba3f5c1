"""Tests for progtune.data: corpora, splitting, BPE training, token cache and errors."""

from __future__ import annotations

import json
import os
import random
import subprocess
import sys
import time
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from progtune import corpus as corpus_mod
from progtune import data as data_mod
from progtune.data import DataSettings, TokenData, load_tokenizer, prepare_data
from progtune.errors import DataError

REPO = Path(__file__).resolve().parents[1]
SYLLABLES = ["ka", "lo", "mi", "ne", "ru", "sa", "ti", "vo", "ze", "pu", "an", "el", "or", "ix"]


def words_text(seed: int, n_words: int) -> str:
    """Deterministic pseudo-text with enough variety for a few hundred BPE merges."""
    rng = random.Random(seed)
    lines, line = [], []
    for _ in range(n_words):
        line.append("".join(rng.choice(SYLLABLES) for _ in range(rng.randint(1, 4))))
        if len(line) == 12:
            lines.append(" ".join(line))
            line = []
    return "\n".join([*lines, " ".join(line)]) + "\n"


def write_docs(folder: Path, n: int, n_words: int = 300, suffix: str = ".txt") -> list[str]:
    folder.mkdir(parents=True, exist_ok=True)
    texts = [words_text(i, n_words) for i in range(n)]
    for i, text in enumerate(texts):
        (folder / f"doc{i:02d}{suffix}").write_text(text)
    return texts


def split_stream(tokens: np.ndarray, eos: int) -> list[list[int]]:
    """Token stream -> per-document id lists (every document is followed by EOS)."""
    assert tokens[-1] == eos
    cuts = np.flatnonzero(tokens == eos)
    starts = np.concatenate([[0], cuts[:-1] + 1])
    return [tokens[a:b].tolist() for a, b in zip(starts, cuts, strict=True)]


def decoded_docs(data: TokenData, which: str = "train") -> list[str]:
    tok = load_tokenizer(data)
    return [tok.decode(ids) for ids in split_stream(getattr(data, which), data.eos_id)]


def expect_split(texts: list[str], val_every: int) -> tuple[list[str], list[str]]:
    train = [t for i, t in enumerate(texts) if (i + 1) % val_every]
    val = [t for i, t in enumerate(texts) if not (i + 1) % val_every]
    return train, val


def settings(**kw) -> DataSettings:
    return DataSettings(**{"vocab_size": 300, "val_every": 3, **kw})


def no_training(monkeypatch: pytest.MonkeyPatch) -> None:
    def boom(*args, **kwargs):
        raise AssertionError("tokenizer training or encoding ran although the cache should hit")

    monkeypatch.setattr(data_mod, "train_bpe", boom)
    monkeypatch.setattr(data_mod, "encode_documents", boom)


def assert_same(a: TokenData, b: TokenData) -> None:
    np.testing.assert_array_equal(a.train, b.train)
    np.testing.assert_array_equal(a.val, b.val)
    assert a.train.dtype == b.train.dtype
    assert (a.fingerprint, a.vocab_size, a.n_train_docs, a.n_val_docs) == (
        b.fingerprint,
        b.vocab_size,
        b.n_train_docs,
        b.n_val_docs,
    )


def test_stdlib_default_is_deterministic_and_cached(tmp_path, monkeypatch):
    s = DataSettings(max_bytes=1_500_000, vocab_size=512)
    start = time.perf_counter()
    first = prepare_data(s, tmp_path / "a")
    build_s = time.perf_counter() - start
    second = prepare_data(s, tmp_path / "b")
    assert_same(first, second)
    assert first.tokenizer_json == second.tokenizer_json
    assert first.train.dtype == np.uint16 and first.train.ndim == 1
    assert first.train.size > 100_000 and first.val.size > 1_000
    assert first.vocab_size == 512 and first.n_val_docs > 0 and first.n_train_docs > 0
    assert len({first.eos_id, first.pad_id, first.mask_id}) == 3
    assert max(first.eos_id, first.pad_id, first.mask_id) < first.vocab_size
    assert int(first.train.max()) < first.vocab_size
    assert len(first.fingerprint) >= 16 and int(first.fingerprint, 16) >= 0
    assert (tmp_path / "a" / f"tokens-{first.fingerprint}" / "index.json").is_file()

    no_training(monkeypatch)
    start = time.perf_counter()
    cached = prepare_data(s, tmp_path / "a")
    assert time.perf_counter() - start < build_s
    assert_same(first, cached)
    assert cached.tokenizer_json == first.tokenizer_json


def test_stdlib_skips_test_folders_and_site_packages(tmp_path, monkeypatch):
    fake = tmp_path / "lib"
    for rel in ["b.py", "a.py", "pkg/c.py", "pkg/d.py", "notes.txt"]:
        (fake / rel).parent.mkdir(parents=True, exist_ok=True)
        (fake / rel).write_text(f"keep_{rel.replace('/', '_').replace('.', '_')} = 1\n")
    for rel in ["test/t.py", "pkg/tests/t.py", "idlelib/idle_test/t.py", "site-packages/x.py"]:
        (fake / rel).parent.mkdir(parents=True, exist_ok=True)
        (fake / rel).write_text("excluded = 1\n")
    monkeypatch.setattr(corpus_mod.sysconfig, "get_paths", lambda: {"stdlib": str(fake)})
    data = prepare_data(DataSettings(vocab_size=259, val_every=2), tmp_path / "cache")
    docs = decoded_docs(data) + decoded_docs(data, "val")
    assert sorted(docs) == ["keep_a_py = 1\n", "keep_b_py = 1\n", "keep_pkg_c_py = 1\n",
                            "keep_pkg_d_py = 1\n"]  # fmt: skip
    # sorted by relative path, every 2nd to validation
    assert decoded_docs(data, "val") == ["keep_b_py = 1\n", "keep_pkg_d_py = 1\n"]


def test_folder_glob_and_list_corpora(tmp_path):
    texts = write_docs(tmp_path / "corpus", 6)
    (tmp_path / "corpus" / ".hidden.txt").write_text("hidden text\n")
    (tmp_path / "corpus" / ".git").mkdir()
    (tmp_path / "corpus" / ".git" / "HEAD").write_text("ref: refs/heads/main\n")
    sub = write_docs(tmp_path / "corpus" / "sub", 1, suffix=".md")
    want_train, want_val = expect_split(texts + sub, 3)

    folder = prepare_data(settings(corpus=str(tmp_path / "corpus")), tmp_path / "c1")
    assert decoded_docs(folder) == want_train  # byte-level BPE round-trips exactly
    assert decoded_docs(folder, "val") == want_val
    assert (folder.n_train_docs, folder.n_val_docs) == (5, 2)

    pattern = str(tmp_path / "corpus" / "**" / "*.*")
    globbed = prepare_data(settings(corpus=pattern), tmp_path / "c2")
    assert decoded_docs(globbed) + decoded_docs(globbed, "val") == want_train + want_val

    files = sorted((tmp_path / "corpus").glob("doc*.txt"))
    listed = prepare_data(settings(corpus=", ".join(map(str, files))), tmp_path / "c3")
    assert decoded_docs(listed) == expect_split(texts, 3)[0]


def test_parquet_and_jsonl_read_text_column(tmp_path):
    texts = [words_text(i, 200) for i in range(8)]
    table = pa.table({"id": list(range(5)), "body": texts[:5]})
    pq.write_table(table, tmp_path / "part.parquet")
    with open(tmp_path / "rows.jsonl", "w") as f:
        for i, t in enumerate(texts[5:]):
            f.write(json.dumps({"body": t, "n": i}) + "\n\n")  # blank lines are skipped
    corpus = f"{tmp_path / 'part.parquet'},{tmp_path / 'rows.jsonl'}"
    data = prepare_data(settings(corpus=corpus, text_column="body", val_every=4), tmp_path / "c")
    want_train, want_val = expect_split(texts, 4)
    assert decoded_docs(data) == want_train
    assert decoded_docs(data, "val") == want_val


def test_max_bytes_and_chunking_of_few_large_files(tmp_path):
    big = words_text(7, 60_000)  # one file of ~300 KB
    (tmp_path / "big.txt").write_text(big)
    whole = prepare_data(settings(corpus=str(tmp_path / "big.txt"), val_every=2), tmp_path / "c")
    docs = decoded_docs(whole) + decoded_docs(whole, "val")
    assert whole.n_train_docs + whole.n_val_docs == len(docs) >= 4
    assert all(len(d) <= corpus_mod.CHUNK_BYTES and d.endswith("\n") for d in docs)
    assert "".join(expect_interleave(decoded_docs(whole), decoded_docs(whole, "val"))) == big

    capped = prepare_data(
        settings(corpus=str(tmp_path / "big.txt"), val_every=2, max_bytes=150_000),
        tmp_path / "c",
    )
    text = "".join(expect_interleave(decoded_docs(capped), decoded_docs(capped, "val")))
    assert 140_000 < len(text) <= 150_000 and big.startswith(text)
    assert capped.fingerprint != whole.fingerprint


def expect_interleave(train: list[str], val: list[str]) -> list[str]:
    """Undo the val_every=2 split: train[0], val[0], train[1], ..."""
    out = []
    for i, t in enumerate(train):
        out.append(t)
        if i < len(val):
            out.append(val[i])
    return out


def test_duck_typed_settings_and_env_cache_dir(tmp_path, monkeypatch):
    @dataclass(frozen=True)
    class ConfigData:  # stands in for the config module's own frozen dataclass
        corpus: str = ""
        text_column: str = "text"
        hf_config: str = ""
        hf_split: str = "train"
        allow_download: bool = False
        tokenizer: str = "bpe"
        vocab_size: int = 300
        val_every: int = 3
        max_bytes: int = 0
        cache_dir: str = ""

    write_docs(tmp_path / "corpus", 4)
    monkeypatch.setenv("PROGTUNE_CACHE", str(tmp_path / "env-cache"))
    data = prepare_data(ConfigData(corpus=str(tmp_path / "corpus")))
    assert (tmp_path / "env-cache" / f"tokens-{data.fingerprint}" / "index.json").is_file()
    via_field = prepare_data(
        ConfigData(corpus=str(tmp_path / "corpus"), cache_dir=str(tmp_path / "field"))
    )
    assert (tmp_path / "field" / f"tokens-{data.fingerprint}" / "index.json").is_file()
    assert_same(data, via_field)


def in_memory(data: TokenData) -> TokenData:
    """A copy whose arrays do not map the shard files (the tests below damage those in place,
    which would make a mapped read fail with SIGBUS)."""
    return replace(data, train=np.array(data.train), val=np.array(data.val), shard_dir="")


def test_corrupt_cache_is_rebuilt(tmp_path, caplog):
    write_docs(tmp_path / "corpus", 6)
    s = settings(corpus=str(tmp_path / "corpus"))
    good = in_memory(prepare_data(s, tmp_path / "c"))
    path = tmp_path / "c" / f"tokens-{good.fingerprint}"
    train_bytes = (path / "train.bin").read_bytes()
    for name, damage in (("index.json", b"garbage"), ("train.bin", train_bytes[:200])):
        (path / name).write_bytes(damage)
        with caplog.at_level("WARNING", logger="progtune.token_cache"):
            again = prepare_data(s, tmp_path / "c")
        assert "rebuilding" in caplog.text
        assert_same(good, again)
        shard = np.fromfile(path / "train.bin", dtype=good.train.dtype)
        np.testing.assert_array_equal(shard, good.train)


class _RunsOnLoad:
    """Pickles as a call to os.mkdir(path): unpickling it runs code (a harmless stand-in)."""

    def __init__(self, path: Path):
        self.path = str(path)

    def __reduce__(self):
        return (os.mkdir, (self.path,))


def test_token_cache_with_pickled_objects_is_rebuilt_without_unpickling(tmp_path):
    write_docs(tmp_path / "corpus", 6)
    s = settings(corpus=str(tmp_path / "corpus"))
    good = in_memory(prepare_data(s, tmp_path / "c"))
    path = tmp_path / "c" / f"tokens-{good.fingerprint}"
    ran = tmp_path / "code-ran"
    evil = np.array([_RunsOnLoad(ran)], dtype=object)
    for name in ("train.bin", "val.bin", "index.json"):  # any one unpickled would run it
        with open(path / name, "wb") as f:
            np.save(f, evil, allow_pickle=True)
    again = prepare_data(s, tmp_path / "c")
    assert not ran.exists()
    assert_same(good, again)  # the cache entry was rebuilt from the corpus


def test_local_tokenizer_file_and_folder(tmp_path, monkeypatch):
    write_docs(tmp_path / "corpus", 6)
    first = prepare_data(settings(corpus=str(tmp_path / "corpus")), tmp_path / "c")
    (tmp_path / "tok").mkdir()
    (tmp_path / "tok" / "tokenizer.json").write_text(first.tokenizer_json)
    monkeypatch.setattr(data_mod, "train_bpe", None)  # a given tokenizer is never trained
    for spec in (tmp_path / "tok" / "tokenizer.json", tmp_path / "tok"):
        data = prepare_data(
            settings(corpus=str(tmp_path / "corpus"), tokenizer=str(spec)), tmp_path / "c"
        )
        np.testing.assert_array_equal(data.train, first.train)
        np.testing.assert_array_equal(data.val, first.val)
        assert (data.vocab_size, data.eos_id, data.mask_id) == (
            first.vocab_size,
            first.eos_id,
            first.mask_id,
        )
        assert data.fingerprint != first.fingerprint  # the tokenizer is part of the key


def test_concurrent_builds_of_one_cache_entry(tmp_path):
    write_docs(tmp_path / "corpus", 40, n_words=2000)
    script = (
        "import sys\nfrom pathlib import Path\nimport numpy as np\n"
        "from progtune.data import DataSettings, prepare_data\n"
        "d = prepare_data(DataSettings(corpus=sys.argv[1], vocab_size=400, val_every=3),"
        " Path(sys.argv[2]))\n"
        "np.savez(sys.argv[3], train=d.train, val=d.val)\n"
    )
    env = {
        **os.environ,
        "PYTHONPATH": os.pathsep.join([str(REPO), os.environ.get("PYTHONPATH", "")]),
    }
    procs = [
        subprocess.Popen(
            [
                sys.executable,
                "-c",
                script,
                str(tmp_path / "corpus"),
                str(tmp_path / "c"),
                str(tmp_path / f"out{i}.npz"),
            ],
            env=env,
            stderr=subprocess.PIPE,
            text=True,
        )
        for i in range(2)
    ]
    for p in procs:
        _, err = p.communicate(timeout=120)
        assert p.returncode == 0, err
    with np.load(tmp_path / "out0.npz") as a, np.load(tmp_path / "out1.npz") as b:
        np.testing.assert_array_equal(a["train"], b["train"])
        np.testing.assert_array_equal(a["val"], b["val"])
    assert sorted(p.name for p in (tmp_path / "c").iterdir()) == [
        "file-hashes.json",
        next((tmp_path / "c").glob("tokens-*")).name,
    ]  # no temp files left behind
    loaded = prepare_data(DataSettings(corpus=str(tmp_path / "corpus"), vocab_size=400,
                                       val_every=3), tmp_path / "c")  # fmt: skip
    with np.load(tmp_path / "out0.npz") as a:
        np.testing.assert_array_equal(loaded.train, a["train"])


def _binary_folder(tmp_path: Path) -> str:
    write_docs(tmp_path / "mixed", 4)
    (tmp_path / "mixed" / "image.png").write_bytes(b"\x89PNG\r\n\x1a\n\0\0\0")
    return str(tmp_path / "mixed")


def _parquet_without_column(tmp_path: Path) -> str:
    pq.write_table(pa.table({"content": ["x"] * 4, "id": [1, 2, 3, 4]}), tmp_path / "t.parquet")
    return str(tmp_path / "t.parquet")


def _jsonl_without_column(tmp_path: Path) -> str:
    (tmp_path / "t.jsonl").write_text('{"content": "x"}\n' * 4)
    return str(tmp_path / "t.jsonl")


def _write(name: str, content: bytes | str):
    def make(tmp_path: Path) -> str:
        path = tmp_path / name
        path.write_bytes(content if isinstance(content, bytes) else content.encode())
        return str(path)

    return make


@pytest.mark.parametrize(
    ("make_corpus", "extra", "needles"),
    [
        (lambda p: str(p / "missing.txt"), {}, ["data.corpus", "missing.txt"]),
        (lambda p: str(p / "*.nothing"), {}, ["data.corpus", "*.nothing"]),
        (_write("blank.txt", " \n\n\t\n"), {}, ["data.corpus", "no text"]),
        (_write("nul.txt", b"text\0more"), {}, ["data.corpus", "nul.txt", "binary"]),
        (_write("latin.txt", "caf\xe9".encode("latin-1")), {}, ["data.corpus", "latin.txt"]),
        (_binary_folder, {}, ["data.corpus", "image.png"]),
        (_parquet_without_column, {}, ["data.text_column", "'text'", "content, id"]),
        (_jsonl_without_column, {}, ["data.text_column", "'text'", "content"]),
        (_write("one.txt", "a tiny single document\n"), {}, ["data.corpus", "fewer than 2"]),
        (lambda p: str(p / "corpus"), {"val_every": 20}, ["data.val_every", "add documents"]),
        (lambda p: str(p / "corpus"), {"val_every": 1}, ["data.val_every"]),
        (lambda p: str(p / "corpus"), {"vocab_size": 200}, ["data.vocab_size", "259"]),
        (lambda p: str(p / "corpus"), {"vocab_size": 60_000}, ["data.vocab_size", "lower"]),
        (lambda p: str(p / "corpus"), {"tokenizer": "/no/such/tok.json"}, ["data.tokenizer"]),
        (lambda p: str(p / "corpus"), {"tokenizer": "BADTOK"}, ["data.tokenizer"]),
        (lambda p: "hf:wikitext", {}, ["data.allow_download=true"]),
    ],
)
def test_bad_input_raises_one_line_data_error(tmp_path, make_corpus, extra, needles):
    write_docs(tmp_path / "corpus", 5)
    (tmp_path / "bad.json").write_text('{"not": "a tokenizer"}')
    if extra.get("tokenizer") == "BADTOK":
        extra = {"tokenizer": str(tmp_path / "bad.json")}
    with pytest.raises(DataError) as info:
        prepare_data(settings(corpus=make_corpus(tmp_path), **extra), tmp_path / "cache")
    message = str(info.value)
    assert "\n" not in message
    for needle in needles:
        assert needle in message


def test_vocab_too_large_names_learned_size(tmp_path):
    write_docs(tmp_path / "corpus", 5, n_words=50)
    with pytest.raises(DataError, match=r"data\.vocab_size=60000 but the corpus only supports \d+"):
        prepare_data(settings(corpus=str(tmp_path / "corpus"), vocab_size=60_000), tmp_path / "c")


def test_hf_download_needs_datasets_package(tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "datasets", None)  # makes `import datasets` fail
    s = settings(corpus="hf:wikitext", allow_download=True)
    with pytest.raises(DataError, match="pip install datasets"):
        prepare_data(s, tmp_path / "c")
