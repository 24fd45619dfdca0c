"""GPU telemetry through NVML (``nvidia-ml-py``, imported as ``pynvml``): clocks, power, temperature, memory
and utilisation sampled in a background thread while a measurement runs, and the GPU's fixed facts.

Without NVML or without a GPU nothing fails: the sampler records why and reports nothing.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterator
from contextlib import ExitStack, contextmanager
from types import ModuleType, TracebackType
from typing import Any

import torch


class NvmlUnavailable(RuntimeError):
    """NVML or the GPU cannot be reached; the message says why."""


def gpu_static_info(device_index: int = 0) -> dict:
    """Name, driver and CUDA driver versions, maximum SM and memory clocks (MHz), enforced power limit (W)
    and total memory (bytes) of a GPU; {} when NVML or the GPU is absent (``nvml_unavailable_reason`` says
    why). ``device_index`` counts devices as PyTorch does (after CUDA_VISIBLE_DEVICES)."""
    try:
        with _nvml_device(device_index) as (nvml, handle):
            info: dict[str, Any] = {
                "name": _text(nvml.nvmlDeviceGetName(handle)),
                "driver_version": _text(nvml.nvmlSystemGetDriverVersion()),
                "uuid": _text(nvml.nvmlDeviceGetUUID(handle)),
            }
            optional: dict[str, Callable[[], Any]] = {
                "cuda_driver_version": lambda: _cuda_version_text(nvml.nvmlSystemGetCudaDriverVersion()),
                "max_sm_clock_mhz": lambda: nvml.nvmlDeviceGetMaxClockInfo(handle, nvml.NVML_CLOCK_SM),
                "max_mem_clock_mhz": lambda: nvml.nvmlDeviceGetMaxClockInfo(handle, nvml.NVML_CLOCK_MEM),
                "power_limit_w": lambda: nvml.nvmlDeviceGetEnforcedPowerLimit(handle) / 1e3,
                "memory_total_bytes": lambda: int(nvml.nvmlDeviceGetMemoryInfo(handle).total),
            }
            for key, read in optional.items():
                try:
                    info[key] = read()
                except nvml.NVMLError:  # not supported on this GPU or driver: left out, not guessed
                    continue
            return info
    except NvmlUnavailable:
        return {}


def nvml_unavailable_reason(device_index: int = 0) -> str | None:
    """Why NVML cannot report on this GPU, or None when it can."""
    try:
        with _nvml_device(device_index):
            return None
    except NvmlUnavailable as exc:
        return str(exc)


class TelemetrySampler:
    """Samples a GPU through NVML every ``interval_s`` seconds while the ``with`` block runs.

    Quantities (units in the names): sm_clock_mhz, mem_clock_mhz, power_w, temperature_c, memory_used_bytes,
    gpu_util_pct, mem_util_pct. A quantity the GPU does not report is left out. Where NVML or the GPU is
    absent, ``unavailable_reason`` says why and ``summary()`` is {}. ``device_index`` counts devices as
    PyTorch does.
    """

    def __init__(self, device_index: int = 0, interval_s: float = 0.05) -> None:
        if interval_s <= 0:
            raise ValueError(f"interval_s must be > 0, got {interval_s}")
        self.device_index = device_index
        self.interval_s = interval_s
        self.unavailable_reason: str | None = None
        self.samples: dict[str, list[float]] = {}
        self._count = 0
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._nvml_session: ExitStack | None = None

    def __enter__(self) -> TelemetrySampler:
        self.start()
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.stop()

    def start(self) -> None:
        """Open NVML and start sampling (one sample at once, then one per interval)."""
        session = ExitStack()
        try:
            nvml, handle = session.enter_context(_nvml_device(self.device_index))
        except NvmlUnavailable as exc:
            self.unavailable_reason = str(exc)
            return
        self._nvml_session = session
        readers = _readers(nvml, handle)
        self._thread = threading.Thread(target=self._run, args=(nvml, readers), name="telemetry", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        """Take a last sample, stop the thread and close NVML."""
        if self._thread is None:
            return
        self._stop.set()
        self._thread.join()
        self._thread = None
        if self._nvml_session is not None:
            self._nvml_session.close()
            self._nvml_session = None

    def summary(self) -> dict:
        """``samples`` (how many) and, per quantity, ``<quantity>_mean``, ``_min`` and ``_max``; {} when
        nothing was sampled."""
        if self._count == 0:
            return {}
        out: dict[str, float | int] = {"samples": self._count}
        for name, values in self.samples.items():
            out[f"{name}_mean"] = sum(values) / len(values)
            out[f"{name}_min"] = min(values)
            out[f"{name}_max"] = max(values)
        return out

    def _run(self, nvml: ModuleType, readers: dict[str, Callable[[], float]]) -> None:
        while True:
            stopping = self._stop.is_set()  # read first, so the last sample comes after the block ended
            for name, read in list(readers.items()):
                try:
                    value = float(read())
                except nvml.NVMLError:  # not supported here: stop asking
                    del readers[name]
                    continue
                self.samples.setdefault(name, []).append(value)
            self._count += 1
            if stopping:
                return
            self._stop.wait(self.interval_s)


def _readers(nvml: ModuleType, handle: object) -> dict[str, Callable[[], float]]:
    return {
        "sm_clock_mhz": lambda: nvml.nvmlDeviceGetClockInfo(handle, nvml.NVML_CLOCK_SM),
        "mem_clock_mhz": lambda: nvml.nvmlDeviceGetClockInfo(handle, nvml.NVML_CLOCK_MEM),
        "power_w": lambda: nvml.nvmlDeviceGetPowerUsage(handle) / 1e3,  # NVML reports mW
        "temperature_c": lambda: nvml.nvmlDeviceGetTemperature(handle, nvml.NVML_TEMPERATURE_GPU),
        "memory_used_bytes": lambda: nvml.nvmlDeviceGetMemoryInfo(handle).used,
        "gpu_util_pct": lambda: nvml.nvmlDeviceGetUtilizationRates(handle).gpu,
        "mem_util_pct": lambda: nvml.nvmlDeviceGetUtilizationRates(handle).memory,
    }


@contextmanager
def _nvml_device(device_index: int) -> Iterator[tuple[ModuleType, object]]:
    """NVML initialised, with the handle of PyTorch's device ``device_index``; raises NvmlUnavailable."""
    try:
        import pynvml
    except ImportError as exc:
        raise NvmlUnavailable(f"nvidia-ml-py (pynvml) is not installed: {exc}") from exc
    try:
        pynvml.nvmlInit()
    except pynvml.NVMLError as exc:
        raise NvmlUnavailable(f"NVML did not initialise: {exc}") from exc
    try:
        try:
            handle = _handle(pynvml, device_index)
        except pynvml.NVMLError as exc:
            raise NvmlUnavailable(f"NVML has no GPU {device_index}: {exc}") from exc
        yield pynvml, handle
    finally:
        pynvml.nvmlShutdown()


def _handle(nvml: ModuleType, device_index: int) -> object:
    # NVML numbers every GPU in the machine; PyTorch numbers those CUDA_VISIBLE_DEVICES leaves, so the two
    # indices differ when it is set. The UUID names the same GPU for both.
    uuid = None
    if torch.cuda.is_available() and device_index < torch.cuda.device_count():
        uuid = getattr(torch.cuda.get_device_properties(device_index), "uuid", None)
    if uuid is not None:
        text = str(uuid)
        text = text if text.startswith(("GPU-", "MIG-")) else f"GPU-{text}"  # NVML's spelling
        try:
            return nvml.nvmlDeviceGetHandleByUUID(text)
        except nvml.NVMLError:
            pass  # an older driver or a MIG slice: fall back to NVML's own numbering
    return nvml.nvmlDeviceGetHandleByIndex(device_index)


def _text(value: str | bytes) -> str:
    return value.decode() if isinstance(value, bytes) else value


def _cuda_version_text(version: int) -> str:
    """NVML's 12040 -> '12.4'."""
    return f"{version // 1000}.{version % 1000 // 10}"
