"""GPU throughput of progtune's model: tokens/s, FLOP/s, MFU and step time per executed depth.

    python bench/gpu_throughput.py [--preset gpt2-base] [--steps N] [--warmup N]
        [--time-limit 300] [--peak-tflops X] [--matmul-size N] [--no-compile] [--json PATH]
        [KEY=VALUE ...]

One GPU: a base preset's budget.batch_size is the global micro-batch of all data-parallel
workers, so pass one GPU's share, e.g. budget.batch_size=48 (gpt2-base's 384 over 8 GPUs).

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
0. A large square matmul in the run's dtype (--matmul-size, default 8192 on CUDA, 256 on a
   CPU; 0 skips it): the card's attainable dense FLOP/s. Every figure's MFU is also given against
   it (mfu_vs_matmul), beside the datasheet MFU.
3. Step time per executed depth d = 1..L against its FLOPs share flops_per_token(d) /
   flops_per_token(L). These rows use a second ProgressiveLM with k = 1 unique block laid out
   over d positions (set_depth needs k <= d, so the k = L model cannot run shallower), as stage 1
   of a run and bench/trainer_overhead.py do.

The whole script stays under --time-limit seconds: later depths get fewer steps or are dropped,
compilation is skipped or stopped, and what was cut is printed and written to the JSON.
Only small presets (tiny, cpu-small) run without CUDA. The phases are in
bench/throughput_phases.py, the timed step in bench/throughput_steps.py.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import statistics
import sys
import time
from pathlib import Path
from typing import Any, NoReturn

sys.path.insert(0, str(Path(__file__).resolve().parent))
from throughput_phases import (
    Bench,
    TimeUp,
    compiled_phase,
    depth_phase,
    depth_table,
    eager_phase,
    install_backstop,
    set_alarm,
)
from throughput_steps import measure

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
    p.add_argument(
        "--matmul-size",
        type=_count(0),
        help="N for the N x N x N matmul yardstick (default 8192 on CUDA, 256 on a CPU; 0 = skip)",
    )
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


def _write_json_atomic(path: Path, payload: dict[str, Any]) -> None:
    from progtune.atomic import write_text_atomic

    write_text_atomic(path, json.dumps(payload, indent=2) + "\n")


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
    b = _setup(args, cfg, start)
    # Soft deadline for planning (b.deadline); this backstop just after it cuts a phase that
    # overruns. The margin also covers writing the output and the interpreter's exit.
    margin = _margin(args)
    phase, rows = "eager", {}
    try:
        set_alarm(max(0.01, start + args.time_limit - margin - time.perf_counter()))
        phase = "matmul"
        matmul_phase(b)
        phase = "eager"
        model, batches, step, eager = eager_phase(b)
        phase = "depths"
        depth_phase(b, batches, eager, rows)
        phase = "compiled"
        compiled_phase(b, model, step, eager)
    except TimeUp:
        set_alarm(0)
        b.cuts.append(f"time limit reached during {phase}; later parts not run")
        if phase == "depths":
            b.out["depths"] = depth_table(rows, cfg.model.n_layers)
        elif phase == "compiled":
            b.out["compiled"] = {"error": "time limit reached while compiling or measuring"}
    finally:
        set_alarm(0)
    return _finish(b, start, json_path)


def _margin(args: argparse.Namespace) -> float:
    """Seconds kept back before the time limit (~1-2 s go to exiting after a compile)."""
    return max(3.0, min(15.0, 0.05 * args.time_limit))


def _setup(args: argparse.Namespace, cfg: Any, start: float) -> Bench:
    """Device, precision, peak and the JSON payload's fixed part; prints the header line."""
    import torch

    from progtune.model import flops_per_token
    from progtune.train import use_bf16

    device = _device(args, cfg)
    cuda = device.type == "cuda"
    bf16 = use_bf16(cfg, device)
    m, vocab, n_layers = cfg.model, cfg.data.vocab_size, cfg.model.n_layers
    tokens = cfg.budget.batch_size * m.seq_len
    fpt = flops_per_token(m, vocab, n_layers)
    name = torch.cuda.get_device_name(device) if cuda else "CPU"
    peak, peak_note = _peak(args, cuda, name, bf16)
    deadline = start + args.time_limit - 2 * _margin(args)
    install_backstop()
    sync = (lambda: torch.cuda.synchronize(device)) if cuda else (lambda: None)
    b = Bench(args, cfg, device, bf16, tokens, fpt, peak, deadline, sync, {}, [])
    b.out = _payload(b, name, peak_note)
    cuda_ver = f" (CUDA {torch.version.cuda})" if cuda else ""
    print(
        f"{name} | torch {torch.__version__}{cuda_ver} | {b.out['precision']}"
        f"{' autocast' if bf16 else ''} | torch threads {torch.get_num_threads()}"
    )
    return b


def _device(args: argparse.Namespace, cfg: Any) -> Any:
    """The torch device (threads and TF32 set as progtune.train sets them); a large preset needs
    CUDA."""
    import torch

    from progtune.train import pick_device

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
    return device


def _peak(args: argparse.Namespace, cuda: bool, name: str, bf16: bool) -> tuple[float | None, str]:
    """Peak FLOP/s for MFU (None when unknown) and where it came from, in words."""
    if args.peak_tflops:
        return args.peak_tflops * 1e12, "--peak-tflops"
    if cuda and peak_tflops(name):
        note = f"table (dense bf16) for {name!r}"
        if not bf16:
            note += "; the run is fp32, so MFU is against the bf16 peak"
        return peak_tflops(name) * 1e12, note
    if not cuda:
        return None, "n/a: no peak for a CPU; pass --peak-tflops"
    return None, f"n/a: {name!r} is not in the peak table; pass --peak-tflops"


def _payload(b: Bench, name: str, peak_note: str) -> dict[str, Any]:
    """The JSON payload before any measurement: device, model, step size, peak, requests."""
    import torch

    from progtune.config import parse_assignments

    args, cfg, m = b.args, b.cfg, b.cfg.model
    return {
        "device": {
            "type": b.device.type,
            "name": name,
            "torch": torch.__version__,
            "cuda": torch.version.cuda,
            "threads": torch.get_num_threads(),
        },
        "precision": "bf16" if b.bf16 else "fp32",
        "preset": args.preset,
        "overrides": parse_assignments(args.overrides),
        "model": {
            "arch": m.arch,
            "n_layers": m.n_layers,
            "d_model": m.d_model,
            "n_heads": m.n_heads,
            "seq_len": m.seq_len,
            "vocab_size": cfg.data.vocab_size,
        },
        "batch_size": cfg.budget.batch_size,
        "tokens_per_step": b.tokens,
        "grad_accum_ignored": cfg.budget.grad_accum,
        "flops_per_token": b.fpt,
        "flops_per_step": b.fpt * b.tokens,
        "peak_flops_per_s": b.peak,
        "peak_source": peak_note,
        "steps_requested": args.steps,
        "warmup_requested": args.warmup,
        "time_limit_s": args.time_limit,
        "matmul": None,
        "eager": None,
        "peak_memory_bytes": None,
        "compiled": None,
        "depths": [],
        "cut": b.cuts,
    }


def matmul_phase(b: Bench) -> None:
    """0. The N x N x N matmul yardstick in the run's dtype; fills out["matmul"]."""
    import torch

    size = b.args.matmul_size
    if size is None:
        size = 8192 if b.cuda else 256
    if size == 0:
        return
    dtype = torch.bfloat16 if b.bf16 else torch.float32
    per_step = 10  # products back to back per timed step: the synchronisation costs little
    warm, times = _time_matmuls(b, size, dtype, per_step)  # its tensors are freed on return
    if b.cuda:
        torch.cuda.empty_cache()
    flops = 2.0 * size**3 * per_step / statistics.median(times)
    of_peak = flops / b.peak if b.peak else None
    b.out["matmul"] = {
        "size": size,
        "dtype": "bf16" if b.bf16 else "fp32",
        "products_per_step": per_step,
        "warmup_steps": len(warm),
        "steps": len(times),
        "flops_per_s": flops,
        "of_peak": of_peak,
    }
    share = f" ({of_peak:.1%} of the {b.peak / 1e12:g} TFLOP/s peak)" if of_peak else ""
    print(f"matmul {size}^3 {b.out['matmul']['dtype']}: {flops / 1e12:.3f} TFLOP/s{share}")


def _time_matmuls(b: Bench, size: int, dtype: Any, per_step: int) -> tuple[list, list]:
    """(warm-up, timed) seconds of steps of `per_step` products of random matrices (zeros would
    run faster than real data)."""
    import torch

    gen = torch.Generator(device=b.device).manual_seed(0)
    x, y = (torch.randn(size, size, generator=gen, device=b.device, dtype=dtype) for _ in "xy")
    product = torch.empty_like(x)

    def step() -> None:
        for _ in range(per_step):
            torch.mm(x, y, out=product)

    return measure(step, 3, 10, time.perf_counter() + 10.0, b.sync)


def _against_matmul(out: dict[str, Any]) -> None:
    """Add mfu_vs_matmul (achieved / measured matmul FLOP/s) to every figure; print eager's."""
    matmul = (out.get("matmul") or {}).get("flops_per_s")
    figures = [out.get("eager"), out.get("compiled"), *out.get("depths", [])]
    for fig in figures:
        if isinstance(fig, dict) and "achieved_flops_per_s" in fig:
            fig["mfu_vs_matmul"] = fig["achieved_flops_per_s"] / matmul if matmul else None
    for label, fig in (("eager", out.get("eager")), ("compiled", out.get("compiled"))):
        if isinstance(fig, dict) and fig.get("mfu_vs_matmul") is not None:
            datasheet = f"{fig['mfu']:.1%} of the datasheet peak, " if fig["mfu"] else ""
            print(f"full depth, {label}: MFU {datasheet}{fig['mfu_vs_matmul']:.1%} of the matmul")


def _finish(b: Bench, start: float, json_path: Path | None) -> tuple[int, dict]:
    """Closing lines and the JSON; exit 1 when not even the eager phase finished."""
    args, out, cuts = b.args, b.out, b.cuts
    _against_matmul(out)
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
