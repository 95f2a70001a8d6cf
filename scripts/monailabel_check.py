"""End-to-end MONAI Label check of the four bundles (run by ``scripts/test_monailabel.sh`` with the
MONAI Label environment's Python: monailabel 0.8.5, monai 1.5.2, numpy 1.26).

Steps (everything under ``--work``):

1. per bundle: synthetic data in the real layout -> ``prepare`` -> a 1-epoch training through the bundle
   (``python -m monai.bundle run training``, default network and sizes, so the weights fit the
   configuration MONAI Label runs);
2. ``monai-ext label-app`` assembles the app with those weights;
3. a studies folder with one prepared test image per bundle, in the bundle's input format;
4. a real ``monailabel start_server`` on 127.0.0.1 (offline: ``--conf zoo_source local --conf sam2 false``);
5. ``POST /infer/<bundle>?image=<id>`` per bundle, answers checked -- segmentation: the returned label
   image's shape, affine (NIfTI) and label values, and agreement with the bundle's own
   ``python -m monai.bundle run`` on the same file; classification: one score per class, summing to 1,
   the class names of ``channel_def``, equal to the bundle's own predictions.csv;
6. the server is stopped by its PID.

Prints a summary table; exits 1 if any check failed.
"""

from __future__ import annotations

import argparse
import csv
import json
import logging
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.parse
import urllib.request
from pathlib import Path

import numpy as np

from monai_ext.bundle.registry import BUNDLE_DATASETS

ROOT = Path(__file__).resolve().parents[1]
PY = sys.executable
logger = logging.getLogger("monailabel_check")

#: per dataset: synth kwargs, prepare kwargs, training overrides, datalist file name
CHECKS: dict[str, dict] = {
    "vindr_cxr": {"synth": {"cases": 24}, "prepare": {"resolutions": [224]}, "train": {"batch_size": 4},
                  "datalist": "datalist_224.json"},
    "duke": {"synth": {"cases": 12}, "prepare": {}, "train": {"batch_size": 4}, "datalist": "datalist.json"},
    "btcv": {"synth": {"cases": 4}, "prepare": {}, "train": {"num_samples": 4}, "datalist": "datalist.json"},
    "paip": {"synth": {"cases": 6, "size": 1024}, "prepare": {"resolutions": [512]}, "train": {"batch_size": 2},
             "datalist": "datalist_512.json"},
    "airogs": {"synth": {"cases": 24, "rg_fraction": 0.5}, "prepare": {"resolutions": [224]},
               "train": {"batch_size": 4}, "datalist": "datalist_224.json"},
    "isic": {"synth": {"cases": 40, "malignant_fraction": 0.3, "images_per_patient": 3},
             "prepare": {"resolutions": [224]}, "train": {"batch_size": 4}, "datalist": "datalist_224.json"},
}
#: per bundle (the project's list, monai_ext.bundle.registry): dataset module and the settings above
BUNDLES: dict[str, dict] = {name: {"dataset": ds, **CHECKS[ds]} for name, ds in BUNDLE_DATASETS.items()}


WORK_MARKER = ".monai_ext_label_check"


class WorkFolderError(RuntimeError):
    """The work folder is not one this script may write into or empty."""


def prepare_work(work: Path | None, fresh: bool = False) -> Path:
    """The work folder: a new private one from :func:`tempfile.mkdtemp` (mode 0700) when ``work`` is None;
    else ``work``, created if missing. Only a folder holding :data:`WORK_MARKER` (written first, when this
    script creates or adopts an empty folder) is ever written into or, with ``fresh``, emptied; a symbolic
    link, or a non-empty folder without the marker (another user's, or pre-planted), is refused."""
    if work is None:
        path = Path(tempfile.mkdtemp(prefix="monai_ext_label_check_"))
        (path / WORK_MARKER).write_text("created by scripts/monailabel_check.py\n")
        return path
    if work.is_symlink():
        raise WorkFolderError(f"--work {work}: is a symbolic link; give a real folder")
    path = work.resolve()
    if path.exists() and not path.is_dir():
        raise WorkFolderError(f"--work {path}: not a folder")
    marker = path / WORK_MARKER
    if path.is_dir() and any(path.iterdir()) and not marker.is_file():
        raise WorkFolderError(f"--work {path}: holds files this script did not create (no {WORK_MARKER}); "
                              f"nothing there is touched. Give a new or empty folder")
    if fresh and marker.is_file():
        for child in path.iterdir():
            if child.name == WORK_MARKER:
                continue
            if child.is_dir() and not child.is_symlink():
                shutil.rmtree(child)
            else:
                child.unlink()
    path.mkdir(parents=True, exist_ok=True)
    marker.write_text("created by scripts/monailabel_check.py\n")
    return path


class CheckFailed(AssertionError):
    pass


def run(cmd: list[str], log: Path, cwd: Path | None = None, timeout: int = 1800) -> None:
    """Run a command, its output appended to ``log``; raise with the tail of the log if it fails."""
    logger.info("$ %s", " ".join(cmd))
    with open(log, "a") as f:
        f.write(f"\n$ {' '.join(cmd)}\n")
        f.flush()
        proc = subprocess.run(cmd, cwd=cwd, stdout=f, stderr=subprocess.STDOUT, timeout=timeout,
                              env={**os.environ, "PYTHONUNBUFFERED": "1"})
    if proc.returncode != 0:
        tail = "".join(log.read_text().splitlines(keepends=True)[-40:])
        raise CheckFailed(f"command failed ({proc.returncode}): {' '.join(cmd)}\n{tail}")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def prepare_and_train(name: str, spec: dict, work: Path, log: Path) -> tuple[Path, Path]:
    """Synthetic data -> prepared dataset -> 1-epoch training. Returns (prepared dir, model.pt)."""
    from monai_ext.data.dataset import get_dataset, prepare_checked

    dataset = get_dataset(spec["dataset"])
    raw, prepared = work / "data" / name / "raw", work / "data" / name / "prepared"
    models = work / "models" / name
    if not (prepared / spec["datalist"]).is_file():
        logger.info("[%s] synthesizing %s and preparing", name, spec["dataset"])
        dataset.synthesize(raw, seed=0, **spec["synth"])
        prepare_checked(dataset, raw, prepared, **spec["prepare"])
    if not (models / "model.pt").is_file():
        cfg = ROOT / "bundles" / name / "configs"
        cmd = [PY, "-m", "monai.bundle", "run", "training", "--config_file", str(cfg / "train.yaml"),
               "--meta_file", str(cfg / "metadata.json"), "--logging_file", str(cfg / "logging.conf"),
               "--dataset_dir", str(prepared), "--ckpt_dir", str(models), "--output_dir", str(work / "eval" / name),
               "--log_dir", str(work / "logs" / name), "--epochs", "1", "--val_interval", "1", "--num_workers", "0"]
        for k, v in spec["train"].items():
            cmd += [f"--{k}", json.dumps(v)]
        t0 = time.time()
        run(cmd, log, cwd=ROOT / "bundles" / name)
        logger.info("[%s] 1-epoch training under monai %s: %.0f s", name, __import__("monai").__version__,
                    time.time() - t0)
    if not (models / "model.pt").is_file():
        raise CheckFailed(f"[{name}] training wrote no {models / 'model.pt'}")
    return prepared, models / "model.pt"


def study_image(name: str, spec: dict, prepared: Path, studies: Path) -> tuple[str, Path]:
    """Copy the first test image of the prepared datalist into the studies folder; returns (image id, path)."""
    body = json.loads((prepared / spec["datalist"]).read_text())
    split = body.get("test")
    if not split:
        raise CheckFailed(f"[{name}] {prepared / spec['datalist']} has no test images; synthesize more cases")
    src = Path(split[0]["image"])
    src = src if src.is_absolute() else prepared / src
    ext = "".join(src.suffixes[-2:]) if src.name.endswith(".nii.gz") else src.suffix
    image_id = f"{name.split('_')[0] if not name.startswith('apf') else name.split('_')[2]}_{src.name[: -len(ext)]}"
    dest = studies / f"{image_id}{ext}"
    shutil.copy2(src, dest)
    return image_id, dest


def wait_for_server(url: str, proc: subprocess.Popen, log: Path, timeout: float = 900) -> dict:
    t0 = time.time()
    while time.time() - t0 < timeout:
        if proc.poll() is not None:
            tail = "".join(log.read_text().splitlines(keepends=True)[-60:])
            raise CheckFailed(f"monailabel server exited with {proc.returncode} before answering:\n{tail}")
        try:
            with urllib.request.urlopen(url + "/info/", timeout=10) as r:
                return json.loads(r.read())
        except (TimeoutError, urllib.error.URLError, ConnectionError):
            time.sleep(2)
    raise CheckFailed(f"monailabel server did not answer {url}/info/ within {timeout:.0f} s")


def post_infer(url: str, model: str, image_id: str, output: str, timeout: float = 600) -> tuple[bytes, str, float]:
    query = urllib.parse.urlencode({"image": image_id, "output": output})
    boundary = "monaiextcheck"
    body = (f'--{boundary}\r\nContent-Disposition: form-data; name="params"\r\n\r\n{{}}\r\n--{boundary}--\r\n').encode()
    req = urllib.request.Request(f"{url}/infer/{model}?{query}", data=body, method="POST",
                                 headers={"Content-Type": f"multipart/form-data; boundary={boundary}"})
    t0 = time.time()
    try:
        with urllib.request.urlopen(req, timeout=timeout) as r:
            return r.read(), r.headers.get("content-disposition", ""), time.time() - t0
    except urllib.error.HTTPError as e:
        raise CheckFailed(f"POST /infer/{model}?{query}: HTTP {e.code}: {e.read()[:2000]!r}") from None


def bundle_direct(name: str, image: Path, model: Path, work: Path, log: Path) -> Path:
    """The bundle's own inference on ``image`` (python -m monai.bundle run) into work/direct/<name>."""
    cfg = ROOT / "bundles" / name / "configs"
    out = work / "direct" / name
    run([PY, "-m", "monai.bundle", "run", "--config_file", str(cfg / "inference.yaml"),
         "--meta_file", str(cfg / "metadata.json"), "--logging_file", str(cfg / "logging.conf"),
         "--input_files", json.dumps([str(image)]), "--ckpt_dir", str(model.parent), "--output_dir", str(out)],
        log, cwd=ROOT / "bundles" / name)
    return out


def check_classification(name: str, payload: bytes, meta: dict, direct: Path) -> str:
    res = json.loads(payload)
    pred = res.get("prediction")
    classes = next(iter(meta["network_data_format"]["outputs"].values()))
    n = int(classes["num_channels"])
    if not isinstance(pred, list) or len(pred) != n:
        raise CheckFailed(f"[{name}] expected {n} class scores, got {res}")
    scores = np.array([p["score"] for p in pred], dtype=float)
    if abs(scores.sum() - 1.0) > 1e-4 or (scores < 0).any():
        raise CheckFailed(f"[{name}] scores {scores} are not probabilities summing to 1")
    names = {int(k): v.lower() for k, v in classes["channel_def"].items()}
    got = {int(p["idx"]): p["label"] for p in pred}
    if got != names:
        raise CheckFailed(f"[{name}] class names {got} differ from metadata channel_def {names}")
    rows = list(csv.reader((direct / "predictions.csv").open()))
    ref = np.array([float(v) for v in rows[0][1:]])
    if np.abs(ref - scores).max() > 1e-4:
        raise CheckFailed(f"[{name}] MONAI Label scores {scores} differ from the bundle's own {ref}")
    return f"{n} class scores {np.round(scores, 4).tolist()} (sum {scores.sum():.6f}) = bundle run"


def _load_label(path: Path):
    if path.name.endswith((".nii", ".nii.gz")):
        import nibabel as nib

        img = nib.load(str(path))
        return np.asarray(img.dataobj), img.affine
    from PIL import Image

    return np.asarray(Image.open(path)), None


def check_segmentation(name: str, payload: bytes, disposition: str, image: Path, meta: dict, direct: Path,
                       work: Path) -> str:
    ext = ".nii.gz" if image.name.endswith(".nii.gz") else image.suffix
    got_path = work / "answers" / f"{name}{ext}"
    got_path.parent.mkdir(parents=True, exist_ok=True)
    got_path.write_bytes(payload)
    label, affine = _load_label(got_path)
    src, src_affine = _load_label(image)
    spatial = src.shape[:3] if ext != ".png" else src.shape[:2]
    if tuple(label.shape) != tuple(spatial):
        raise CheckFailed(f"[{name}] label shape {label.shape} != image shape {spatial} ({disposition})")
    if affine is not None and not np.allclose(affine, src_affine, atol=1e-4):
        raise CheckFailed(f"[{name}] label affine\n{affine}\n!= image affine\n{src_affine}")
    classes = next(iter(meta["network_data_format"]["outputs"].values()))
    allowed = {int(k) for k in classes["channel_def"]}
    values = sorted(int(v) for v in np.unique(label))
    if not set(values) <= allowed:
        raise CheckFailed(f"[{name}] label values {values} outside channel_def {sorted(allowed)}")
    refs = [p for p in direct.rglob(f"*{ext}") if not p.name.endswith(f"_view{ext}")]  # not the 0/255 copy
    if len(refs) != 1:
        raise CheckFailed(f"[{name}] expected one output of the bundle's own run in {direct}, found {refs}")
    ref, _ = _load_label(refs[0])
    ref = np.squeeze(ref)
    agree = float((ref.reshape(label.shape) == label).mean()) if ref.size == label.size else float("nan")
    if not agree >= 0.99:
        raise CheckFailed(f"[{name}] MONAI Label labels agree with the bundle's own run on {agree:.4f} of the "
                          f"pixels (< 0.99; shapes {label.shape} vs {ref.shape})")
    aff = "affine = image" if affine is not None else "2D PNG, no affine"
    return f"label {label.shape} {label.dtype}, values {values}, {aff}, {agree:.2%} = bundle run"


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--work", type=Path, default=None,
                    help="work folder (default: a new private temporary folder); give the same one again to reuse "
                         "data and weights of a previous run")
    ap.add_argument("--port", type=int, default=0, help="server port (default: a free one)")
    ap.add_argument("--bundle", action="append", choices=sorted(BUNDLES), help="default: all four")
    ap.add_argument("--fresh", action="store_true",
                    help="start over: empty --work first (only a folder this script created, see WORK_MARKER)")
    args = ap.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    import monai
    import monailabel
    import torch

    versions = (f"monailabel {monailabel.__version__}, monai {monai.__version__}, torch {torch.__version__}, "
                f"numpy {np.__version__}")
    logger.info("environment: %s (%s)", versions, PY)
    names = args.bundle or list(BUNDLES)
    try:
        work = prepare_work(args.work, args.fresh)
    except WorkFolderError as e:
        logger.error("%s", e)
        return 2
    logger.info("work folder: %s", work)
    for d in ("studies", "answers", "direct"):
        shutil.rmtree(work / d, ignore_errors=True)
    (work / "studies").mkdir(parents=True)
    log = work / "commands.log"
    results: dict[str, str] = {}

    try:
        trained: dict[str, tuple[Path, Path]] = {}
        for name in names:
            trained[name] = prepare_and_train(name, BUNDLES[name], work, log)
        app = work / "app"
        shutil.rmtree(app, ignore_errors=True)
        cmd = [PY, "-m", "monai_ext.cli", "label-app", "--out", str(app), "--bundles-dir", str(ROOT / "bundles")]
        for name in names:
            cmd += ["--bundle", name, "--ckpt", f"{name}={trained[name][1]}"]
        run(cmd, log)
        images = {name: study_image(name, BUNDLES[name], trained[name][0], work / "studies") for name in names}
    except CheckFailed as e:
        print(f"\n==== MONAI Label check summary ====\nenvironment: {versions}\nsetup FAIL  {e}\nRESULT: FAIL")
        return 1

    port = args.port or free_port()
    url = f"http://127.0.0.1:{port}"
    server_log = work / "server.log"
    monailabel_bin = Path(PY).parent / "monailabel"
    cmd = [str(monailabel_bin), "start_server", "--app", str(app), "--studies", str(work / "studies"),
           "--conf", "zoo_source", "local", "--conf", "sam2", "false", "--conf", "skip_trainers", "true",
           "--host", "127.0.0.1", "--port", str(port)]
    logger.info("$ %s", " ".join(cmd))
    env = {**os.environ, "PATH": f"{Path(PY).parent}:{os.environ.get('PATH', '')}", "PYTHONUNBUFFERED": "1",
           "MONAI_LABEL_DATASTORE_AUTO_RELOAD": "false"}
    with open(server_log, "w") as f:
        server = subprocess.Popen(cmd, stdout=f, stderr=subprocess.STDOUT, env=env, cwd=work)
    logger.info("server PID %d, log %s", server.pid, server_log)
    failed = False
    try:
        t0 = time.time()
        info = wait_for_server(url, server, server_log)
        logger.info("server up after %.0f s: models %s", time.time() - t0, sorted(info.get("models", {})))
        (work / "info.json").write_text(json.dumps(info, indent=1, default=str))
        for name in names:
            served = info.get("models", {}).get(name, {})
            logger.info("served %s: type %s, dimension %s, labels %s", name, served.get("type"),
                        served.get("dimension"), served.get("labels"))
        missing = sorted(set(names) - set(info.get("models", {})))
        if missing:
            raise CheckFailed(f"models not loaded by MONAI Label: {missing}; see {server_log}")
        for name in names:
            image_id, image = images[name]
            meta = json.loads((app / "model" / name / "configs" / "metadata.json").read_text())
            classification = "classification" in name
            try:
                # MONAI Label's label names come from the first output's channel_def, background dropped
                channel_def = next(iter(meta["network_data_format"]["outputs"].values()))["channel_def"]
                want = {v.lower(): int(k) for k, v in channel_def.items() if v.lower() != "background"}
                served = info["models"][name]
                if served.get("labels") != want or served.get("type") != ("classification" if classification
                                                                          else "segmentation"):
                    raise CheckFailed(f"[{name}] served as type {served.get('type')} with labels "
                                      f"{served.get('labels')}, expected {want}")
                payload, disposition, seconds = post_infer(url, name, image_id, "json" if classification else "image")
                direct = bundle_direct(name, image, trained[name][1], work, log)
                if classification:
                    detail = check_classification(name, payload, meta, direct)
                else:
                    detail = check_segmentation(name, payload, disposition, image, meta, direct, work)
                results[name] = f"PASS  {seconds:5.1f} s  {image.name}: {detail}"
            except CheckFailed as e:
                failed = True
                results[name] = f"FAIL  {e}"
    except CheckFailed as e:
        failed = True
        results["server"] = f"FAIL  {e}"
    finally:
        logger.info("stopping server PID %d", server.pid)
        server.send_signal(signal.SIGTERM)
        try:
            server.wait(timeout=60)
        except subprocess.TimeoutExpired:
            logger.warning("server PID %d ignored SIGTERM for 60 s; SIGKILL", server.pid)
            server.kill()
            server.wait()
        with socket.socket() as s:
            port_free = s.connect_ex(("127.0.0.1", port)) != 0
        results["server stop"] = (f"PASS  PID {server.pid} exited ({server.returncode}), port {port} closed"
                                  if port_free else f"FAIL  port {port} still answers after PID {server.pid} exited")
        failed = failed or not port_free

    print("\n==== MONAI Label check summary ====")
    print(f"environment: {versions}")
    print(f"server: monailabel start_server on {url} (log {server_log})")
    for key, value in results.items():
        print(f"{key:40s} {value}")
    print("RESULT:", "FAIL" if failed else "PASS")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
