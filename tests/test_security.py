"""Security hardening (docs/security.md): size limits from headers before decoding (run under a memory
limit), packaging without symbolic links, a MONAI Label server that stays local, dependency floors, private
work folders, and the docs that say what is trusted."""

from __future__ import annotations

import gzip
import importlib.util
import json
import logging
import os
import struct
import subprocess
import sys
import zipfile
import zlib
from pathlib import Path

import numpy as np
import pytest

ROOT = Path(__file__).resolve().parents[1]
VINDR = "vindr_cxr_cardiomegaly_classification"
GIB = 2**30


# ------------------------------------------------------------------------------------------ hostile headers
def _huge_nifti(path: Path) -> None:
    """A 1500^3 float32 NIfTI (12.6 GiB of voxels) in a few dozen bytes: header only."""
    import nibabel as nib

    hdr = nib.Nifti1Header()
    hdr.set_data_shape((1500, 1500, 1500))
    hdr.set_data_dtype(np.float32)
    hdr["vox_offset"] = 352
    with gzip.open(path, "wb") as f:
        f.write(hdr.binaryblock + b"\0" * 4)


def _huge_tiff(path: Path) -> None:
    """A 46341^2 RGB tiled TIFF (6 GiB decoded) of 6.5 MB: the same zlib tile everywhere."""
    import tifffile

    tile = zlib.compress(np.zeros((1024, 1024, 3), np.uint8).tobytes())
    n = -(-46341 // 1024)
    tifffile.imwrite(path, data=(tile for _ in range(n * n)), shape=(46341, 46341, 3), dtype="uint8",
                     tile=(1024, 1024), compression="zlib", photometric="rgb")


def _huge_dicom(path: Path) -> None:
    """A DICOM declaring 1000 frames of 65535 x 65535 16-bit pixels (8 TiB) with 8 bytes of pixel data."""
    import pydicom
    from pydicom.dataset import FileMetaDataset
    from pydicom.uid import ExplicitVRLittleEndian, generate_uid

    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = "1.2.840.10008.5.1.4.1.1.1.1"
    meta.MediaStorageSOPInstanceUID = generate_uid()
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds = pydicom.Dataset()
    ds.file_meta = meta
    ds.SOPClassUID, ds.SOPInstanceUID = meta.MediaStorageSOPClassUID, meta.MediaStorageSOPInstanceUID
    ds.Modality, ds.PhotometricInterpretation = "DX", "MONOCHROME2"
    ds.Rows = ds.Columns = 65535
    ds.NumberOfFrames = 1000
    ds.SamplesPerPixel, ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 1, 16, 12, 11, 0
    ds.PixelData = b"\0" * 8
    ds.save_as(path, enforce_file_format=True)


def _huge_png(path: Path) -> None:
    """A PNG whose header declares 100000 x 100000 grey pixels (IHDR only, one empty IDAT)."""
    def chunk(kind: bytes, body: bytes) -> bytes:
        return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body))

    ihdr = struct.pack(">IIBBBBB", 100000, 100000, 8, 0, 0, 0, 0)
    path.write_bytes(b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(b"\0"))
                     + chunk(b"IEND", b""))


CHILD = r'''
import json, os, resource, sys
from pathlib import Path
import numpy as np, nibabel as nib, tifffile
import monai.data, monai.transforms  # readers imported before the limit (lazy imports need memory too)
from monai_ext.data import btcv, dicom, limits, paip
from monai_ext.workflows import checks

files = {k: Path(v) for k, v in json.loads(sys.argv[1]).items()}
vm_kib = next(int(l.split()[1]) for l in open("/proc/self/status") if l.startswith("VmSize:"))
budget = vm_kib * 1024 + 2 * 2**30  # 2 GiB above what the imports mapped: far below any of the files
resource.setrlimit(resource.RLIMIT_AS, (budget, budget))

def seg_datalist():
    root = files["nifti"].parent
    (root / "datalist.json").write_text(json.dumps({"training": [{"image": files["nifti"].name,
                                                                   "label": files["nifti"].name}]}))
    checks.check_datalist(root, splits=["training"], task="segmentation", num_classes=3)

cases = {
    "control_nifti": lambda: np.asarray(nib.load(str(files["nifti"])).dataobj),
    "control_tiff": lambda: tifffile.imread(files["tiff"]),
    "nifti_header": lambda: limits.check_nifti_header(files["nifti"]),
    "btcv_read_volume": lambda: btcv.read_volume(files["nifti"]),
    "checks_label_values": lambda: checks._label_values(files["nifti"]),
    "checks_datalist": seg_datalist,
    "tiff_header": lambda: limits.check_tiff_header(files["tiff"]),
    "paip_slide_read": lambda: paip.Slide(files["tiff"]).read(0),
    "paip_mask_full": lambda: paip.read_mask_full(files["tiff"]),
    "dicom_radiograph": lambda: dicom.read_radiograph(files["dicom"]),
    "dicom_check_pixels": lambda: dicom._check_pixels(files["dicom"]),
    "png_header": lambda: limits.check_image_header(files["png"]),
    "checks_png_shape": lambda: checks._spatial_shape(files["png"]),
}
out = {}
for name, fn in cases.items():
    try:
        fn()
        out[name] = "no error"
    except BaseException as e:
        out[name] = f"{type(e).__name__}: {e}"
print("RESULTS " + json.dumps(out))
'''


def test_huge_headers_fail_fast_under_a_memory_limit(tmp_path):
    """NIfTI / TIFF / DICOM / PNG headers declaring huge sizes: every reader raises a DataError naming the
    file, in a process limited to 2 GiB above its imports, where decoding the same files (controls) fails."""
    files = {"nifti": tmp_path / "huge.nii.gz", "tiff": tmp_path / "huge.tif", "dicom": tmp_path / "huge.dcm",
             "png": tmp_path / "huge.png"}
    _huge_nifti(files["nifti"])
    _huge_tiff(files["tiff"])
    _huge_dicom(files["dicom"])
    _huge_png(files["png"])
    assert files["nifti"].stat().st_size < 200 and files["tiff"].stat().st_size < 8e6
    env = {**os.environ, "OMP_NUM_THREADS": "1", "MONAI_EXT_MAX_PIXELS": "", "MONAI_EXT_MAX_BYTES": ""}
    proc = subprocess.run([sys.executable, "-c", CHILD, json.dumps({k: str(v) for k, v in files.items()})],
                          capture_output=True, text=True, timeout=240, env=env, cwd=ROOT, check=False)
    assert proc.returncode == 0, proc.stderr[-3000:]
    res = json.loads(proc.stdout.split("RESULTS ", 1)[1])
    # the files really are bombs: decoding them needs more memory than the child has
    assert res["control_nifti"].startswith("MemoryError"), res
    assert res["control_tiff"].startswith("MemoryError"), res
    for name, got in res.items():
        if name.startswith("control"):
            continue
        kind = {"nifti": "nifti", "btcv": "nifti", "checks": "nifti", "tiff": "tiff", "paip": "tiff",
                "dicom": "dicom", "png": "png"}[name.split("_")[0]]
        if name == "checks_png_shape":
            kind = "png"
        expect = "DatasetError" if name == "checks_datalist" else "SizeLimitError"
        assert got.startswith(expect), (name, got)
        assert str(files[kind]) in got, (name, got)
        assert "MemoryError" not in got, (name, got)
    assert "above the limit" in res["btcv_read_volume"] and "--max-pixels" in res["btcv_read_volume"]


def test_limits_let_real_sizes_through(monkeypatch):
    from monai_ext.data import limits
    from monai_ext.data.common import DataError

    monkeypatch.setenv(limits.ENV_PIXELS, "")  # "" = the default; restored (unset) after the test
    monkeypatch.setenv(limits.ENV_BYTES, "")
    limits.check_size("ct.nii.gz", (512, 512, 1000), 4)  # a long CT as float32: 1 GiB
    limits.check_size("slide.svs", (8192, 8192, 3), 1)  # the largest PAIP resolution
    limits.check_size("slide.svs", (25000, 25000, 3), 1)  # a mid pyramid level of a 100K x 100K slide
    limits.check_size("cxr.dcm", (1, 3072, 3072, 1), 4)
    with pytest.raises(limits.SizeLimitError, match=r"big\.nii\.gz: NIfTI header declares 1500x1500x1500"):
        limits.check_size("big.nii.gz", (1500, 1500, 1500), 4, "NIfTI")
    with pytest.raises(limits.SizeLimitError):
        limits.check_size("slide.svs", (100000, 100000, 3), 1)  # level 0 of such a slide is never decoded whole
    with pytest.raises(DataError, match="invalid size"):
        limits.check_size("x.nii", (0, 5), 1)
    monkeypatch.setenv(limits.ENV_PIXELS, "1000")
    with pytest.raises(limits.SizeLimitError, match="above the limit of 1,000 elements"):
        limits.check_size("small.png", (40, 40), 1)


def test_prepare_max_pixels_option(tmp_path, monkeypatch, caplog):
    """``monai-ext prepare --max-pixels`` reaches the readers (and worker processes, through the environment):
    a BTCV volume above it is skipped with the file named."""
    from monai_ext.cli import main as cli_main
    from monai_ext.data import btcv, limits

    monkeypatch.setenv(limits.ENV_PIXELS, "")  # recorded, so the CLI's setting is undone after the test
    btcv.synthesize(tmp_path / "raw", cases=2, seed=0, size=(24, 24, 8))
    caplog.set_level(logging.WARNING)
    rc = cli_main(["prepare", "btcv", "--raw", str(tmp_path / "raw"), "--out", str(tmp_path / "out"),
                   "--max-pixels", "1000"])
    assert os.environ.get(limits.ENV_PIXELS) == "1000"
    assert rc == 1
    skipped = json.loads((tmp_path / "out" / "skipped.json").read_text())
    assert skipped and all("above the limit of 1,000 elements" in s["reason"] for s in skipped)
    assert all(s["file"].endswith(".nii.gz") for s in skipped)


def test_pillow_guard_stays_on():
    import importlib

    import PIL.Image

    for name in ("monai_ext.data.paip", "monai_ext.cli"):  # the CLI builds every sub-command, paip's included
        importlib.import_module(name)
    importlib.import_module("monai_ext.cli").build_parser()
    assert PIL.Image.MAX_IMAGE_PIXELS is not None and PIL.Image.MAX_IMAGE_PIXELS <= 2**28


# ---------------------------------------------------------------------------------------------- packaging
def _bundle_copy(tmp_path: Path) -> Path:
    import shutil

    src = ROOT / "bundles" / VINDR
    dest = tmp_path / VINDR
    for name in ("configs", "docs"):
        shutil.copytree(src / name, dest / name)
    shutil.copy2(src / "LICENSE", dest / "LICENSE")
    return dest


def _trained(tmp_path: Path) -> Path:
    import torch
    from monai.bundle import ConfigParser

    parser = ConfigParser()
    parser.read_config(str(ROOT / "bundles" / VINDR / "configs" / "inference.yaml"))
    parser.read_meta(str(ROOT / "bundles" / VINDR / "configs" / "metadata.json"))
    path = tmp_path / "trained.pt"
    torch.save(parser.get_parsed_content("network_def").state_dict(), path)
    return path


def test_package_skips_symlinks(tmp_path, caplog):
    """A link in a bundle to a private file (or folder) is not packaged; a required file that is a link
    stops packaging instead of shipping without it."""
    from monai_ext import bundle_tools as bt

    private = tmp_path / "home"
    (private / "keys").mkdir(parents=True)
    (private / "notes.txt").write_text("TOP-SECRET patient list\n")
    (private / "keys" / "id.txt").write_text("TOP-SECRET key\n")
    bundle = _bundle_copy(tmp_path)
    (bundle / "docs" / "notes.md").symlink_to(private / "notes.txt")
    (bundle / "configs" / "keys").symlink_to(private / "keys", target_is_directory=True)
    ckpt = _trained(tmp_path)
    caplog.set_level(logging.WARNING)
    out = bt.package_bundle(bundle, tmp_path / "pkg.zip", ckpt=ckpt)
    with zipfile.ZipFile(out) as zf:
        names = zf.namelist()
        assert f"{VINDR}/docs/README.md" in names and f"{VINDR}/configs/inference.yaml" in names
        assert not any("notes.md" in n or "/keys" in n for n in names), names
        assert not any(b"TOP-SECRET" in zf.read(n) for n in names)
    warned = " ".join(r.getMessage() for r in caplog.records)
    assert "notes.md: not packaged (a symbolic link)" in warned and "keys: not packaged" in warned

    (bundle / "LICENSE").unlink()
    (bundle / "LICENSE").symlink_to(private / "notes.txt")
    with pytest.raises(bt.BundleError, match=r"LICENSE not packaged \(symbolic link or outside the bundle\)"):
        bt.package_bundle(bundle, tmp_path / "pkg2.zip", ckpt=ckpt)
    assert not (tmp_path / "pkg2.zip").exists()


# ------------------------------------------------------------------------------------------- MONAI Label
def test_label_app_prints_a_local_server_command(tmp_path, caplog):
    from monai_ext import bundle_tools as bt
    from monai_ext.cli import main as cli_main

    ckpt = _trained(tmp_path)
    app = tmp_path / "app"
    caplog.set_level(logging.INFO)
    assert cli_main(["label-app", "--out", str(app), "--bundle", VINDR, "--ckpt", f"{VINDR}={ckpt}"]) == 0
    printed = [r.getMessage() for r in caplog.records if "start_server" in r.getMessage()]
    assert len(printed) == 1 and "--host 127.0.0.1 --port 8000" in printed[0], printed
    assert f"--app {app}" in printed[0]
    main = (app / "main.py").read_text()
    assert "--host 127.0.0.1" in main and "reverse proxy" in main
    assert bt.label_server_command("A", host="0.0.0.0").endswith("--host 0.0.0.0 --port 8000")

    caplog.clear()
    assert cli_main(["label-app", "--out", str(app), "--bundle", VINDR, "--ckpt", f"{VINDR}={ckpt}",
                     "--host", "0.0.0.0"]) == 0  # the tool's own app folder is updated in place
    assert any(r.levelno == logging.WARNING and "no authentication" in r.getMessage() for r in caplog.records)

    mine = tmp_path / "mine"
    (mine / "model" / VINDR).mkdir(parents=True)
    (mine / "model" / VINDR / "my_weights.pt").write_text("user data")
    with pytest.raises(bt.BundleError, match="holds files not written by `monai-ext label-app`"):
        bt.build_label_app(mine, bundles=[VINDR], ckpts={VINDR: ckpt})
    assert (mine / "model" / VINDR / "my_weights.pt").read_text() == "user data"


def test_every_documented_server_command_is_local():
    """Every ``monailabel start_server`` the project runs or documents binds to 127.0.0.1."""
    sources = [*ROOT.glob("docs/*.md"), ROOT / "README.md", *ROOT.glob("bundles/*/docs/*.md"),
               *ROOT.glob("scripts/*"), *ROOT.glob("monai_ext/**/*.py")]
    found = 0
    for path in sources:
        text = path.read_text(errors="replace")
        for i, line in enumerate(text.splitlines()):
            if "start_server" in line and "--app" in line:
                found += 1
                window = "\n".join(text.splitlines()[i:i + 3])
                assert "--host" in window and ("127.0.0.1" in window or "str(host)" in window), (path, line)
    assert found >= 3


# ------------------------------------------------------------------------------------- dependency floors
def test_dependency_floors_exclude_vulnerable_versions():
    from packaging.requirements import Requirement

    try:
        import tomllib
    except ImportError:  # Python 3.10
        import tomli as tomllib
    deps = {Requirement(d).name.lower(): Requirement(d).specifier
            for d in tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["dependencies"]}
    cases = {
        "torch": (["2.3.0", "2.6.0", "2.9.1"], ["2.10.0", "2.13.0", "2.14.1"]),
        "pydicom": (["2.4.4", "3.0.0", "3.0.1"], ["2.4.5", "3.0.2"]),
        "pillow": (["10.2.0", "12.1.1", "12.2.0"], ["12.3.0", "13.0.0"]),
    }
    for name, (bad, good) in cases.items():
        spec = deps[name]
        assert not any(spec.contains(v) for v in bad), (name, spec)
        assert all(spec.contains(v) for v in good), (name, spec)
    setup = (ROOT / "scripts" / "setup_label_env.sh").read_text()
    assert "pydicom==2.4.5" in setup and "pillow>=12.3.0" in setup and "2.4.4" not in setup
    assert "pydicom==2.4.4" not in (ROOT / "docs" / "monailabel.md").read_text()


# ----------------------------------------------------------------------------------------- work folders
def _label_check_module():
    spec = importlib.util.spec_from_file_location("monailabel_check", ROOT / "scripts" / "monailabel_check.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_label_check_work_folder(tmp_path):
    mod = _label_check_module()
    fresh = mod.prepare_work(None)
    try:
        assert (fresh / mod.WORK_MARKER).is_file() and (fresh.stat().st_mode & 0o777) == 0o700
        assert fresh.name.startswith("monai_ext_label_check_")
    finally:
        import shutil

        shutil.rmtree(fresh)
    theirs = tmp_path / "theirs"
    theirs.mkdir()
    (theirs / "study.nii.gz").write_text("someone's data")
    for again in (False, True):
        with pytest.raises(mod.WorkFolderError, match="holds files this script did not create"):
            mod.prepare_work(theirs, fresh=again)
    assert (theirs / "study.nii.gz").read_text() == "someone's data"
    link = tmp_path / "link"
    link.symlink_to(theirs, target_is_directory=True)
    with pytest.raises(mod.WorkFolderError, match="symbolic link"):
        mod.prepare_work(link, fresh=True)
    mine = mod.prepare_work(tmp_path / "mine")
    (mine / "models").mkdir()
    (mine / "models" / "old.pt").write_text("x")
    assert mod.prepare_work(tmp_path / "mine") == mine and (mine / "models" / "old.pt").exists()  # reused
    assert mod.prepare_work(tmp_path / "mine", fresh=True) == mine
    assert sorted(p.name for p in mine.iterdir()) == [mod.WORK_MARKER]


# -------------------------------------------------------------------------------------------------- docs
def test_security_docs(capsys):
    from monai_ext.cli import main as cli_main

    doc = (ROOT / "docs" / "security.md").read_text()
    for need in ("bundle configs are code", "monai-ext verify", "weights_only=True", "convert-checkpoint",
                 "--max-pixels", "127.0.0.1", "symbolic link"):
        assert need.lower() in doc.lower(), need
    assert "docs/security.md" in (ROOT / "README.md").read_text()
    with pytest.raises(SystemExit):
        cli_main(["verify", "--help"])
    assert "NOT a safety check" in " ".join(capsys.readouterr().out.split())
