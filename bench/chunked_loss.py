"""Chunked vs full-logit LM loss on CPU: peak memory of one forward + backward, and step speed.

    python bench/chunked_loss.py memory [--vocab 32768] [--batch 32] [--seq 256] [--width 64]
    python bench/chunked_loss.py speed [--preset cpu-small] [--repeats 6] [--steps 8]

memory: each arm runs in a fresh subprocess: a GPT-2 of 2 blocks x `--width` with a `--vocab`
vocabulary, one forward + backward of `--batch` x `--seq` tokens (fp32). The arm resets the
kernel's peak-RSS mark (/proc/self/clear_refs) right before the step and reads VmHWM after it;
prints the peak growth over the RSS before the step (tensors above glibc's 32 MiB mmap threshold
are returned to the kernel when freed, so the peak RSS is the peak of the big tensors).
speed: the preset's model at full depth, steps (forward + backward + AdamW) with the engine's
chunked loss and with the full-logit loss, interleaved ABBA in one process at the preset's
precision; prints tokens/s of chunked / full-logit, of the best repeats (robust to a busy
machine) and of all (goal >= 0.97).
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path

import torch
import torch.nn.functional as F

from progtune.config import ModelConfig, resolve
from progtune.model import ProgressiveLM
from progtune.train import make_optimizer, use_bf16


def full_logit_loss(lm: ProgressiveLM, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """progtune's causal loss before chunking: [rows, V] logits, upcast, one cross-entropy."""
    logits = lm.hf(input_ids=x).logits
    return F.cross_entropy(logits.float().view(-1, logits.size(-1)), y.reshape(-1))


def _rss_kib(field: str) -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1])
    raise RuntimeError(f"{field} missing from /proc/self/status")


def memory_arm(args: argparse.Namespace) -> dict:
    """One forward + backward; the peak RSS growth in MiB."""
    torch.set_num_threads(1)
    m = ModelConfig(arch="gpt2", n_layers=2, d_model=args.width, n_heads=2, seq_len=args.seq)
    torch.manual_seed(0)
    lm = ProgressiveLM(m, args.vocab, 2, "interpolation").train()
    x = torch.randint(0, args.vocab, (args.batch, args.seq))

    def step(n: int) -> None:
        loss = full_logit_loss(lm, x[:n], x[:n]) if args.arm == "full" else lm(x[:n], x[:n]).value
        loss.backward()

    step(1)  # warm-up: kernels, the gradients' own buffers
    before = _rss_kib("VmRSS")
    Path("/proc/self/clear_refs").write_text("5")  # reset VmHWM (the peak) to the current RSS
    step(args.batch)
    peak = _rss_kib("VmHWM")
    return {"arm": args.arm, "peak_growth_mib": (peak - before) / 1024}


def memory(args: argparse.Namespace) -> None:
    rows = args.batch * args.seq
    print(f"one forward + backward, GPT-2 2 x {args.width}, V = {args.vocab}, {rows} rows (fp32)")
    for arm in ("full", "chunked"):
        out = subprocess.run(
            [sys.executable, __file__, "memory-arm", "--arm", arm, "--vocab", str(args.vocab),
             "--batch", str(args.batch), "--seq", str(args.seq), "--width", str(args.width)],
            capture_output=True, text=True, check=True,
        )  # fmt: skip
        result = json.loads(out.stdout.strip().splitlines()[-1])
        print(f"{arm:>8}: peak RSS growth {result['peak_growth_mib']:.0f} MiB")
    print(f"(one [rows, V] fp32 tensor: {rows * args.vocab * 4 / 2**20:.0f} MiB)")


def speed(args: argparse.Namespace) -> None:
    cfg = resolve(args.preset)
    torch.set_num_threads(args.threads)
    device = torch.device("cpu")
    bf16 = use_bf16(cfg, device)
    vocab, m = cfg.data.vocab_size, cfg.model
    torch.manual_seed(0)
    lm = ProgressiveLM(m, vocab, m.n_layers, "interpolation").train()
    opt = make_optimizer(lm, cfg, device)
    x = torch.randint(0, vocab, (cfg.budget.batch_size, m.seq_len))
    arms = {"chunked": lambda: lm(x, x).value, "full": lambda: full_logit_loss(lm, x, x)}

    def timed(arm: str) -> float:
        t0 = time.perf_counter()
        for _ in range(args.steps):
            opt.zero_grad(set_to_none=True)
            with torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
                loss = arms[arm]()
            loss.backward()
            opt.step()
        return time.perf_counter() - t0

    timed("chunked"), timed("full")  # warm-up
    times: dict[str, list[float]] = {"chunked": [], "full": []}
    for i in range(args.repeats):
        order = ("chunked", "full") if i % 2 == 0 else ("full", "chunked")  # ABBA
        for arm in order:
            times[arm].append(timed(arm))
    tokens = args.steps * x.numel()
    for arm, seconds in times.items():
        print(f"{arm:>8}: best {tokens / min(seconds):,.0f} tokens/s")
    best = min(times["full"]) / min(times["chunked"])
    total = sum(times["full"]) / sum(times["chunked"])
    print(
        f"ratio chunked / full-logit tokens/s: best {best:.3f}, total {total:.3f} "
        f"({args.preset}, {'bf16' if bf16 else 'fp32'}, {args.threads} thread(s), "
        f"{args.repeats} x {args.steps} steps per arm, ABBA)"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("mode", choices=["memory", "memory-arm", "speed"])
    parser.add_argument("--arm", choices=["full", "chunked"], default="chunked")
    parser.add_argument("--vocab", type=int, default=32_768)
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--seq", type=int, default=256)
    parser.add_argument("--width", type=int, default=64)
    parser.add_argument("--preset", default="cpu-small")
    parser.add_argument("--repeats", type=int, default=6)
    parser.add_argument("--steps", type=int, default=8)
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args()
    if args.mode == "memory-arm":
        print(json.dumps(memory_arm(args)))
    elif args.mode == "memory":
        memory(args)
    else:
        speed(args)


if __name__ == "__main__":
    main()
