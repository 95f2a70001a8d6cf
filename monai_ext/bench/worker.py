"""One benchmark configuration in its own process: build once, then time commands on request.

Why a process per configuration: peak memory. The CPU allocator has no peak-memory counter, so the
peak is read from the kernel: before a measured command the worker gives freed heap memory back to
the OS (glibc ``malloc_trim(0)``: otherwise the allocator would serve the command from memory kept
from earlier calls and the resident size would not rise), resets the process's RSS high-water mark
(``echo 5 > /proc/self/clear_refs``, Linux >= 4.0), runs the command and reads ``VmHWM`` from
``/proc/self/status``: the command's peak memory is ``VmHWM - VmRSS`` (RSS just before it). Where the
reset is not allowed the fallback is ``ru_maxrss`` minus that RSS (exact for the largest command).
A process per configuration also means a configuration that runs out of memory (the kernel kills
it) takes only itself down.

Processes come from a ``multiprocessing`` *forkserver* that has imported torch, MONAI and the
networks once (importing MONAI costs several CPU seconds; a fresh interpreter per configuration
would spend more time importing than measuring). Protocol over a pipe: the worker gets a spec
``{"builder": "module:function", "kwargs": {...}, "threads": n, "seed": s}``, builds
``task = builder(**kwargs)`` and answers ``{"ok": True, "rss": bytes, "info": {...}, "commands": [...]}``.
Then each request ``{"cmd": name, "trim": bool}`` (or just the name) runs ``task.commands[name]()``
(after ``malloc_trim`` if ``trim``) and answers
``{"ok": True, "time": s, "peak": bytes, "rss": bytes}`` (plus ``"result"`` if the command returned
a JSON-able value); ``"quit"`` ends it. Errors answer ``{"ok": False, "error": "..."}``.
The parent side is :class:`monai_ext.bench.runner.Worker`.
"""

from __future__ import annotations

import gc
import importlib
import resource
import time
import traceback
from collections.abc import Callable
from typing import Any, Protocol

__all__ = ["BenchTask", "current_rss", "reset_peak", "peak_rss", "PEAK_METHOD", "serve"]


class BenchTask(Protocol):
    """What a builder returns: named zero-argument commands to time, and facts about the configuration."""

    commands: dict[str, Callable[[], Any]]
    info: dict[str, Any]


def _status_kib(field: str) -> int:
    with open("/proc/self/status", encoding="ascii") as f:
        for line in f:
            if line.startswith(field + ":"):
                return int(line.split()[1])
    raise KeyError(field)


def current_rss() -> int:
    """Resident set size now, bytes."""
    try:
        return _status_kib("VmRSS") * 1024
    except (OSError, KeyError):  # pragma: no cover - not Linux
        return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024


def _can_reset_peak() -> bool:
    try:
        with open("/proc/self/clear_refs", "w", encoding="ascii") as f:
            f.write("5")
        return True
    except OSError:
        return False


#: how peak memory is measured in this process: "VmHWM reset" (per command) or "ru_maxrss" (cumulative)
PEAK_METHOD = "VmHWM reset" if _can_reset_peak() else "ru_maxrss"


def reset_peak() -> None:
    """Reset the RSS high-water mark to the current RSS (no-op where not allowed)."""
    if PEAK_METHOD == "VmHWM reset":
        with open("/proc/self/clear_refs", "w", encoding="ascii") as f:
            f.write("5")


def peak_rss() -> int:
    """RSS high-water mark, bytes (since the last :func:`reset_peak` where supported)."""
    if PEAK_METHOD == "VmHWM reset":
        return _status_kib("VmHWM") * 1024
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024


def _malloc_trim() -> Callable[[], Any]:
    """glibc's ``malloc_trim(0)`` (returns freed heap memory to the OS), or a no-op elsewhere."""
    try:
        import ctypes

        fn = ctypes.CDLL("libc.so.6").malloc_trim
        return lambda: fn(0)
    except (OSError, AttributeError):  # pragma: no cover - not glibc
        return lambda: None


trim_heap = _malloc_trim()


def _resolve(path: str) -> Callable[..., BenchTask]:
    module, _, name = path.partition(":")
    if not module or not name:
        raise ValueError(f"builder must be 'module:function', got {path!r}")
    return getattr(importlib.import_module(module), name)


def serve(conn: Any, spec: dict[str, Any]) -> None:
    """Worker process body: build the task of ``spec``, then answer commands on the pipe ``conn``."""
    import torch

    if spec.get("threads"):
        torch.set_num_threads(int(spec["threads"]))
    torch.manual_seed(int(spec.get("seed", 0)))
    try:
        task = _resolve(spec["builder"])(**spec.get("kwargs", {}))
    except Exception as e:  # report, do not crash the parent
        conn.send({"ok": False, "error": f"{type(e).__name__}: {e}", "traceback": traceback.format_exc()})
        return
    # move everything alive now (modules, the model) out of the collector's reach, so that the
    # collection before each command only scans what the commands themselves created
    gc.collect()
    gc.freeze()
    conn.send({"ok": True, "rss": current_rss(), "info": dict(getattr(task, "info", {})),
               "peak_method": PEAK_METHOD, "commands": sorted(task.commands)})
    while True:
        try:
            request = conn.recv()
        except EOFError:
            return
        cmd, trim = (request, False) if isinstance(request, str) else (request["cmd"], bool(request.get("trim")))
        if cmd == "quit":
            return
        if cmd not in task.commands:
            conn.send({"ok": False, "error": f"unknown command {cmd!r}; this task has {sorted(task.commands)}"})
            continue
        gc.collect()
        if trim:  # freed-but-kept heap memory would be reused without raising RSS: give it back first
            trim_heap()
        rss0 = current_rss()
        reset_peak()
        t0 = time.perf_counter()
        try:
            result = task.commands[cmd]()
        except Exception as e:
            conn.send({"ok": False, "error": f"{type(e).__name__}: {e}", "traceback": traceback.format_exc()})
            continue
        dt = time.perf_counter() - t0
        msg = {"ok": True, "time": dt, "peak": max(0, peak_rss() - rss0), "rss": rss0}
        if isinstance(result, (str, int, float, list, dict)):
            msg["result"] = result
        conn.send(msg)
