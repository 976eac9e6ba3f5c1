"""GPU throughput of progtune's model: tokens/s, FLOP/s, MFU and step time per executed depth.

    python bench/gpu_throughput.py [--preset gpt2-base] [--steps N] [--warmup N]
        [--time-limit 300] [--peak-tflops X] [--no-compile] [--json PATH] [KEY=VALUE ...]

Synthetic tokens (torch.randint over data.vocab_size: no corpus, tokenizer or download). One step
is the training loop's micro-batch step (progtune.train): set_depth, forward under bf16 autocast
(per runtime.precision; fp32 on a CPU without bf16), backward, loss.item(), gradient clipping,
progtune's AdamW. Batch = budget.batch_size x model.seq_len tokens; budget.grad_accum is ignored
(one micro-batch per step). Warm-up steps are excluded; on CUDA each timed step is bracketed by
torch.cuda.synchronize().

1. Full depth, eager: ProgressiveLM with k = model.n_layers unique blocks. Step time, tokens/s,
   achieved FLOP/s = flops_per_token (apollo.md 6, forward + backward) x tokens per step / step
   time, MFU = achieved / peak (--peak-tflops, else a dense-bf16 table by card name; none on a
   CPU or an unknown card), peak memory (torch.cuda.max_memory_allocated).
2. Full depth, each transformer block compiled on its own (torch.compile per block module, not
   the whole model: the progressive model changes its layer list every micro-batch). Skipped with
   --no-compile; a compile error is recorded and the run continues.
3. Step time per executed depth d = 1..L against its FLOPs share flops_per_token(d) /
   flops_per_token(L). These rows use a second ProgressiveLM with k = 1 unique block laid out
   over d positions (set_depth needs k <= d, so the k = L model cannot run shallower), as stage 1
   of a run and bench/trainer_overhead.py do.

The whole script stays under --time-limit seconds: later depths get fewer steps or are dropped,
compilation is skipped or stopped, and what was cut is printed and written to the JSON.
Only small presets (tiny, cpu-small) run without CUDA.
"""

from __future__ import annotations

import argparse
import itertools
import json
import os
import re
import signal
import statistics
import sys
import time
from pathlib import Path
from typing import Any, NoReturn

from progtune.errors import ProgtuneError


def _process_age_s() -> float:
    """Seconds since this process started (Linux /proc; 0 elsewhere)."""
    try:
        fields = Path("/proc/self/stat").read_text().rsplit(")", 1)[1].split()
        started = int(fields[19]) / os.sysconf("SC_CLK_TCK")  # field 22: start time after boot
        return max(0.0, time.clock_gettime(time.CLOCK_BOOTTIME) - started)
    except (OSError, ValueError, IndexError, AttributeError):
        return 0.0


_STARTED = time.perf_counter() - _process_age_s()  # the time limit counts from process start
PROG = "gpu_throughput"
CPU_PRESETS = ("tiny", "cpu-small")  # the others are GPU-sized (12 x 768, 32k vocab)
MASK_ID = 2  # synthetic BERT inputs: progtune's tokenizers put <mask> third
# Dense bf16 tensor TFLOP/s from vendor datasheets (no sparsity); first matching pattern wins.
PEAK_TFLOPS_BF16: tuple[tuple[str, float], ...] = (
    (r"H100.*PCIE", 756.0),
    (r"H100.*NVL", 835.0),
    (r"GH200", 989.0),
    (r"H200", 989.0),  # same dense bf16 as H100 SXM
    (r"H100", 989.0),  # SXM ("NVIDIA H100 80GB HBM3")
    (r"A100", 312.0),
    (r"L40S", 362.0),
    (r"\bL40\b", 181.0),
    (r"\bL4\b", 121.0),
    (r"A10G", 125.0),
    (r"\bA10\b", 125.0),
)


class _Parser(argparse.ArgumentParser):
    """argparse with one-line errors (exit 2), like progtune's CLI."""

    def error(self, message: str) -> NoReturn:
        self.exit(2, f"{PROG}: error: {message}; see `python bench/gpu_throughput.py --help`\n")


class _TimeUp(BaseException):
    """Raised by the SIGALRM backstop when a phase overruns the time limit.

    A BaseException, like KeyboardInterrupt: the compiler's broad `except Exception` fallbacks
    (cache bypasses) would otherwise swallow it and compilation would run on past the limit.
    """


def _count(minimum: int):
    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            value = minimum - 1
        if value < minimum:
            raise argparse.ArgumentTypeError(f"expected an integer >= {minimum}, got {text!r}")
        return value

    return parse


def _positive(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        value = float("nan")
    if not value > 0 or value == float("inf"):
        raise argparse.ArgumentTypeError(f"expected a number > 0, got {text!r}")
    return value


def build_parser() -> argparse.ArgumentParser:
    p = _Parser(prog="gpu_throughput.py", description=__doc__.splitlines()[0])
    p.add_argument("--preset", default="gpt2-base", help="progtune preset (default gpt2-base)")
    p.add_argument("--steps", type=_count(1), default=20, help="timed steps per measurement")
    p.add_argument("--warmup", type=_count(0), default=3, help="untimed steps before each")
    p.add_argument("--time-limit", type=_positive, default=300.0, help="seconds for everything")
    p.add_argument("--peak-tflops", type=_positive, help="peak TFLOP/s for MFU (default: table)")
    p.add_argument("--no-compile", action="store_true", help="skip the per-block compiled run")
    p.add_argument("--json", metavar="PATH", help="also write every figure here (atomically)")
    p.add_argument("overrides", nargs="*", metavar="KEY=VALUE", help="progtune knob overrides")
    return p


def peak_tflops(device_name: str) -> float | None:
    """Dense bf16 peak of a card from its torch.cuda.get_device_name(), None if unknown."""
    for pattern, tflops in PEAK_TFLOPS_BF16:
        if re.search(pattern, device_name, re.IGNORECASE):
            return tflops
    return None


def _one_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return f"{type(exc).__name__}: {text.splitlines()[0] if text else ''}"[:500]


def _write_json_atomic(path: Path, payload: dict[str, Any]) -> None:
    from progtune.atomic import write_text_atomic

    write_text_atomic(path, json.dumps(payload, indent=2) + "\n")


# ---------------------------------------------------------------------------- measuring
def synthetic_batches(cfg, device, count: int = 4) -> list:
    """`count` seeded (inputs, targets) batches on the device; BERT: masked-LM targets."""
    import torch

    m, b = cfg.model, cfg.budget
    gen = torch.Generator().manual_seed(cfg.seed)
    out = []
    for _ in range(count):
        window = torch.randint(0, cfg.data.vocab_size, (b.batch_size, m.seq_len + 1), generator=gen)
        if m.arch == "bert":
            x = window[:, :-1]
            scored = torch.rand(x.shape, generator=gen) < m.mask_fraction
            scored[:, 0] |= ~scored.any(dim=-1)  # at least one scored position per row
            y = torch.where(scored, x, -100)
            x = torch.where(scored, MASK_ID, x)
        else:
            x, y = window[:, :-1], window[:, 1:]
        out.append((x.contiguous().to(device), y.contiguous().to(device)))
    return out


def make_step(model, opt, batches, depth: int, bf16: bool, device, grad_clip: float):
    """One training micro-batch step as progtune.train runs it, at executed depth `depth`."""
    import torch

    cycle = itertools.cycle(batches)

    def step() -> None:
        x, y = next(cycle)
        model.set_depth(depth)
        opt.zero_grad(set_to_none=True)
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=bf16):
            loss = model(x, y)
        loss.value.backward()
        loss.value.item()  # the training loop reads every micro-batch loss (a host sync)
        if grad_clip:
            torch.nn.utils.clip_grad_norm_(model.parameters(), grad_clip)
        opt.step()

    return step


def measure(step, warmup: int, steps: int, deadline: float, sync) -> tuple[list, list]:
    """(warm-up times, timed times) in seconds; stops early when the next step would pass
    `deadline` (at least one timed step always runs)."""

    def timed() -> float:
        sync()
        t0 = time.perf_counter()
        step()
        sync()
        return time.perf_counter() - t0

    warm: list[float] = []
    for _ in range(warmup):
        if warm and time.perf_counter() + warm[-1] > deadline:
            break
        warm.append(timed())
    times: list[float] = []
    for _ in range(steps):
        if times and time.perf_counter() + statistics.fmean(times) > deadline:
            break
        times.append(timed())
    return warm, times


def summarize(warm: list, times: list, tokens: int, flops: float, peak: float | None) -> dict:
    step_s = statistics.fmean(times)
    achieved = flops / step_s
    return {
        "warmup_steps": len(warm),
        "steps": len(times),
        "step_s": step_s,
        "step_s_median": statistics.median(times),
        "tokens_per_s": tokens / step_s,
        "achieved_flops_per_s": achieved,
        "mfu": achieved / peak if peak else None,
    }


def _graph_stats() -> dict | None:
    """Dynamo's graph / graph-break / recompile counts (private counters; None if they moved)."""
    try:
        from torch._dynamo.utils import counters

        return {
            "unique_graphs": int(counters["stats"].get("unique_graphs", 0)),
            "graph_breaks": int(sum(counters["graph_break"].values())),
            "recompiles": int(sum(counters["recompiles"].values())),
        }
    except Exception:
        return None


def _steps(n: int) -> str:
    return f"{n} step" if n == 1 else f"{n} steps"


def _fmt(r: dict, memory: int | None = None) -> str:
    mfu = f"MFU {r['mfu']:.1%}" if r["mfu"] is not None else "MFU n/a"
    mem = f", peak memory {memory / 2**30:.2f} GiB" if memory is not None else ""
    return (
        f"{_steps(r['steps'])}, {r['step_s'] * 1e3:.2f} ms/step (median "
        f"{r['step_s_median'] * 1e3:.2f}), {r['tokens_per_s']:,.0f} tokens/s, "
        f"{r['achieved_flops_per_s'] / 1e12:.3f} TFLOP/s, {mfu}{mem}"
    )


def _note_cut(cuts: list, label: str, warm: list, times: list, args, warmup: int = -1) -> None:
    """Record a measurement that the time limit shortened."""
    warmup = args.warmup if warmup < 0 else warmup
    if len(times) < args.steps or len(warm) < warmup:
        cuts.append(
            f"{label}: {len(times)} of {args.steps} timed steps, {len(warm)} of {warmup} "
            "warm-up (time limit)"
        )


def _depth_table(rows: dict[int, dict], n_layers: int) -> list[dict]:
    """Rows by depth with time share = step(d) / step(L); printed as they are finished."""
    ref = rows.get(n_layers)
    table = []
    for d in sorted(rows):
        r = rows[d]
        if ref is not None:
            r["time_share"] = r["step_s"] / ref["step_s"]
            r["time_over_flops_share"] = r["time_share"] / r["flops_share"]
        table.append(r)
        shares = (
            f"time share {r['time_share']:.3f}, FLOPs share {r['flops_share']:.3f}, "
            f"time/FLOPs share {r['time_over_flops_share']:.3f}"
            if ref is not None
            else f"FLOPs share {r['flops_share']:.3f}"
        )
        print(f"depth {d:>2}: {r['step_s'] * 1e3:.2f} ms/step ({_steps(r['steps'])}), {shares}")
    return table


def _set_alarm(seconds: float) -> None:
    """SIGALRM backstop in `seconds`, then every second until cancelled (0 cancels)."""
    if hasattr(signal, "setitimer"):
        signal.setitimer(signal.ITIMER_REAL, max(0.0, seconds), 1.0 if seconds > 0 else 0.0)


# ---------------------------------------------------------------------------- main
def run(args: argparse.Namespace, start: float) -> tuple[int, dict]:
    from progtune.config import parse_assignments, resolve

    cfg = resolve(args.preset, overrides=parse_assignments(args.overrides))
    json_path = Path(args.json) if args.json else None
    if json_path and not json_path.parent.is_dir():
        raise ProgtuneError(
            f"--json {args.json}: folder {str(json_path.parent)!r} does not exist; create it "
            "or pass another path"
        )

    import torch

    from progtune.model import ProgressiveLM, flops_per_token
    from progtune.train import make_optimizer, pick_device, use_bf16

    if cfg.runtime.threads:
        torch.set_num_threads(cfg.runtime.threads)
    device = pick_device(cfg)
    cuda = device.type == "cuda"
    if not cuda and args.preset not in CPU_PRESETS:
        why = "no CUDA device" if not torch.cuda.is_available() else "runtime.device=cpu"
        raise ProgtuneError(
            f"{why}; run on a GPU or pass --preset tiny ({args.preset} is too large for a CPU)"
        )
    if cuda:
        torch.backends.cuda.matmul.allow_tf32 = True  # as progtune.train does
        torch.backends.cudnn.allow_tf32 = True
    bf16 = use_bf16(cfg, device)
    m, vocab, n_layers = cfg.model, cfg.data.vocab_size, cfg.model.n_layers
    tokens = cfg.budget.batch_size * m.seq_len
    fpt = flops_per_token(m, vocab, n_layers)
    name = torch.cuda.get_device_name(device) if cuda else "CPU"

    if args.peak_tflops:
        peak, peak_note = args.peak_tflops * 1e12, "--peak-tflops"
    elif cuda and peak_tflops(name):
        peak, peak_note = peak_tflops(name) * 1e12, f"table (dense bf16) for {name!r}"
        if not bf16:
            peak_note += "; the run is fp32, so MFU is against the bf16 peak"
    else:
        peak = None
        peak_note = (
            "n/a: no peak for a CPU; pass --peak-tflops"
            if not cuda
            else f"n/a: {name!r} is not in the peak table; pass --peak-tflops"
        )

    # Soft deadline for planning; the SIGALRM backstop just after it cuts a phase that overruns.
    # The margin also covers writing the output and the interpreter's exit (~1-2 s after a compile).
    margin = max(3.0, min(15.0, 0.05 * args.time_limit))
    deadline = start + args.time_limit - 2 * margin
    if hasattr(signal, "SIGALRM"):

        def _alarm(_sig, _frame):
            raise _TimeUp

        signal.signal(signal.SIGALRM, _alarm)

    sync = (lambda: torch.cuda.synchronize(device)) if cuda else (lambda: None)
    cuts: list[str] = []
    out: dict[str, Any] = {
        "device": {
            "type": device.type,
            "name": name,
            "torch": torch.__version__,
            "cuda": torch.version.cuda,
            "threads": torch.get_num_threads(),
        },
        "precision": "bf16" if bf16 else "fp32",
        "preset": args.preset,
        "overrides": parse_assignments(args.overrides),
        "model": {
            "arch": m.arch,
            "n_layers": n_layers,
            "d_model": m.d_model,
            "n_heads": m.n_heads,
            "seq_len": m.seq_len,
            "vocab_size": vocab,
        },
        "batch_size": cfg.budget.batch_size,
        "tokens_per_step": tokens,
        "grad_accum_ignored": cfg.budget.grad_accum,
        "flops_per_token": fpt,
        "flops_per_step": fpt * tokens,
        "peak_flops_per_s": peak,
        "peak_source": peak_note,
        "steps_requested": args.steps,
        "warmup_requested": args.warmup,
        "time_limit_s": args.time_limit,
        "eager": None,
        "peak_memory_bytes": None,
        "compiled": None,
        "depths": [],
        "cut": cuts,
    }
    cuda_ver = f" (CUDA {torch.version.cuda})" if cuda else ""
    print(
        f"{name} | torch {torch.__version__}{cuda_ver} | {out['precision']}"
        f"{' autocast' if bf16 else ''} | torch threads {torch.get_num_threads()}"
    )

    phase, rows = "eager", {}
    try:
        _set_alarm(max(0.01, start + args.time_limit - margin - time.perf_counter()))
        torch.manual_seed(cfg.seed)
        model = ProgressiveLM(m, vocab, n_layers, cfg.growth.operator, 0, 1).to(device)
        params = sum(p.numel() for p in model.parameters())
        out["model"]["params"] = params
        print(
            f"preset {args.preset}: {m.arch} {n_layers} x {m.d_model} ({m.n_heads} heads), seq "
            f"{m.seq_len}, vocab {vocab}, {params / 1e6:.2f} M params"
        )
        print(
            f"batch {cfg.budget.batch_size} x {m.seq_len} = {tokens:,} tokens/step (budget."
            f"grad_accum={cfg.budget.grad_accum} ignored); {fpt:.4g} FLOPs/token, "
            f"{fpt * tokens:.4g} FLOPs/step; peak "
            f"{f'{peak / 1e12:g} TFLOP/s ({peak_note})' if peak else peak_note}"
        )
        batches = synthetic_batches(cfg, device)
        opt = make_optimizer(model, cfg, device)

        # 1. full depth, eager: may use a third of the time when more phases follow
        pending = 2 if args.no_compile else 3
        now = time.perf_counter()
        step = make_step(model, opt, batches, n_layers, bf16, device, cfg.lr.grad_clip)
        if cuda:
            torch.cuda.reset_peak_memory_stats(device)
        try:
            warm, times = measure(
                step, args.warmup, args.steps, now + (deadline - now) / pending, sync
            )
        except torch.OutOfMemoryError as exc:
            raise ProgtuneError(
                f"out of GPU memory at {tokens:,} tokens per step ({_one_line(exc)[:120]}); "
                "pass a smaller budget.batch_size=N"
            ) from None
        eager = summarize(warm, times, tokens, fpt * tokens, peak)
        out["eager"] = eager
        _note_cut(cuts, "eager", warm, times, args)
        if cuda:
            out["peak_memory_bytes"] = torch.cuda.max_memory_allocated(device)
        print(f"full depth, eager: {_fmt(eager, out['peak_memory_bytes'])}")

        # 3. per executed depth (k = 1 model), d = L first as the reference
        phase = "depths"
        torch.manual_seed(cfg.seed)
        dmodel = ProgressiveLM(m, vocab, 1, cfg.growth.operator, 0, 1).to(device)
        dopt = make_optimizer(dmodel, cfg, device)
        now = time.perf_counter()
        phase_end = now + (deadline - now) / (pending - 1)
        order = [n_layers, *range(1, n_layers)]
        shares = {d: flops_per_token(m, vocab, d) / fpt for d in order}
        for i, d in enumerate(order):
            now, share = time.perf_counter(), shares[d]
            if now + (args.warmup + 1) * eager["step_s"] * share > phase_end:
                cuts.append(f"depths {', '.join(map(str, sorted(order[i:])))}: not measured")
                break
            # The phase's time left is split by expected step cost, so depths get equal steps.
            slice_s = (phase_end - now) * share / sum(shares[e] for e in order[i:])
            dstep = make_step(dmodel, dopt, batches, d, bf16, device, cfg.lr.grad_clip)
            warm, times = measure(dstep, args.warmup, args.steps, now + slice_s, sync)
            _note_cut(cuts, f"depth {d}", warm, times, args)
            rows[d] = {"depth": d, "flops_share": share} | summarize(
                warm, times, tokens, flops_per_token(m, vocab, d) * tokens, peak
            )
        del dmodel, dopt
        out["depths"] = _depth_table(rows, n_layers)

        # 2. full depth, each block compiled on its own
        phase = "compiled"
        if args.no_compile:
            out["compiled"] = {"skipped": "--no-compile"}
            print("full depth, compiled per block: skipped (--no-compile)")
        elif time.perf_counter() + 2 * (args.warmup + 1) * eager["step_s"] + 5 > deadline:
            out["compiled"] = {"skipped": "time limit"}
            cuts.append("compiled: not run (time limit)")
            print("full depth, compiled per block: skipped (time limit)")
        else:
            if cuda:
                torch.cuda.empty_cache()
                torch.cuda.reset_peak_memory_stats(device)
            try:
                for block in model.blocks:
                    block.compile()  # in place: the module objects (and the layer plan) stay
                warm, times = measure(step, max(1, args.warmup), args.steps, deadline, sync)
                comp = summarize(warm, times, tokens, fpt * tokens, peak)
                comp["first_step_s"] = warm[0]  # includes compiling forward and backward
                comp["peak_memory_bytes"] = (
                    torch.cuda.max_memory_allocated(device) if cuda else None
                )
                comp["speedup_vs_eager"] = eager["step_s"] / comp["step_s"]
                comp["dynamo"] = _graph_stats()
                _note_cut(cuts, "compiled", warm, times, args, max(1, args.warmup))
                print(
                    f"full depth, compiled per block: {_fmt(comp, comp['peak_memory_bytes'])}, "
                    f"first step {comp['first_step_s']:.1f} s, x{comp['speedup_vs_eager']:.3f} "
                    "vs eager"
                )
            except Exception as exc:  # any compiler failure is recorded, the run goes on
                comp = {"error": _one_line(exc)}
                print(f"full depth, compiled per block: failed ({comp['error']})")
            out["compiled"] = comp
    except _TimeUp:
        _set_alarm(0)
        cuts.append(f"time limit reached during {phase}; later parts not run")
        if phase == "depths":
            out["depths"] = _depth_table(rows, n_layers)
        elif phase == "compiled":
            out["compiled"] = {"error": "time limit reached while compiling or measuring"}
    finally:
        _set_alarm(0)

    out["wall_s"] = time.perf_counter() - start
    print(f"cut: {'; '.join(cuts) if cuts else 'nothing'}")
    print(f"wall {out['wall_s']:.1f} s of the {args.time_limit:g} s limit")
    if json_path:
        _write_json_atomic(json_path, out)
        print(f"json: {json_path}")
    if out["eager"] is None:
        print(
            f"{PROG}: error: no full-depth step finished in time; raise --time-limit",
            file=sys.stderr,
        )
        return 1, out
    return 0, out


def main(argv: list[str] | None = None) -> int:
    start = _STARTED if argv is None else time.perf_counter()
    args = build_parser().parse_args(argv)
    try:
        return run(args, start)[0]
    except ProgtuneError as exc:
        print(f"{PROG}: error: {exc}", file=sys.stderr)
        return exc.exit_code
    except KeyboardInterrupt:
        print(f"{PROG}: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
