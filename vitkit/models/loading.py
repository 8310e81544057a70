"""The one model loader: device and precision choice, hub access, a per-process cache, and clear errors."""

from __future__ import annotations

import os
import socket
import threading
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlparse

import torch

from vitkit.models.acceleration import (check_compile_works, compile_hot_module, configure_threads, prefers_channels_last,
                                 quantize_int8)
from vitkit.errors import ModelLoadError, ModelNotCachedError, UsageError
from vitkit.models.backends import get_backend
from vitkit.models.spec import ModelSpec

DEVICES = ("auto", "cpu", "cuda", "mps")
# name -> the dtype the runner autocasts to. int8 keeps fp32 compute outside the quantised Linear layers.
PRECISIONS = {"fp32": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16, "int8": torch.float32}

_cache: dict[tuple[ModelSpec, str, str, str, bool], "LoadedModel"] = {}
_cache_lock = threading.Lock()


@dataclass(frozen=True)
class LoadedModel:
    spec: ModelSpec
    module: torch.nn.Module
    device: torch.device
    dtype: torch.dtype  # compute dtype; weights stay fp32 and the runner autocasts
    assets: Any  # backend-specific: TimmAssets, OpenClipAssets or HfAssets
    precision: str = "fp32"  # the resolved --precision name (int8 shares fp32's dtype), for records and benchmarks
    compiled: bool = False

    @property
    def draft_size(self) -> int | None:
        """The shorter side the model's own preprocessing resizes to (draft JPEG decoding); None: decode in full."""
        return get_backend(self.spec.backend).draft_size(self.assets)


def resolve_device(name: str = "auto") -> torch.device:
    if name not in DEVICES and not name.startswith("cuda:"):
        raise UsageError(f"unknown device {name!r}", hint=f"use one of {', '.join(DEVICES)}")
    from vitkit.runtime.distributed import rank_device  # under torchrun each rank takes its own GPU

    if (device := rank_device(name)) is not None:
        return device
    if name == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda")
        if torch.backends.mps.is_available():
            return torch.device("mps")
        return torch.device("cpu")
    if name.startswith("cuda") and not torch.cuda.is_available():
        raise UsageError("--device cuda was asked for but no CUDA GPU is available", hint="use --device auto or cpu")
    if name.startswith("cuda:") and not (name[5:].isdigit() and int(name[5:]) < torch.cuda.device_count()):
        count = torch.cuda.device_count()
        raise UsageError(f"--device {name}: this machine has {count} CUDA GPU{'s' if count != 1 else ''}",
                         hint=f"use cuda:0 to cuda:{count - 1}, or --device cuda")
    if name == "mps" and not torch.backends.mps.is_available():
        raise UsageError("--device mps was asked for but MPS is not available", hint="use --device auto or cpu")
    return torch.device(name)


def resolve_precision_name(name: str, device: torch.device) -> str:
    """`auto` -> what suits the device: bf16 (or fp16) on GPUs, fp32 on CPU, where bf16 is opt-in
    because it changes probabilities in the third decimal (see README "Speed and precision")."""
    if name == "auto":
        if device.type == "cuda":
            return "bf16" if torch.cuda.is_bf16_supported() else "fp16"
        return "fp16" if device.type == "mps" else "fp32"
    if name not in PRECISIONS:
        raise UsageError(f"unknown precision {name!r}", hint="use auto, fp32, fp16, bf16 or int8")
    if name == "int8" and device.type != "cpu":
        raise UsageError(f"--precision int8 runs on the CPU only, not {device.type}",
                         hint="use --device cpu, or --precision bf16/fp16 on a GPU")
    return name


def resolve_precision(name: str, device: torch.device) -> torch.dtype:
    return PRECISIONS[resolve_precision_name(name, device)]


def load_model(
    spec: ModelSpec,
    capability: str | None = None,
    device: str = "auto",
    precision: str = "auto",
    offline: bool = False,
    trust_remote_code: bool = False,
    compile: bool = False,
) -> LoadedModel:
    """Load once per process; later calls with the same spec, device, precision and compile get the same model."""
    torch_device = resolve_device(device)
    precision_name = resolve_precision_name(precision, torch_device)
    if torch_device.type == "cpu":
        configure_threads()
    if compile:
        check_compile_works(torch_device)
    key = (spec, capability, str(torch_device), precision_name, compile)
    with _cache_lock:
        if key not in _cache:
            module, assets = _load_uncached(spec, capability, offline, trust_remote_code)
            module = _prepare(module, spec, torch_device, precision_name, compile)
            _cache[key] = LoadedModel(spec, module, torch_device, PRECISIONS[precision_name], assets,
                                      precision_name, compile)
        return _cache[key]


def _prepare(module: torch.nn.Module, spec: ModelSpec, device: torch.device, precision_name: str,
             compile: bool) -> torch.nn.Module:
    module.requires_grad_(False)  # inference only: no autograd bookkeeping
    module = module.to(device)
    if prefers_channels_last(module, device):
        module = module.to(memory_format=torch.channels_last)  # 4-D conv weights; activations follow
    if precision_name == "int8":
        module = quantize_int8(module)
    if compile:
        compile_hot_module(get_backend(spec.backend).hot_module(module))
    return module


def clear_model_cache() -> None:
    with _cache_lock:
        _cache.clear()


def _load_uncached(spec: ModelSpec, capability: str | None, offline: bool,
                   trust_remote_code: bool) -> tuple[torch.nn.Module, Any]:
    backend = get_backend(spec.backend)
    if not spec.is_local:
        prepare_hub_access(offline)
    try:
        return backend.load(spec, capability, trust_remote_code)
    except ModelLoadError:
        raise
    except Exception as exc:  # noqa: BLE001 - every library failure becomes one typed error
        raise translate_load_error(spec, exc) from exc


def translate_load_error(spec: ModelSpec, exc: BaseException) -> ModelLoadError:
    """Map the many ways a library reports 'not downloaded', 'unsafe' or 'broken' onto one message each."""
    from huggingface_hub.errors import LocalEntryNotFoundError, OfflineModeIsEnabled

    pull = f"run `vitkit models pull {spec.id}` on a machine with network access (or point HF_HOME at a cache that has it)"
    chain = _exception_chain(exc)
    if any(isinstance(e, (LocalEntryNotFoundError, OfflineModeIsEnabled, ConnectionError, socket.gaierror)) for e in chain):
        return ModelNotCachedError(
            f"model {spec.describe_source()} is not in the local cache and the Hugging Face Hub cannot be reached",
            hint=pull,
        )
    text = " ".join(str(e) for e in chain)
    if "weights_only" in text or "Unsupported global" in text or "pickle" in text.lower():
        return ModelLoadError(
            f"refusing to load {spec.id!r}: its checkpoint contains pickled code, which vitkit never executes",
            hint="convert the checkpoint to safetensors",
        )
    first_line = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
    return ModelLoadError(f"could not load model {spec.id!r}: {type(exc).__name__}: {first_line}",
                          hint="check the model files, or set VITKIT_DEBUG=1 for the traceback")


def _exception_chain(exc: BaseException) -> list[BaseException]:
    chain: list[BaseException] = []
    current: BaseException | None = exc
    while current is not None and current not in chain:
        chain.append(current)
        current = current.__cause__ or current.__context__
    return chain


_hub_checked = False


def prepare_hub_access(offline: bool = False) -> None:
    """Go offline at once when asked or when the Hub is unreachable.

    huggingface_hub retries each file for tens of seconds when there is no network, even for models
    already in the cache; a quick connect test lets cached models load instantly and missing ones
    fail with a clear message instead.
    """
    global _hub_checked
    from huggingface_hub import constants

    if offline or constants.HF_HUB_OFFLINE:
        constants.HF_HUB_OFFLINE = True
        return
    if _hub_checked:
        return
    _hub_checked = True
    if any(os.environ.get(v) for v in ("HTTPS_PROXY", "https_proxy", "ALL_PROXY", "all_proxy")):
        return  # a direct connect test says nothing about a proxied route
    if not is_hub_reachable(constants.ENDPOINT):
        constants.HF_HUB_OFFLINE = True


def is_hub_reachable(endpoint: str, timeout: float = 3.0) -> bool:
    parsed = urlparse(endpoint)
    port = parsed.port or (443 if parsed.scheme == "https" else 80)
    try:
        with socket.create_connection((parsed.hostname or "", port), timeout=timeout):
            return True
    except OSError:
        return False
