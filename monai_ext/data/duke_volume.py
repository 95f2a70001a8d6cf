"""DUKE breast DCE-MRI volume preprocessing: pre- and first post-contrast series -> per-breast subtraction
crops (the pipeline of :mod:`monai_ext.data.duke`), and the reproducible NIfTI writer it uses."""

from __future__ import annotations

import gzip
import logging
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from monai_ext.data.common import atomic_path

logger = logging.getLogger("monai_ext.data.duke")

DEFAULT_SPACING = (0.7, 0.7, 3.0)
#: per-breast crop at ``spacing`` (x: one breast, i.e. half the bilateral field; y: AP; z: slices)
PAPER_SIZE = (256, 256, 32)
DEFAULT_OUT_SIZE = (64, 64, 16)



def _same_grid(a: Any, b: Any) -> bool:
    import torch

    return tuple(a.shape) == tuple(b.shape) and torch.allclose(
        torch.as_tensor(a.affine, dtype=torch.float64), torch.as_tensor(b.affine, dtype=torch.float64), atol=1e-3
    )


class DukeSubtractionPreprocess:
    """Pre- and first post-contrast volumes -> per-breast subtraction crops.

    Args:
        spacing: target voxel size in mm (RAS axes x, y, z).
        size: per-breast crop in voxels at ``spacing`` (x: one breast = half the bilateral field).
        out_size: final per-breast array shape (``None``: keep ``size``).
        ap_crop: ``"anterior"``: the AP window ends ``margin`` voxels in front of the anterior-most
            tissue (pre-contrast voxels above the 90th percentile); ``"center"``: centred.
        margin: see ``ap_crop``.

    Call with ``(pre, post)``, 3D ``MetaTensor`` s (``(X, Y, Z)`` or ``(1, X, Y, Z)``); returns
    ``{"L": MetaTensor (1, *out_size), "R": ...}`` (patient's left and right breast).
    """

    def __init__(
        self,
        spacing: Sequence[float] = DEFAULT_SPACING,
        size: Sequence[int] = PAPER_SIZE,
        out_size: Sequence[int] | None = DEFAULT_OUT_SIZE,
        ap_crop: str = "anterior",
        margin: int = 10,
    ):
        if ap_crop not in ("anterior", "center"):
            raise ValueError(f"ap_crop must be 'anterior' or 'center', got {ap_crop!r}")
        self.spacing = tuple(float(s) for s in spacing)
        self.size = tuple(int(s) for s in size)
        self.out_size = tuple(int(s) for s in (out_size or size))
        self.ap_crop = ap_crop
        self.margin = int(margin)

    def __call__(self, pre: Any, post: Any) -> dict[str, Any]:
        import torch
        from monai.data import MetaTensor
        from monai.transforms import Orientation, ResampleToMatch, Resize, SpatialCrop, SpatialResample

        ras = Orientation(axcodes="RAS", labels=(("L", "R"), ("P", "A"), ("I", "S")))
        pre = ras((pre if pre.ndim == 4 else pre[None]).float())
        post = ras((post if post.ndim == 4 else post[None]).float())
        if not _same_grid(pre, post):
            logger.debug("post-contrast grid differs from pre-contrast grid; resampling post onto pre")
            post = ResampleToMatch(mode="bilinear", padding_mode="border")(post, pre)
        affine = torch.as_tensor(pre.affine, dtype=torch.float64)
        meta = {k: v for k, v in pre.meta.items() if k != "affine"}
        sub = MetaTensor(post.as_tensor() - pre.as_tensor(), affine=affine, meta=meta)
        # the bilateral box, axis-aligned in RAS world coordinates, sampled once at `spacing`
        sx, sy, sz = self.size
        full = (2 * sx, sy, sz)
        sp = torch.tensor(self.spacing, dtype=torch.float64)
        shape = torch.tensor(pre.shape[1:], dtype=torch.float64)
        centre = (affine @ torch.cat([(shape - 1) / 2, torch.ones(1, dtype=torch.float64)]))[:3]
        first = centre - (torch.tensor(full, dtype=torch.float64) - 1) / 2 * sp
        if self.ap_crop == "anterior":
            top = self._anterior_row(pre[0])
            if top is not None:  # the box ends `margin` voxels in front of the anterior-most tissue
                idx = (shape - 1) / 2
                idx[1] = top
                y_top = (affine @ torch.cat([idx, torch.ones(1, dtype=torch.float64)]))[1]
                first[1] = y_top + self.margin * sp[1] - (sy - 1) * sp[1]
        dst = torch.eye(4, dtype=torch.float64)
        dst[:3, :3] = torch.diag(sp)
        dst[:3, 3] = first
        box = SpatialResample(mode="bilinear", padding_mode="zeros", dtype=torch.float32)(
            sub, dst_affine=dst, spatial_size=full
        )
        halves = {  # RAS: x grows towards the patient's right, so the low half is the left breast
            "L": SpatialCrop(roi_start=(0, 0, 0), roi_end=(sx, sy, sz))(box),
            "R": SpatialCrop(roi_start=(sx, 0, 0), roi_end=(2 * sx, sy, sz))(box),
        }
        if self.out_size != self.size:
            down = all(o <= s for o, s in zip(self.out_size, self.size))
            resize = Resize(self.out_size, mode="area" if down else "trilinear", anti_aliasing=not down)
            halves = {k: resize(v) for k, v in halves.items()}
        return halves

    @staticmethod
    def _anterior_row(pre: Any) -> int | None:
        """Highest y index (RAS: most anterior) holding tissue (pre-contrast above its 90th
        percentile in at least 0.2% of the voxels of that row plane)."""
        arr = pre.detach().cpu().numpy()
        sample = arr[::2, ::2, ::2]
        if sample.size == 0:
            return None
        thr = float(np.percentile(sample, 90))
        counts = (arr > thr).sum(axis=(0, 2))
        min_count = max(1, int(0.002 * arr.shape[0] * arr.shape[2]))
        rows = np.nonzero(counts >= min_count)[0]
        return int(rows.max()) if rows.size else None


def save_nifti(img: Any, path: Path) -> None:
    """Write a channel-first single-channel MetaTensor as float32 NIfTI with its affine,
    atomically (no half-written files) and reproducibly (no time stamp in the gzip header)."""
    import nibabel as nib

    arr = np.asarray(img.detach().cpu().numpy()[0], dtype=np.float32)
    affine = np.asarray(img.affine, dtype=np.float64)
    nii = nib.Nifti1Image(arr, affine)
    nii.set_qform(affine, code=1)
    nii.set_sform(affine, code=1)
    nii.header.set_xyzt_units("mm")
    tmp = atomic_path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(tmp, "wb") as fh:
        fh.write(gzip.compress(nii.to_bytes(), compresslevel=6, mtime=0))
    tmp.replace(path)
