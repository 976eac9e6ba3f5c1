"""Data preparation at scale: peak memory, tokens/s, cache hit, memmapped training throughput.

    nice -n 19 python bench/data_prep.py [--gb 1.0] [--work DIR] [--keep] [--baseline-mb 256]
    nice -n 19 python bench/data_prep.py --work DIR --reuse TOKENS_PER_S   # steps 3-5 again

1. Writes a generated text corpus of `--gb` GB under `--work` (files of ~1 MB plus one large
   single file that is read in pieces), deleted at the end unless --keep.
2. Cold preparation: the whole `progtune train --preset tiny --dry-run` process on it (fresh
   cache); prints its peak RSS (ru_maxrss of the child; goal < 1 GB), wall time, and the
   tokenizer/encoding phases from progtune.data's log line.
3. The tokenizer's own `encode_batch_fast` on the same text (the first --baseline-mb MB of the
   same files, same tokenizer, batches of ~4 MB, reading included) in this process; prints
   `encode ratio` = preparation's encoding tokens/s / encode_batch tokens/s (goal >= 0.8).
4. Cache hit: the same command again; prints the data line's preparation time (goal < 2 s).
5. Training tokens/s of the tiny preset reading windows from the memmapped shards vs an
   in-memory copy of the same arrays, interleaved, best of --repeats (goal >= 0.98).
"""

from __future__ import annotations

import argparse
import re
import resource
import shutil
import subprocess
import sys
import time
from dataclasses import replace
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
CHILD = (
    "import logging, sys; logging.basicConfig(level=logging.INFO, format='%(message)s'); "
    "from progtune.cli import main; sys.exit(main(sys.argv[1:]))"
)


def write_corpus(folder: Path, gb: float, seed: int = 0) -> int:
    """~1 MB files of pseudo-words (Zipf-like frequencies) plus one 64 MB file; returns bytes.
    Files are windows at random offsets of one 16 MB pool of lines (fast to write)."""
    rng = np.random.default_rng(seed)
    syllables = np.array(["ka", "lo", "mi", "ne", "ru", "sa", "ti", "vo", "ze", "pu", "an", "el"])
    words = np.array(["".join(rng.choice(syllables, rng.integers(1, 5))) for _ in range(20_000)])
    p = 1.0 / np.arange(1, words.size + 1)
    n_lines = (16 << 20) // 72
    picked = words[rng.choice(words.size, n_lines * 12, p=p / p.sum())].reshape(n_lines, 12)
    pool = [" ".join(line) + "\n" for line in picked.tolist()]
    folder.mkdir(parents=True, exist_ok=True)
    total, target, i = 0, int(gb * 1e9), 0
    while total < target:
        size = 64 << 20 if i == 0 else 1 << 20
        lines_needed = size // 72
        starts = rng.integers(0, n_lines - 1, max(1, lines_needed // 10_000 + 1))
        chunks = [pool[a : a + min(10_000, n_lines - a)] for a in starts]
        text = "".join(line for chunk in chunks for line in chunk)[:size]
        text = text[: text.rfind("\n") + 1]
        (folder / f"doc{i:05d}.txt").write_text(text)
        total += len(text)
        i += 1
    return total


def run_child(args: list[str]) -> tuple[str, float, float]:
    """(output, wall s, peak RSS GB) of one progtune process (RSS of this child alone)."""
    before = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss
    t0 = time.perf_counter()
    proc = subprocess.run(
        [sys.executable, "-c", CHILD, *args], capture_output=True, text=True, cwd=REPO
    )
    wall = time.perf_counter() - t0
    if proc.returncode:
        raise SystemExit(proc.stdout + proc.stderr)
    rss = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss  # KB, max over children
    if rss <= before:
        print("(peak RSS not above an earlier child's; reported value is an upper bound)")
    return proc.stdout + proc.stderr, wall, rss / 1e6


def encode_batch_baseline(corpus: Path, cache: Path, max_mb: float) -> tuple[int, float]:
    """Tokens and seconds of the tokenizer's own encode_batch_fast over the same files (the
    first `max_mb` MB of them when > 0: a rate, so a sample keeps a slow machine's run short)."""
    from tokenizers import Tokenizer

    tok_file = next(cache.glob("tokens-*/tokenizer.json"))
    tokenizer = Tokenizer.from_file(str(tok_file))
    tokens, batch, size = 0, [], 0
    t0 = time.perf_counter()
    budget = int(max_mb * 1e6) if max_mb > 0 else -1
    for path in sorted(corpus.iterdir()):
        if budget == 0:
            break
        with open(path, encoding="utf-8") as f:
            while piece := f.read(1 << 20):
                batch.append(piece)
                size += len(piece)
                budget = max(0, budget - len(piece)) if budget > 0 else budget
                if size >= 4 << 20:
                    tokens += sum(len(e.ids) for e in tokenizer.encode_batch_fast(batch))
                    batch, size = [], 0
    tokens += sum(len(e.ids) for e in tokenizer.encode_batch_fast(batch))
    return tokens, time.perf_counter() - t0


def training_ratio(corpus: Path, cache: Path, repeats: int) -> float:
    """Best tokens/s reading memmapped shards / best from an in-memory copy, interleaved."""
    from progtune.config import resolve, with_overrides
    from progtune.data import prepare_data
    from progtune.train import train

    cfg = with_overrides(
        resolve("tiny"),
        {"data.corpus": str(corpus), "data.max_bytes": 0, "data.vocab_size": 2048,
         "data.cache_dir": str(cache), "budget.tokens": 262_144, "eval.points": 1},
    )  # fmt: skip
    mapped = prepare_data(cfg.data)
    copied = replace(mapped, train=np.array(mapped.train), val=np.array(mapped.val), shard_dir="")
    best = {"memmap": 0.0, "memory": 0.0}
    for _ in range(repeats):
        for name, data in (("memmap", mapped), ("memory", copied)):
            result = train(cfg, data=data)
            best[name] = max(best[name], result.total_tokens / result.total_wall_s)
    print(f"training tokens/s: memmap {best['memmap']:,.0f}, in memory {best['memory']:,.0f}")
    return best["memmap"] / best["memory"]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--gb", type=float, default=1.0)
    ap.add_argument("--work", type=Path, default=Path("/tmp/progtune-data-prep"))
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--keep", action="store_true")
    ap.add_argument("--baseline-mb", type=float, default=256, help="0 = the whole corpus")
    ap.add_argument(
        "--reuse",
        type=float,
        default=0.0,
        metavar="TOKENS_PER_S",
        help="reuse --work's corpus and cache (kept by --keep) and this earlier cold encoding rate",
    )
    args = ap.parse_args()
    corpus, cache = args.work / "corpus", args.work / "cache"
    if not args.reuse:
        shutil.rmtree(args.work, ignore_errors=True)
    knobs = [f"data.corpus={corpus}", "data.max_bytes=0", "data.vocab_size=2048",
             f"data.cache_dir={cache}"]  # fmt: skip
    try:
        rate = args.reuse or cold_preparation(corpus, knobs, args.gb)
        base_tokens, base_s = encode_batch_baseline(corpus, cache, args.baseline_mb)
        print(f"encode_batch_fast: {base_tokens:,} tokens in {base_s:.1f}s")
        print(f"encode ratio (preparation's encoding phase / encode_batch): "
              f"{rate / (base_tokens / base_s):.2f} (goal >= 0.8)")  # fmt: skip
        out, wall, _ = run_child(["train", "--preset", "tiny", "--dry-run", *knobs])
        hit = float(re.search(r"fingerprint \w+ \(([\d.]+)s\)", out)[1])
        print(f"cache hit: preparation {hit:.2f}s (goal < 2), whole process {wall:.1f}s")
        ratio = training_ratio(corpus, cache, args.repeats)
        print(f"training ratio (memmap / in memory): {ratio:.3f} (goal >= 0.98)")
    finally:
        if not args.keep:
            shutil.rmtree(args.work, ignore_errors=True)


def cold_preparation(corpus: Path, knobs: list[str], gb: float) -> float:
    """Write the corpus, run the cold `progtune train --dry-run`; its encoding tokens/s."""
    n_bytes = write_corpus(corpus, gb)
    print(f"corpus: {n_bytes / 1e9:.2f} GB in {len(list(corpus.iterdir()))} files")
    out, wall, rss = run_child(["train", "--preset", "tiny", "--dry-run", *knobs])
    m = re.search(r"into (\d+) tokens in ([\d.]+) s \(tokenizer ([\d.]+) s, encoding ([\d.]+)",
                  out)  # fmt: skip
    tokens, prep_s, tok_s, enc_s = int(m[1]), float(m[2]), float(m[3]), float(m[4])
    print(f"cold `progtune train --dry-run`: {wall:.1f}s wall, peak RSS {rss:.2f} GB (goal < 1)")
    print(f"preparation: {tokens:,} tokens in {prep_s:.1f}s (tokenizer {tok_s:.1f}s, "
          f"encoding {enc_s:.1f}s = {tokens / enc_s:,.0f} tokens/s)")  # fmt: skip
    return tokens / enc_s


if __name__ == "__main__":
    main()
