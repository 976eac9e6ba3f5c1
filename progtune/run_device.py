"""Where and how a run executes: device, threads, autocast precision, grad scaler, compiled blocks.

None of this changes the maths beyond floating-point rounding: `runtime.*` knobs are not part of
the config hash.
"""

from __future__ import annotations

import torch
from torch import nn

from progtune.config import Config
from progtune.data_parallel import Ranks, local_cuda_index
from progtune.errors import ConfigError

AUTOCAST_DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16}


def pick_device(cfg: Config, ranks: Ranks | None = None) -> torch.device:
    """runtime.device resolved; with several ranks on CUDA, this rank's own GPU."""
    want = cfg.runtime.device
    if want == "auto":
        want = "cuda" if torch.cuda.is_available() else "cpu"
    if want.startswith("cuda") and not torch.cuda.is_available():
        raise ConfigError(f"runtime.device={want} but no CUDA device is visible; use auto or cpu")
    if want == "cuda" and ranks is not None and ranks.world > 1:
        return torch.device("cuda", local_cuda_index())
    return torch.device(want)


def resolve_precision(cfg: Config, device: torch.device) -> str:
    """runtime.precision for this device: bf16 | fp16 | fp32.

    auto: bf16 where the hardware has it natively (emulated bf16 is slower than fp32), else on
    CUDA fp16 with a grad scaler, on CPU fp32.
    """
    want = cfg.runtime.precision
    if want == "fp16" and device.type != "cuda":
        raise ConfigError(
            "runtime.precision: fp16 needs a CUDA device; use auto, bf16 or fp32 on the CPU"
        )
    if want != "auto":
        return want
    if device.type == "cuda":
        return "bf16" if torch.cuda.is_bf16_supported(including_emulation=False) else "fp16"
    check = getattr(torch.cpu, "_is_avx512_bf16_supported", None)
    return "bf16" if check and check() else "fp32"


def use_bf16(cfg: Config, device: torch.device) -> bool:
    """Whether the run trains under bf16 autocast (for callers that know only bf16 and fp32)."""
    if cfg.runtime.precision != "auto":
        return cfg.runtime.precision == "bf16"
    return resolve_precision(cfg, device) == "bf16"


def autocast(device: torch.device, precision: str) -> torch.autocast:
    """The autocast context of a forward pass at `precision` (disabled for fp32)."""
    dtype = AUTOCAST_DTYPES.get(precision, torch.bfloat16)
    return torch.autocast(device.type, dtype=dtype, enabled=precision in AUTOCAST_DTYPES)


def grad_scaler(precision: str, device: torch.device) -> torch.amp.GradScaler | None:
    """fp16 needs loss scaling against gradient underflow; bf16 and fp32 do not."""
    return torch.amp.GradScaler(device.type) if precision == "fp16" else None


def set_up_process(cfg: Config, ranks: Ranks) -> tuple[torch.device, str]:
    """Threads, device and matmul precision for this process; (device, precision)."""
    if cfg.runtime.threads:
        torch.set_num_threads(cfg.runtime.threads)
    device = pick_device(cfg, ranks)
    if device.type == "cuda":
        if device.index is not None:
            torch.cuda.set_device(device)
        torch.backends.cuda.matmul.allow_tf32 = True
        torch.backends.cudnn.allow_tf32 = True
    return device, resolve_precision(cfg, device)


def compile_blocks(blocks: nn.ModuleList) -> None:
    """torch.compile each unique block in place (nn.Module.compile) that is not compiled yet.
    Call again after growth: a block deep-copied at growth comes out uncompiled."""
    for block in blocks:
        if block._compiled_call_impl is None:
            block.compile()
