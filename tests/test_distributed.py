"""Process-group teardown of every bundle's ``multi_gpu_*.yaml``: two gloo processes run the config's own
``finalize`` while rank 0 is still busy (as when it writes the report after a gather); no rank may tear down and
leave before the others are done, and both exit cleanly."""

from __future__ import annotations

import time
from pathlib import Path

import pytest
import torch.multiprocessing as mp
from monai.bundle import ConfigParser

import monai_ext.workflows  # noqa: F401  (what the bundles' train.yaml imports; forked ranks inherit it)

ROOT = Path(__file__).resolve().parents[1]
CONFIGS = sorted((ROOT / "bundles").glob("*/configs/multi_gpu_*.yaml"))
BUSY_S = 0.5  # rank 0's extra work before its finalize


def _finalize(config: Path) -> None:
    """The ``finalize`` expressions of ``config``, parsed by MONAI's ConfigParser (as ``monai.bundle run`` does)."""
    parser = ConfigParser(globals={"monai_ext": "monai_ext", "torch": "torch"})
    stack = ["train.yaml", "evaluate.yaml"] if config.name == "multi_gpu_evaluate.yaml" else ["train.yaml"]
    parser.read_config([str(config.parent / c) for c in stack] + [str(config)])  # as the bundle README stacks them
    parser.get_parsed_content("finalize")


def _worker(rank: int, world: int, tmp: str, configs: list[str], queue) -> None:
    import torch.distributed as dist

    for i, config in enumerate(configs):
        dist.init_process_group("gloo", init_method=f"file://{tmp}/pg{i}", rank=rank, world_size=world)
        if rank == 0:
            time.sleep(BUSY_S)
        busy_done = time.monotonic()
        _finalize(Path(config))
        queue.put((i, rank, busy_done, time.monotonic(), dist.is_initialized()))


def test_multi_gpu_finalize_waits_for_every_rank(tmp_path):
    assert len(CONFIGS) == 2 * len({c.parent.parent.name for c in CONFIGS}) >= 8, CONFIGS  # train + evaluate
    ctx = mp.get_context("fork")  # no re-import: seconds, not tens of seconds
    queue = ctx.Queue()
    procs = [ctx.Process(target=_worker, args=(r, 2, str(tmp_path), [str(c) for c in CONFIGS], queue))
             for r in range(2)]
    for p in procs:
        p.start()
    for p in procs:
        p.join(timeout=240)
    alive = [p.pid for p in procs if p.is_alive()]
    for p in procs:
        if p.is_alive():
            p.kill()
    assert not alive, "a rank hung in finalize"
    assert [p.exitcode for p in procs] == [0, 0]
    rows = [queue.get(timeout=5) for _ in range(2 * len(CONFIGS))]
    for i, config in enumerate(CONFIGS):
        (_, _, busy0, _, init0), (_, _, _, end1, init1) = sorted(r for r in rows if r[0] == i)[:2]
        assert not init0 and not init1, f"{config}: the process group survived finalize"
        # rank 1 had nothing to do, yet left finalize only after rank 0 was done (a barrier before the teardown)
        assert end1 >= busy0, f"{config}: rank 1 tore its process group down while rank 0 was still busy"


@pytest.mark.parametrize("config", CONFIGS[:1], ids=lambda c: c.parent.parent.name)
def test_finalize_without_process_group_is_a_no_op(config):
    _finalize(config)
