"""Label paths against independent nearest-neighbour references: BTCV preparation (``--size`` and
``--spacing``) and the APF patching of the two segmentation bundles (their own ``train.yaml``). A label must
stay a whole number from the source classes; an interpolated-then-rounded label fails here."""

from __future__ import annotations

from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
import torch

from monai_ext.data import btcv
from monai_ext.data.synthetic import btcv as synth_btcv
from monai_ext.transforms import grid_to_tokens

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def raw(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("btcv_label_raw")
    synth_btcv.synthesize(root, cases=1, seed=5)  # one labelled 64 x 64 x 24 volume stored LPS (as DICOM converts)
    return root


def _load(path: Path) -> tuple[np.ndarray, np.ndarray]:
    img = nib.load(str(path))
    return np.asarray(img.dataobj), img.affine


def _to_ras(arr: np.ndarray, affine: np.ndarray) -> np.ndarray:
    """Reorientation to RAS with nibabel's own orientation code (not MONAI's)."""
    ornt = nib.orientations.ornt_transform(nib.orientations.io_orientation(affine),
                                           nib.orientations.axcodes2ornt("RAS"))
    return nib.orientations.apply_orientation(arr, ornt)


def _assert_whole_source_classes(out: np.ndarray, src: np.ndarray) -> None:
    assert out.dtype == np.uint8
    assert set(np.unique(out).tolist()) <= set(np.unique(src).tolist())


def test_btcv_prepare_size_is_nearest_neighbour(raw, tmp_path):
    """``Resize`` of the label = index ``floor(i * in / out)`` per axis (torch's ``nearest``), non-integer ratios."""
    btcv.prepare(raw, tmp_path / "p", size=(24, 40, -1))
    src, src_aff = _load(raw / "labelsTr" / "label0001.nii.gz")
    out, _ = _load(tmp_path / "p" / "labelsTr" / "label0001.nii.gz")
    ras = _to_ras(src, src_aff)
    assert out.shape == (24, 40, ras.shape[2])
    idx = [np.floor(np.arange(n_out) * (n_in / n_out)).astype(int) for n_in, n_out in zip(ras.shape, out.shape)]
    np.testing.assert_array_equal(out, ras[np.ix_(*idx)])
    _assert_whole_source_classes(out, src)
    assert len(np.unique(out)) >= 12  # nearly all 13 organs are in the down-scaled label


@pytest.mark.parametrize("spacing", [(4.5, 7.5, 6.5), (9.0, 9.0, 10.0)])
def test_btcv_prepare_spacing_is_nearest_neighbour(raw, tmp_path, spacing):
    """``Spacing`` of the label = the source voxel nearest to each output voxel centre, in world mm (through the
    affines written to the files), border-clamped; near-ties (within 1e-3 voxel of .5) are not judged."""
    btcv.prepare(raw, tmp_path / "p", size=(-1, -1, -1), spacing=spacing)
    src, src_aff = _load(raw / "labelsTr" / "label0001.nii.gz")
    out, out_aff = _load(tmp_path / "p" / "labelsTr" / "label0001.nii.gz")
    img, img_aff = _load(tmp_path / "p" / "imagesTr" / "img0001.nii.gz")
    assert img.shape == out.shape and np.allclose(img_aff, out_aff, atol=1e-4)
    np.testing.assert_allclose(np.linalg.norm(out_aff[:3, :3], axis=0), spacing, rtol=1e-5)
    ijk = np.stack(np.meshgrid(*[np.arange(n) for n in out.shape], indexing="ij"), -1).reshape(-1, 3)
    pos = (np.linalg.inv(src_aff) @ out_aff @ np.c_[ijk, np.ones(len(ijk))].T)[:3].T  # source voxel coordinates
    near = np.clip(np.rint(pos).astype(int), 0, np.array(src.shape) - 1)
    want = src[near[:, 0], near[:, 1], near[:, 2]].reshape(out.shape)
    tie = (np.abs(np.abs(pos - np.floor(pos)) - 0.5) < 1e-3).any(axis=1).reshape(out.shape)
    assert tie.mean() < 0.2, tie.mean()  # 0 for these spacings
    np.testing.assert_array_equal(out[~tie], want[~tie])
    _assert_whole_source_classes(out, src)


# ----------------------------------------------------------------------------------------------- bundles' APF
def _apf_patch_transform(bundle: str):
    """The ``AdaptivePatchd`` of a bundle's own ``train.yaml`` (last random transform), small token count."""
    from monai.bundle import ConfigParser

    parser = ConfigParser()
    parser.read_config(str(ROOT / "bundles" / bundle / "configs" / "train.yaml"))
    parser["presets#cpu#num_tokens"] = 25
    patch = parser.get_parsed_content("train#random_transforms")[-1]
    assert type(patch).__name__ == "AdaptivePatchd"
    return patch, parser.get_parsed_content("apf#patch_size")


def _scene(channels: int, side: int, n_classes: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Blocky label map with classes ``0 .. n_classes - 1`` and an image that shows it (plus noise)."""
    rng = np.random.default_rng(seed)
    lab = np.zeros((side, side), np.int64)
    for k in range(1, n_classes):
        y, x = rng.integers(0, side - 6, 2)
        h, w = rng.integers(3, side // 2, 2)
        lab[y : y + h, x : x + w] = k
    img = lab / max(n_classes - 1, 1) + rng.normal(0, 0.02, (channels, side, side))
    return img.astype(np.float32), lab[None].astype(np.float32)  # the bundles cast labels to float32


@pytest.mark.parametrize("bundle,channels,n_classes", [("apf_unetr_btcv_segmentation", 1, 14),
                                                       ("apf_unetr_paip_segmentation", 3, 2)])
def test_bundle_apf_label_patches_are_nearest_neighbour(bundle, channels, n_classes):
    """Each leaf of the label: ``nearest-exact`` resize of the leaf box (its centre pixels); of the image: the
    block mean (``adaptive_avg_pool2d``). Label patches keep the source classes as whole numbers."""
    patch, p = _apf_patch_transform(bundle)
    img, lab = _scene(channels, 128, n_classes, seed=1)
    out = patch({"image": torch.from_numpy(img), "label": torch.from_numpy(lab)})
    meta = out["image_apf"]
    tok_img = torch.as_tensor(grid_to_tokens(out["image"], p))  # (L, C, p, p)
    tok_lab = torch.as_tensor(grid_to_tokens(out["label"], p))
    leaves, mask = np.asarray(meta["leaves"]), np.asarray(meta["mask"])
    assert mask.sum() > 4 and len(np.unique(leaves[mask, 2])) > 1  # adaptive: leaves of several sizes
    for i in np.flatnonzero(mask):
        y, x, s = (int(v) for v in leaves[i])
        box_l = torch.from_numpy(lab[None, :, y : y + s, x : x + s])
        box_i = torch.from_numpy(img[None, :, y : y + s, x : x + s])
        want_l = torch.nn.functional.interpolate(box_l, size=(p, p), mode="nearest-exact")[0]
        want_i = torch.nn.functional.adaptive_avg_pool2d(box_i.double(), p)[0]
        torch.testing.assert_close(tok_lab[i].float(), want_l, rtol=0, atol=0)
        torch.testing.assert_close(tok_img[i].double(), want_i, rtol=1e-5, atol=1e-6)
    assert torch.all(tok_lab[~torch.from_numpy(mask)] == 0)
    values = torch.unique(tok_lab).tolist()
    assert all(float(v).is_integer() for v in values) and set(values) <= set(range(n_classes))
