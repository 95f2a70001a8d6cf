"""Run benchmark configurations in worker processes, interleaved, with time-outs; collect medians.

:func:`measure_interleaved` is the core of every benchmark here: all configurations of one size are
started as workers (:mod:`monai_ext.bench.worker`), then each is warmed up once, then the timed
repeats go round-robin (``repeat 1: A B C, repeat 2: A B C, ...``) so that a slow phase of a shared
machine hits every configuration alike and ratios stay fair. The median over repeats is reported.
A configuration that errors, is killed (out of memory) or exceeds the per-call time-out is recorded
with that status and the others go on.
"""

from __future__ import annotations

import logging
import math
import multiprocessing
import multiprocessing.context
import signal
import statistics
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

__all__ = ["Config", "Measurement", "Worker", "WorkerError", "measure_interleaved", "PRELOAD"]

logger = logging.getLogger(__name__)


class WorkerError(RuntimeError):
    """A worker failed: ``status`` is ``"timed out"`` or ``"failed"``; ``note`` says why."""

    def __init__(self, status: str, note: str) -> None:
        super().__init__(f"{status}: {note}")
        self.status = status
        self.note = note


@dataclass
class Config:
    """One configuration to measure: ``builder`` (``"module:function"``) called with ``kwargs`` in a worker.

    ``skip``: if set, the configuration is not run and is recorded as ``skipped`` with this reason.
    ``meta``: free-form columns copied into the results (model name, tokens, ...).
    ``commands``: if set, only these of the measured commands are run for this configuration.
    """

    key: str
    builder: str
    kwargs: dict[str, Any]
    meta: dict[str, Any] = field(default_factory=dict)
    skip: str | None = None
    commands: Sequence[str] | None = None


@dataclass
class Measurement:
    """Results of one :class:`Config`: timed samples and peak memory per command, or why there are none."""

    config: Config
    status: str = "ok"  # ok | skipped | timed out | failed
    note: str = ""
    times: dict[str, list[float]] = field(default_factory=dict)
    peaks: dict[str, list[int]] = field(default_factory=dict)
    info: dict[str, Any] = field(default_factory=dict)
    warmup_time: dict[str, float] = field(default_factory=dict)
    peak_method: str = ""
    results: dict[str, Any] = field(default_factory=dict)

    def median(self, cmd: str) -> float:
        """Median seconds of ``cmd`` over the timed repeats (nan if none)."""
        t = self.times.get(cmd)
        return statistics.median(t) if t else math.nan

    def peak(self, cmd: str) -> float:
        """Peak memory of ``cmd``, bytes (nan if never run): measured on the first timed call (after the
        warm-up, with the heap trimmed), or on the warm-up when there was no timed call. The warm-up's
        peak also holds one-time allocations that stay (optimizer state, thread pools, BLAS buffers),
        which are not what the configuration needs per call."""
        p = self.peaks.get(cmd)
        if not p:
            return math.nan
        return float(p[1]) if len(p) > 1 else float(p[0])

    def repeats(self, cmd: str) -> int:
        return len(self.times.get(cmd, []))


#: modules the forkserver imports once, so that workers start in well under a second
PRELOAD = ("torch", "monai.networks.nets", "monai.networks.blocks", "monai_ext.networks", "monai_ext.bench.tasks")
_CONTEXT: multiprocessing.context.BaseContext | None = None


def _context() -> multiprocessing.context.BaseContext:
    """The multiprocessing context for workers: a forkserver with :data:`PRELOAD` imported (plain
    ``spawn`` where forkserver does not exist)."""
    global _CONTEXT
    if _CONTEXT is None:
        if "forkserver" in multiprocessing.get_all_start_methods():
            ctx = multiprocessing.get_context("forkserver")
            ctx.set_forkserver_preload(list(PRELOAD))
        else:  # pragma: no cover - Windows
            ctx = multiprocessing.get_context("spawn")
        _CONTEXT = ctx
    return _CONTEXT


class Worker:
    """Parent side of one worker process (:func:`monai_ext.bench.worker.serve`)."""

    def __init__(self, config: Config, threads: int | None = None, seed: int = 0) -> None:
        from .worker import serve

        self.config = config
        ctx = _context()
        self.conn, child = ctx.Pipe()
        spec = {"builder": config.builder, "kwargs": config.kwargs, "threads": threads, "seed": seed}
        self.proc = ctx.Process(target=serve, args=(child, spec), name=f"bench:{config.key}", daemon=True)
        self.proc.start()
        child.close()

    def _died(self) -> WorkerError:
        self.proc.join(timeout=30)
        rc = self.proc.exitcode
        if rc is not None and rc < 0 and -rc == signal.SIGKILL:
            why = "killed by SIGKILL (most likely the kernel's out-of-memory killer)"
        elif rc is not None and rc < 0:
            why = f"killed by signal {-rc}"
        else:
            why = f"exited with code {rc}"
        return WorkerError("failed", why)

    def read(self, timeout: float) -> dict[str, Any]:
        """Next reply; :class:`WorkerError` on time-out (the worker is then killed), error or death."""
        try:
            ready = self.conn.poll(timeout)
        except (EOFError, OSError):
            raise self._died() from None
        if not ready:
            self.kill()
            raise WorkerError("timed out", f"no answer within {timeout:.0f} s")
        try:
            msg = self.conn.recv()
        except (EOFError, OSError):
            raise self._died() from None
        if not msg.get("ok"):
            logger.debug("worker %s error traceback:\n%s", self.config.key, msg.get("traceback", ""))
            self.kill()
            raise WorkerError("failed", msg.get("error", "unknown error"))
        return msg

    def request(self, cmd: str, timeout: float, trim: bool = False) -> dict[str, Any]:
        try:
            self.conn.send({"cmd": cmd, "trim": trim})
        except (BrokenPipeError, OSError):
            raise self._died() from None
        return self.read(timeout)

    def kill(self) -> None:
        if self.proc.is_alive():
            self.proc.kill()  # this worker only
        self.proc.join(timeout=30)

    def close(self) -> None:
        if self.proc.is_alive():
            try:
                self.conn.send("quit")
            except (BrokenPipeError, OSError):
                pass
            self.proc.join(timeout=30)
            if self.proc.is_alive():
                self.kill()
        self.conn.close()


def measure_interleaved(
    configs: Sequence[Config],
    commands: Sequence[str],
    repeats: int = 3,
    timeout: float = 300.0,
    start_timeout: float = 600.0,
    config_budget: float | None = None,
    threads: int | None = None,
    seed: int = 0,
) -> list[Measurement]:
    """Measure ``commands`` of every configuration: one warm-up each, then ``repeats`` interleaved rounds.

    Args:
        configs: configurations (those with ``skip`` set are only recorded).
        commands: command names, run in this order within a round (e.g. ``("infer", "train")``:
            inference first so that its peak memory is not inflated by training's).
        repeats: timed rounds.
        timeout: seconds one call may take before the worker is killed and marked ``timed out``.
        start_timeout: seconds a worker may take to import and build its model.
        config_budget: if set, a configuration whose warm-up shows it would need more than this many
            seconds for all repeats gets fewer (at least one); when even one warm-up call took more than
            half the budget, the warm-up call itself is kept as the timed sample (its one-off costs are
            small against such a long call).
        threads: torch threads per worker (default: torch's default).
    """
    results = {c.key: Measurement(c, status="skipped", note=c.skip) if c.skip else Measurement(c) for c in configs}
    workers: dict[str, Worker] = {}
    available: dict[str, set[str]] = {}

    def fail(key: str, err: WorkerError) -> None:
        m = results[key]
        m.status, m.note = err.status, err.note
        logger.warning("%s: %s (%s)", key, err.status, err.note)
        w = workers.pop(key, None)
        if w is not None:
            w.kill()
            w.close()

    try:
        for c in configs:  # start all; they import and build concurrently, nothing is timed yet
            if not c.skip:
                workers[c.key] = Worker(c, threads=threads, seed=seed)
        for key in list(workers):
            try:
                msg = workers[key].read(start_timeout)
                results[key].info = msg.get("info", {})
                results[key].peak_method = msg.get("peak_method", "")
                available[key] = set(msg.get("commands", commands))
                if results[key].config.commands is not None:
                    available[key] &= set(results[key].config.commands)
            except WorkerError as e:
                fail(key, e)
        n_repeats = {key: repeats for key in workers}
        for cmd in commands:  # warm-up round
            for key in list(workers):
                if cmd not in available[key]:
                    continue
                try:
                    msg = workers[key].request(cmd, timeout, trim=True)
                except WorkerError as e:
                    fail(key, e)
                    continue
                m = results[key]
                m.peaks.setdefault(cmd, []).append(int(msg["peak"]))
                m.warmup_time[cmd] = float(msg["time"])
                if "result" in msg:
                    m.results[cmd] = msg["result"]
        if config_budget is not None:
            for key in workers:
                m = results[key]
                per_round = sum(m.warmup_time.values())
                if per_round > 0 and per_round * repeats > config_budget:
                    n_repeats[key] = max(1, int(config_budget // per_round))
                    if per_round > config_budget / 2:  # keep the warm-up as the one sample
                        for cmd, t in m.warmup_time.items():
                            m.times.setdefault(cmd, []).append(t)
                        n_repeats[key] = 0
                    logger.info("%s: %.1f s per round, %d timed repeat(s) within the %.0f s budget", key,
                                per_round, max(1, n_repeats[key]), config_budget)
        for r in range(repeats):
            for cmd in commands:
                for key in list(workers):
                    if r >= n_repeats[key] or cmd not in available[key]:
                        continue
                    try:  # memory is measured on the first timed call only (trimmed heap, see peak())
                        msg = workers[key].request(cmd, timeout, trim=(r == 0))
                    except WorkerError as e:
                        fail(key, e)
                        continue
                    m = results[key]
                    m.times.setdefault(cmd, []).append(float(msg["time"]))
                    if r == 0:
                        m.peaks.setdefault(cmd, []).append(int(msg["peak"]))
    finally:
        for w in workers.values():
            w.close()
    return [results[c.key] for c in configs]
