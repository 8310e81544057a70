"""Making a loaded model fast: int8 quantisation, torch.compile and CPU thread counts.

The loader applies these; tasks never see the difference (attribute access such as
`module.encode_image` or `module.forward_features` keeps working).
"""

from __future__ import annotations

import functools
import inspect
import os
import warnings

import torch

from vitkit.errors import UsageError


def quantize_int8(module: torch.nn.Module) -> torch.nn.Module:
    """Every nn.Linear -> int8 weights with activations quantised per batch (dynamic quantisation).

    Convolutions, norms and attention's fused projections (nn.MultiheadAttention) stay fp32.
    """
    from torch.ao.quantization import default_dynamic_qconfig, quantize_dynamic
    from torch.ao.nn.quantized.dynamic import Linear as DynamicLinear

    # oneDNN runs int8 matmuls on AMX tiles where the CPU has them: measured 1.5x faster than the
    # default x86/fbgemm engine for ViT-S/16 on a Sapphire Rapids core pair.
    if getattr(torch.cpu, "_is_amx_tile_supported", lambda: False)() and "onednn" in torch.backends.quantized.supported_engines:
        torch.backends.quantized.engine = "onednn"
    with warnings.catch_warnings():
        # torch.ao.quantization is deprecated (torchao replaces it) but still the only int8 path that
        # needs no extra package; the user chose int8, so the deprecation is ours to track, not theirs.
        warnings.simplefilter("ignore", DeprecationWarning)
        warnings.filterwarnings("ignore", message=r".*quantize_per_tensor.*deprecated", category=UserWarning)
        quantized = quantize_dynamic(module, {name: default_dynamic_qconfig for name in quantizable_linears(module)},
                                     dtype=torch.qint8)
    for layer in quantized.modules():
        if isinstance(layer, DynamicLinear):
            # open_clip reads the text tower's cast dtype from its first MLP's weight, which is a method
            # on quantised layers; this attribute is open_clip's own hook for int8 layers.
            layer.int8_original_dtype = torch.float32
    return quantized


def quantizable_linears(module: torch.nn.Module) -> list[str]:
    """Names of the nn.Linear layers that can become int8: all but those whose parent's forward reads
    the layer's `.weight` itself (DETR's panoptic attention map does), since on a quantised layer
    `weight` is a method and such code would break mid-run."""
    names = []
    for parent_name, parent in module.named_modules():
        source = _forward_source(type(parent))
        for child_name, child in parent.named_children():
            if isinstance(child, torch.nn.Linear) and f"self.{child_name}.weight" not in source:
                names.append(f"{parent_name}.{child_name}" if parent_name else child_name)
    return names


@functools.cache
def _forward_source(cls: type) -> str:
    try:
        return inspect.getsource(cls.forward)
    except (OSError, TypeError):  # built-in or generated code: nothing to read, nothing reads weights
        return ""


def compile_hot_module(hot_module: torch.nn.Module) -> None:
    """torch.compile, in place, the part that runs on every image batch (the backend says which:
    open_clip's image tower, whose text tower runs once per label set and is not worth the compile time)."""
    hot_module.compile()


def prefers_channels_last(module: torch.nn.Module, device: torch.device) -> bool:
    """True for convolutional backbones on CUDA (DETR's ResNet, SegFormer's convolutions), where cuDNN's
    NHWC kernels are faster. A ViT's only convolution is its patch embedding, a single strided matmul
    in disguise: the layout makes no difference there, so ViTs stay as they are."""
    convolutions = sum(isinstance(m, torch.nn.Conv2d) for m in module.modules())
    return device.type == "cuda" and convolutions > 1


_compile_checked: set[str] = set()


def check_compile_works(device: torch.device) -> None:
    """torch.compile fails only at the first call, deep inside a run; a one-op probe turns a missing
    compiler (C++ on CPU, Triton on CUDA) into one clear message before any input is read."""
    if device.type in _compile_checked:
        return
    try:
        torch.compile(lambda x: x * 2 + 1)(torch.ones(4, device=device))
    except Exception as exc:  # noqa: BLE001 - any backend failure means the same thing to the user
        reason = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
        raise UsageError(f"--compile cannot work on this machine ({type(exc).__name__}: {reason[:200]})",
                         hint="install a C++ compiler (CPU) or Triton (CUDA), or run without --compile") from exc
    _compile_checked.add(device.type)


_threads_configured = False


def configure_threads() -> None:
    """Once per process: intra-op threads = the cores this process may use (OMP_NUM_THREADS wins when
    set); inter-op threads few, since a ViT's work is one big op after another.

    torch's own default counts the machine's cores, which oversubscribes a container limited by
    affinity or a CPU quota. Dataloader workers need nothing here: torch gives each one thread.
    """
    global _threads_configured
    if _threads_configured:
        return
    _threads_configured = True
    threads = _env_threads() or available_cores()
    torch.set_num_threads(threads)
    try:
        torch.set_num_interop_threads(min(2, threads))
    except RuntimeError:
        pass  # only settable before the first parallel op (a library user may have run one already)


def available_cores() -> int:
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    quota = _cgroup_cpu_quota()
    return max(1, min(cores, quota) if quota else cores)


def _env_threads() -> int | None:
    value = os.environ.get("OMP_NUM_THREADS", "").strip()
    return int(value) if value.isdigit() and int(value) > 0 else None


def _cgroup_cpu_quota() -> int | None:
    """cgroup v2's cpu.max ("quota period", or "max period"), rounded up to whole cores."""
    try:
        with open("/sys/fs/cgroup/cpu.max", encoding="ascii") as handle:
            quota, period = handle.read().split()[:2]
    except (OSError, ValueError):
        return None
    if quota == "max":
        return None
    return max(1, -(-int(quota) // int(period)))
