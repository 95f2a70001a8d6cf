"""The TCGA-NSCLC bundle at tiny sizes: training through ``python -m monai.bundle run``, evaluation (report per
slide), inference with a bad input, and 2-process DDP evaluation (gloo, forked ranks) equal to one process."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest
import torch.multiprocessing as mp
from bundle_utils import BUNDLES, run_bundle
from torch.distributed import TCPStore

BUNDLE = BUNDLES / "tcga_nsclc_subtyping"
CFG = BUNDLE / "configs"


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """Tiny synthetic feature sequences (24 slides, 30-80 tiles of 8 features) and a 2-epoch training run."""
    from monai_ext.data import tcga
    from monai_ext.data.synthetic import tcga as synth

    root = tmp_path_factory.mktemp("tcga")
    synth.synthesize(root / "raw", cases=24, seed=0, min_tokens=30, max_tokens=80, dim=8)
    tcga.prepare(root / "raw", root / "prepared")
    io = {"dataset_dir": str(root / "prepared"), "ckpt_dir": str(root / "models"), "log_dir": str(root / "logs"),
          "feature_dim": 8}
    proc = run_bundle(BUNDLE, ["train.yaml"], "training", epochs=2, max_tokens_train=40, batch_size=4, **io)
    assert "Epoch[2] Complete" in proc.stdout + proc.stderr
    assert (root / "models" / "model.pt").is_file()
    return root, io


def _run_in_process(configs: list[str], **overrides) -> None:
    from monai.bundle import run

    run(config_file=[str(CFG / c) for c in configs], meta_file=str(CFG / "metadata.json"), bundle_root=str(BUNDLE),
        **overrides)


def _rank(rank: int, world: int, port: int, configs: list[str], overrides: dict) -> None:
    # TORCHELASTIC_USE_AGENT_STORE: every rank joins the store at MASTER_PORT as a client (as torchrun's workers
    # join their agent's store); the test holds that store, so no other process can take the port in between
    os.environ.update({"RANK": str(rank), "LOCAL_RANK": str(rank), "WORLD_SIZE": str(world),
                       "MASTER_ADDR": "127.0.0.1", "MASTER_PORT": str(port), "TORCHELASTIC_USE_AGENT_STORE": "True"})
    _run_in_process(configs, **overrides)


def test_evaluate_ddp_equals_single_process_and_inference(trained, tmp_path):
    root, io = trained
    single = tmp_path / "eval"
    _run_in_process(["train.yaml", "evaluate.yaml"], output_dir=str(single), report_bootstrap=100, **io)
    m = json.loads((single / "metrics.json").read_text())
    test = json.loads((root / "prepared" / "datalist.json").read_text())["test"]
    assert m["n_cases"] == len(test)
    per_case = (single / "per_case.csv").read_text()
    assert all(e["slide_id"] in per_case for e in test)  # one row per slide, named by its barcode

    ddp = tmp_path / "eval_ddp"
    ctx = mp.get_context("fork")  # ranks inherit the imports: seconds, not tens of seconds
    store = TCPStore("127.0.0.1", 0, is_master=True, wait_for_workers=False)  # a port the OS picks, held
    port = store.port
    overrides = {"output_dir": str(ddp), "report_bootstrap": 100, "eval_batch_size": 2, **io}
    procs = [ctx.Process(target=_rank, args=(r, 2, port, ["train.yaml", "evaluate.yaml", "multi_gpu_evaluate.yaml"],
                                             overrides)) for r in range(2)]
    for p in procs:
        p.start()
    for p in procs:
        p.join(timeout=240)
    for p in procs:
        if p.is_alive():
            p.kill()
    assert [p.exitcode for p in procs] == [0, 0]
    assert (ddp / "metrics.json").read_bytes() == (single / "metrics.json").read_bytes()
    assert json.loads((ddp / "provenance.json").read_text())["world_size"] == 2

    # inference: one good feature file, one that is not HDF5 (skipped, named, the other processed)
    bad = tmp_path / "bad.h5"
    bad.write_bytes(b"not a feature file")
    good = Path(io["dataset_dir"]) / test[0]["image"]
    out = tmp_path / "inference"
    _run_in_process(["inference.yaml"], input_files=[str(good), str(bad)], output_dir=str(out),
                    ckpt_dir=io["ckpt_dir"], feature_dim=8)
    rows = (out / "predictions.csv").read_text().splitlines()
    assert len(rows) == 1 and rows[0].startswith(test[0]["slide_id"] + ",")
    skipped = json.loads((out / "skipped.json").read_text())
    assert skipped[0]["file"] == str(bad) and "unreadable feature file" in skipped[0]["reason"]


def test_paper_overlay_is_the_papers_protocol():
    from monai.bundle import ConfigParser

    parser = ConfigParser()
    parser.read_config([str(CFG / "train.yaml"), str(CFG / "paper.yaml")])
    net = parser.get_parsed_content("network_def")
    assert (net.in_features, net.hidden_size, len(net.blocks)) == (2048, 512, 2)  # RetCCL features, Table 1
    assert net.blocks[0].attn.num_heads == 8 and net.blocks[0].mlp.linear1.out_features == 512
    assert parser.get("batch_size") == 1 and parser.get("epochs") == 100 and parser.get("max_tokens_train") is None
