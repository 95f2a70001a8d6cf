"""End-to-end MONAI Label check of the four bundles (run by ``scripts/test_monailabel.sh`` with the
MONAI Label environment's Python: monailabel 0.8.5, monai 1.5.2, numpy 1.26).

Steps (everything under ``--work``):

1. per bundle: synthetic data in the real layout -> ``prepare`` -> a 1-epoch training through the bundle
   (``python -m monai.bundle run training``, default network and sizes, so the weights fit the
   configuration MONAI Label runs);
2. a studies folder with several images per bundle in the bundle's input format (prepared images of the test
   split, then of the other splits; for BTCV also a copy of a CT stored LPS, i.e. not RAS), and the bundle's own
   ``python -m monai.bundle run`` (inference.yaml) on every one of them: the reference answers;
3. two apps: MONAI Label's **stock** ``monaibundle`` app (``monailabel apps --download --name monaibundle``,
   unmodified; the bundle folders with their weights copied into its ``model/``) and the project's
   ``monai-ext label-app``;
4. per app, a real ``monailabel start_server`` on 127.0.0.1 (offline: ``--conf zoo_source local --conf sam2
   false``); ``GET /info/``: each model's type, label names and dimension (that of the images it takes);
5. ``POST /infer/<bundle>?image=<id>`` for every image, each answer compared with the reference --
   segmentation: the label has the image's shape (and affine, NIfTI), uint8 values of ``channel_def``, and
   equals the bundle's own label on 100% of the voxels; classification: one score per class, the class names of
   ``channel_def``, within 1e-6 of the bundle's own predictions.csv;
6. the server is stopped by its PID (SIGTERM, SIGKILL after 60 s) and the port checked closed.

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
from typing import Any

import numpy as np

from monai_ext.bundle.registry import BUNDLE_DATASETS

ROOT = Path(__file__).resolve().parents[1]
PY = sys.executable
logger = logging.getLogger("monailabel_check")

#: per dataset: synth kwargs, prepare kwargs, training overrides, datalist file name
CHECKS: dict[str, dict] = {
    "vindr_cxr": {"synth": {"cases": 32}, "prepare": {"resolutions": [224]}, "train": {"batch_size": 4},
                  "datalist": "datalist_224.json"},
    "duke": {"synth": {"cases": 12}, "prepare": {}, "train": {"batch_size": 4}, "datalist": "datalist.json"},
    "btcv": {"synth": {"cases": 4}, "prepare": {}, "train": {"num_samples": 4}, "datalist": "datalist.json"},
    "paip": {"synth": {"cases": 6, "size": 1024}, "prepare": {"resolutions": [512]}, "train": {"batch_size": 2},
             "datalist": "datalist_512.json"},
    "airogs": {"synth": {"cases": 24, "rg_fraction": 0.5}, "prepare": {"resolutions": [224]},
               "train": {"batch_size": 4}, "datalist": "datalist_224.json"},
    "isic": {"synth": {"cases": 40, "malignant_fraction": 0.3, "images_per_patient": 3},
             "prepare": {"resolutions": [224]}, "train": {"batch_size": 4}, "datalist": "datalist_224.json"},
    "radimagenet_brain": {"synth": {"cases": 30, "balanced": True, "min_per_class": 3},
                          "prepare": {"resolutions": [56]}, "train": {"batch_size": 4}, "datalist": "datalist_56.json"},
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
        # the environment's bin first: MONAI Label's `monailabel` script runs the `python` it finds on PATH
        env = {**os.environ, "PYTHONUNBUFFERED": "1", "PATH": f"{Path(PY).parent}:{os.environ.get('PATH', '')}"}
        proc = subprocess.run(cmd, cwd=cwd, stdout=f, stderr=subprocess.STDOUT, timeout=timeout, env=env)
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


def study_images(name: str, spec: dict, prepared: Path, studies: Path, count: int) -> list[tuple[str, Path]]:
    """Copy ``count`` prepared images (test split first, then the other splits) into the studies folder; for BTCV
    also an LPS copy of the first (voxel axes 0 and 1 reversed, affine to match: the same anatomy, stored
    non-RAS). Returns ``[(image id, path)]``."""
    body = json.loads((prepared / spec["datalist"]).read_text())
    splits = ["test"] + [k for k in body if k != "test" and isinstance(body[k], list)]
    sources: list[Path] = []
    for split in splits:
        for item in body.get(split) or []:
            if not (isinstance(item, dict) and isinstance(item.get("image"), str)):
                continue  # not a list of cases
            src = Path(item["image"])
            src = src if src.is_absolute() else prepared / src
            if src not in sources and len(sources) < count:
                sources.append(src)
    if len(sources) < count:
        raise CheckFailed(f"[{name}] {prepared / spec['datalist']} lists {len(sources)} images, {count} wanted")
    prefix = name.split("_")[2] if name.startswith("apf") else name.split("_")[0]
    out = []
    for src in sources:
        ext = ".nii.gz" if src.name.endswith(".nii.gz") else src.suffix
        image_id = f"{prefix}_{src.name[: -len(ext)]}"
        dest = studies / f"{image_id}{ext}"
        shutil.copy2(src, dest)
        out.append((image_id, dest))
    if spec["dataset"] == "btcv":
        import nibabel as nib

        img = nib.load(str(out[0][1]))
        lps = img.as_reoriented(np.array([[0, -1], [1, -1], [2, 1]]))
        if "".join(nib.aff2axcodes(lps.affine)) != "LPS":
            raise CheckFailed(f"[{name}] reorienting {out[0][1]} gave {nib.aff2axcodes(lps.affine)}, not LPS")
        dest = studies / f"{out[0][0]}_lps.nii.gz"
        nib.save(lps, str(dest))
        out.append((f"{out[0][0]}_lps", dest))
    return out


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


def bundle_direct(name: str, images: list[Path], model: Path, work: Path, log: Path) -> dict[str, Any]:
    """The bundle's own inference (``python -m monai.bundle run``, inference.yaml) on ``images``: per image file
    name, the class scores (from predictions.csv) or the path of the saved label."""
    cfg = ROOT / "bundles" / name / "configs"
    out = work / "direct" / name
    run([PY, "-m", "monai.bundle", "run", "--config_file", str(cfg / "inference.yaml"),
         "--meta_file", str(cfg / "metadata.json"), "--logging_file", str(cfg / "logging.conf"),
         "--input_files", json.dumps([str(i) for i in images]), "--ckpt_dir", str(model.parent),
         "--output_dir", str(out)], log, cwd=ROOT / "bundles" / name)
    if "classification" in name:
        rows = list(csv.reader((out / "predictions.csv").open()))
        refs: dict[str, Any] = {Path(r[0]).name: np.array([float(v) for v in r[1:]]) for r in rows}
    else:
        refs = {}
        for image in images:
            ext = ".nii.gz" if image.name.endswith(".nii.gz") else image.suffix
            stem = image.name[: -len(ext)]
            # <stem>_<postfix><ext> (seg, prediction), not <stem>_<postfix>_view (0/255 copy) nor another stem's
            found = [p for p in out.rglob(f"{stem}_*{ext}") if "_" not in p.name[len(stem) + 1 : -len(ext)]]
            if len(found) != 1:
                raise CheckFailed(f"[{name}] expected one output of the bundle's own run for {image.name} in {out}, "
                                  f"found {found}")
            refs[image.name] = found[0]
    missing = [i.name for i in images if i.name not in refs]
    if missing:
        raise CheckFailed(f"[{name}] the bundle's own run gave no answer for {missing} (see {log})")
    return refs


def check_classification(name: str, payload: bytes, meta: dict, ref: np.ndarray, atol: float = 1e-6) -> str:
    res = json.loads(payload)
    pred = res.get("prediction")
    classes = next(iter(meta["network_data_format"]["outputs"].values()))
    n = int(classes["num_channels"])
    if not isinstance(pred, list) or len(pred) != n:
        raise CheckFailed(f"[{name}] expected {n} class scores, got {res}")
    scores = np.array([p["score"] for p in pred], dtype=float)
    names = {int(k): v.lower() for k, v in classes["channel_def"].items()}
    got = {int(p["idx"]): p["label"] for p in pred}
    if got != names:
        raise CheckFailed(f"[{name}] class names {got} differ from metadata channel_def {names}")
    diff = float(np.abs(ref - scores).max())
    if not diff <= atol:
        raise CheckFailed(f"[{name}] MONAI Label scores {scores} differ from the bundle's own {ref} by {diff:.3g}")
    return f"scores {np.round(scores, 4).tolist()}, max |diff| {diff:.1e}"


def _load_label(path: Path) -> tuple[np.ndarray, np.ndarray | None]:
    if path.name.endswith((".nii", ".nii.gz")):
        import nibabel as nib

        img = nib.load(str(path))
        return np.asarray(img.dataobj), img.affine
    from PIL import Image

    return np.asarray(Image.open(path)), None


def check_segmentation(name: str, payload: bytes, image: Path, meta: dict, ref_path: Path, answers: Path) -> str:
    ext = ".nii.gz" if image.name.endswith(".nii.gz") else image.suffix
    got_path = answers / image.name
    got_path.write_bytes(payload)
    label, affine = _load_label(got_path)
    src, src_affine = _load_label(image)
    spatial = src.shape[:3] if ext != ".png" else src.shape[:2]
    if tuple(label.shape) != tuple(spatial):
        raise CheckFailed(f"[{name}] {image.name}: label shape {label.shape} != image shape {spatial}")
    if label.dtype != np.uint8:
        raise CheckFailed(f"[{name}] {image.name}: label dtype {label.dtype}, expected uint8")
    if affine is not None and not np.allclose(affine, src_affine, atol=1e-4):
        raise CheckFailed(f"[{name}] {image.name}: label affine\n{affine}\n!= image affine\n{src_affine}")
    classes = next(iter(meta["network_data_format"]["outputs"].values()))
    allowed = {int(k) for k in classes["channel_def"]}
    values = sorted(int(v) for v in np.unique(label))
    if not set(values) <= allowed:
        raise CheckFailed(f"[{name}] {image.name}: label values {values} outside channel_def {sorted(allowed)}")
    ref = np.squeeze(_load_label(ref_path)[0])
    if ref.shape != label.shape:
        raise CheckFailed(f"[{name}] {image.name}: label {label.shape} vs the bundle's own {ref.shape} ({ref_path})")
    differ = int((ref != label).sum())
    if differ:
        raise CheckFailed(f"[{name}] {image.name}: {differ} of {label.size} voxels differ from the bundle's own "
                          f"label ({ref_path})")
    orient = f", {''.join(__import__('nibabel').aff2axcodes(affine))}" if affine is not None else ""
    return f"{label.shape} uint8{orient}, values {values}, 100% = bundle run"


def build_stock_app(app: Path, names: list[str], trained: dict[str, tuple[Path, Path]], log: Path) -> Path:
    """MONAI Label's own sample app, unmodified (``monailabel apps --download --name monaibundle``; shipped with
    the package, nothing downloaded), with each bundle folder (configs, docs, LICENSE, ``models/model.pt``)
    copied into its ``model/``, as a user would drop in a bundle."""
    shutil.rmtree(app, ignore_errors=True)
    run([str(Path(PY).parent / "monailabel"), "apps", "--download", "--name", "monaibundle", "--output", str(app)],
        log)
    app = app / "monaibundle"  # where `apps --download` puts it
    if not (app / "main.py").is_file():
        raise CheckFailed(f"monailabel apps --download wrote no {app / 'main.py'}")
    for name in names:
        src, dest = ROOT / "bundles" / name, app / "model" / name
        shutil.copytree(src / "configs", dest / "configs")
        for extra in ("docs", "LICENSE"):
            if (src / extra).is_dir():
                shutil.copytree(src / extra, dest / extra)
            elif (src / extra).is_file():
                shutil.copy2(src / extra, dest / extra)
        (dest / "models").mkdir(parents=True)
        shutil.copy2(trained[name][1], dest / "models" / "model.pt")
    return app


def serve_and_check(label: str, app: Path, conf: list[str], names: list[str], images: dict[str, list],
                    refs: dict[str, dict], work: Path, port: int) -> tuple[dict[str, str], bool]:
    """Start ``monailabel start_server`` for ``app``, check /info/ and every image's /infer/ answer against the
    references, stop the server. Returns (summary rows, failed)."""
    url = f"http://127.0.0.1:{port}"
    server_log = work / f"server_{label}.log"
    cmd = [str(Path(PY).parent / "monailabel"), "start_server", "--app", str(app), "--studies", str(work / "studies"),
           "--conf", "zoo_source", "local", "--conf", "sam2", "false", *conf, "--host", "127.0.0.1",
           "--port", str(port)]
    logger.info("$ %s", " ".join(cmd))
    env = {**os.environ, "PATH": f"{Path(PY).parent}:{os.environ.get('PATH', '')}", "PYTHONUNBUFFERED": "1",
           "MONAI_LABEL_DATASTORE_AUTO_RELOAD": "false"}
    with open(server_log, "w") as f:
        server = subprocess.Popen(cmd, stdout=f, stderr=subprocess.STDOUT, env=env, cwd=work)
    logger.info("[%s] server PID %d, log %s", label, server.pid, server_log)
    results: dict[str, str] = {}
    failed = False
    answers = work / "answers" / label
    answers.mkdir(parents=True, exist_ok=True)
    try:
        t0 = time.time()
        info = wait_for_server(url, server, server_log)
        logger.info("[%s] server up after %.0f s: models %s", label, time.time() - t0, sorted(info.get("models", {})))
        (work / f"info_{label}.json").write_text(json.dumps(info, indent=1, default=str))
        missing = sorted(set(names) - set(info.get("models", {})))
        if missing:
            raise CheckFailed(f"models not loaded by MONAI Label: {missing}; see {server_log}")
        for name in names:
            meta = json.loads((ROOT / "bundles" / name / "configs" / "metadata.json").read_text())
            classification = "classification" in name
            try:
                # MONAI Label's label names come from the first output's channel_def, background dropped; its
                # dimension from the first input's spatial_shape, which must be that of the images it is sent
                channel_def = next(iter(meta["network_data_format"]["outputs"].values()))["channel_def"]
                want = {v.lower(): int(k) for k, v in channel_def.items() if v.lower() != "background"}
                dims = 3 if images[name][0][1].name.endswith(".nii.gz") else 2
                served = info["models"][name]
                if (served.get("labels") != want or served.get("dimension") != dims
                        or served.get("type") != ("classification" if classification else "segmentation")):
                    raise CheckFailed(f"[{name}] served as type {served.get('type')}, dimension "
                                      f"{served.get('dimension')}, labels {served.get('labels')}; expected "
                                      f"dimension {dims}, labels {want}")
                lines, seconds = [], 0.0
                for image_id, image in images[name]:
                    payload, _, took = post_infer(url, name, image_id, "json" if classification else "image")
                    seconds += took
                    ref = refs[name][image.name]
                    lines.append(f"{image.name}: " + (check_classification(name, payload, meta, ref) if classification
                                                      else check_segmentation(name, payload, image, meta, ref,
                                                                              answers)))
                results[name] = (f"PASS  {len(lines)} images, {seconds:5.1f} s, dimension {dims}\n"
                                 + "\n".join(f"{'':46}{x}" for x in lines))
            except CheckFailed as e:
                failed = True
                results[name] = f"FAIL  {e}"
    except CheckFailed as e:
        failed = True
        results["server"] = f"FAIL  {e}"
    finally:
        logger.info("[%s] stopping server PID %d", label, server.pid)
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
    return results, failed


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--work", type=Path, default=None,
                    help="work folder (default: a new private temporary folder); give the same one again to reuse "
                         "data and weights of a previous run")
    ap.add_argument("--port", type=int, default=0, help="server port (default: a free one)")
    ap.add_argument("--bundle", action="append", choices=sorted(BUNDLES), help="default: all four")
    ap.add_argument("--images", type=int, default=3, help="prepared images per bundle (BTCV: + an LPS copy)")
    ap.add_argument("--app", action="append", choices=["stock", "project"], help="default: both")
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
    apps = args.app or ["stock", "project"]
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

    try:
        trained = {name: prepare_and_train(name, BUNDLES[name], work, log) for name in names}
        images = {name: study_images(name, BUNDLES[name], trained[name][0], work / "studies", args.images)
                  for name in names}
        refs = {name: bundle_direct(name, [p for _, p in images[name]], trained[name][1], work, log)
                for name in names}
        built = {}
        if "stock" in apps:
            built["stock"] = (build_stock_app(work / "app_stock", names, trained, log),
                              ["--conf", "models", ",".join(names)])
        if "project" in apps:
            app = work / "app"
            shutil.rmtree(app, ignore_errors=True)
            cmd = [PY, "-m", "monai_ext.cli", "label-app", "--out", str(app), "--bundles-dir", str(ROOT / "bundles")]
            for name in names:
                cmd += ["--bundle", name, "--ckpt", f"{name}={trained[name][1]}"]
            run(cmd, log)
            built["project"] = (app, ["--conf", "skip_trainers", "true"])
    except CheckFailed as e:
        print(f"\n==== MONAI Label check summary ====\nenvironment: {versions}\nsetup FAIL  {e}\nRESULT: FAIL")
        return 1

    summary: dict[str, tuple[dict[str, str], bool]] = {}
    for label, (app, conf) in built.items():
        summary[label] = serve_and_check(label, app, conf, names, images, refs, work, args.port or free_port())

    print("\n==== MONAI Label check summary ====")
    print(f"environment: {versions}")
    print(f"work folder: {work} (logs: commands.log, server_<app>.log, info_<app>.json)")
    failed = False
    for label, (results, app_failed) in summary.items():
        failed = failed or app_failed
        print(f"--- app: {'MONAI Label stock monaibundle (unmodified)' if label == 'stock' else 'monai-ext label-app'}")
        for key, value in results.items():
            print(f"{key:45s} {value}")
    print("RESULT:", "FAIL" if failed else "PASS")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
