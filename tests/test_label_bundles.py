"""The bundles as MONAI Label's stock ``monaibundle`` app (0.8.5) runs them, without a MONAI Label install.

The stock app wraps each bundle in ``BundleInferTask``: the bundle's ``preprocessing``, ``network_def`` with its
``inferer``, the ``postprocessing`` without ``SaveImaged``, then its own ``Restored`` on the first output key of the
metadata (``pred``) against the first input key (``image``), then its writer, which keeps the label's dtype
(ITK's PNG writer accepts only unsigned char / short) and, for a classification task, reads the class scores
from ``pred``. What a bundle must hand over for that to work, checked here:

- classification: ``pred`` the score vector ``(K,)`` and neither ``image`` nor ``image_meta_dict`` left
  (``Restored`` takes the image's spatial shape from either and would try to resize the vector to it:
  ``operands could not be broadcast together``);
- segmentation: a uint8 label of the input's geometry; a 2D label without its channel axis (``Restored`` keeps
  ``(1, H, W)`` and the writer then saves a 1 x W image);
- metadata: the image a user sends (MONAI Label reports ``dimension`` from its ``spatial_shape``), the model zoo's
  ``supported_apps`` and JSON format.

The real server check of the same is ``bash scripts/test_monailabel.sh`` (stock app and ``monai-ext label-app``).
"""

from __future__ import annotations

import json
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
import torch
from monai.bundle import ConfigParser
from monai.data import MetaTensor
from monai.transforms import SaveImaged
from PIL import Image

from monai_ext import bundle as bt

ROOT = Path(__file__).resolve().parents[1]
BUNDLES_DIR = ROOT / "bundles"
#: the bundles checked in MONAI Label's stock app (scripts/test_monailabel.sh)
LABEL_BUNDLES = ["vindr_cxr_cardiomegaly_classification", "duke_breast_mri_classification",
                 "apf_unetr_btcv_segmentation", "apf_unetr_paip_segmentation",
                 "airogs_glaucoma_classification", "isic_melanoma_classification"]
TINY_SIZES = {"hidden_size": 32, "mlp_dim": 64, "num_layers": 2, "num_heads": 4, "dim_head": None, "feature_size": 4}


def _parser(bundle: str) -> ConfigParser:
    parser = ConfigParser()
    parser.read_config(str(BUNDLES_DIR / bundle / "configs" / "inference.yaml"))
    parser.read_meta(str(BUNDLES_DIR / bundle / "configs" / "metadata.json"))
    cpu = parser.get("presets#cpu")
    parser["presets#tiny"] = {k: TINY_SIZES.get(k, v) for k, v in cpu.items()}
    parser["preset"] = "tiny"
    parser["device"] = "$torch.device('cpu')"
    return parser


def _meta(bundle: str) -> dict:
    return json.loads((BUNDLES_DIR / bundle / "configs" / "metadata.json").read_text())


def run_like_bundle_infer_task(bundle: str, image: Path) -> dict:
    """The bundle's pre-processing, network through its inferer (batch of one, as MONAI Label's ``run_inferer``)
    and post-processing without ``SaveImaged`` (MONAI Label's default ``post_filter``)."""
    parser = _parser(bundle)
    torch.manual_seed(0)
    net = parser.get_parsed_content("network_def").eval()
    pre = parser.get_parsed_content("preprocessing")
    post = [t for t in parser.get_parsed_content("postprocessing").transforms if not isinstance(t, SaveImaged)]
    inferer = parser.get_parsed_content("inferer")
    data = pre({"image": str(image)})
    with torch.no_grad():
        data["pred"] = inferer(data["image"][None], net)[0]
    data["image_meta_dict"] = dict(data["image"].meta)  # MONAI Label's data holds it too before post-processing
    for t in post:
        data = t(data)
    return data


def test_metadata_in_the_model_zoo_format():
    """The model zoo's pre-commit ``pretty-format-json --autofix --no-sort-keys --indent=4`` would leave every
    metadata.json unchanged (the hook's own formatting: json.dumps with indent 4, ASCII, newline at the end), and
    ``supported_apps`` names the MONAI Label release the bundles are checked with (the schema's example name)."""
    for bundle in bt.BUNDLE_NAMES:
        path = BUNDLES_DIR / bundle / "configs" / "metadata.json"
        text = path.read_text()
        assert text == json.dumps(json.loads(text), indent=4) + "\n", f"{path}: not in pretty-format-json's format"
    for bundle in LABEL_BUNDLES:
        assert _meta(bundle)["supported_apps"] == {"monai-label": "0.8.5"}, bundle


@pytest.mark.parametrize("bundle, dims", [("apf_unetr_btcv_segmentation", 3), ("apf_unetr_paip_segmentation", 2)])
def test_apf_metadata_describes_the_users_image(bundle, dims):
    """network_data_format of an APF bundle is the image a user sends and the full-resolution output (MONAI
    Label's ``dimension`` is the length of the first input's ``spatial_shape``: 3 for BTCV's CT volumes), not the
    APF pseudo-image; the leaf mask is made by APF inside ``image_network`` and is no user input."""
    fmt = _meta(bundle)["network_data_format"]
    image, pred = fmt["inputs"]["image"], fmt["outputs"]["pred"]
    assert list(fmt["inputs"]) == ["image"]
    assert len(image["spatial_shape"]) == dims and image["is_patch_data"] is False
    assert pred["spatial_shape"] == image["spatial_shape"] and pred["is_patch_data"] is False
    assert _parser(bundle).get(bt.IMAGE_NET_ID) is not None


def test_image_network_checks_catch_a_wrong_output():
    """``check_image_network`` (part of ``monai-ext verify``) fails, naming the config item, when the real path's
    output does not fit the metadata: here the logits of the network in patch space instead of full resolution."""
    bundle = BUNDLES_DIR / "apf_unetr_paip_segmentation"
    tiny = {"preset": "tiny", "presets#tiny": _parser(bundle.name).get("presets#tiny")}
    assert bt.check_image_network(bundle, tiny) == (512, 512)
    no_unpatch = {**tiny, "image_network": "$monai_ext.inferers.InfererNetwork("
                                           "lambda x, net: net(torch.nn.functional.interpolate(x, size=(128, 128))),"
                                           " @network_def)"}
    with pytest.raises(bt.BundleError, match=r"inference.yaml: image_network: an image \(1, 3, 512, 512\) gives "
                                             r"logits \(1, 2, 128, 128\), expected \(1, 2, 512, 512\)"):
        bt.check_image_network(bundle, no_unpatch)


@pytest.mark.parametrize("bundle", ["vindr_cxr_cardiomegaly_classification", "duke_breast_mri_classification",
                                    "airogs_glaucoma_classification", "isic_melanoma_classification"])
def test_classification_hands_over_scores_only(bundle, tmp_path):
    if "airogs" in bundle or "isic" in bundle:  # an RGB photograph
        image = tmp_path / "photo.png"
        Image.fromarray(np.random.default_rng(0).integers(0, 256, (90, 120, 3), dtype=np.uint8)).save(image)
    elif "vindr" in bundle:
        image = tmp_path / "cxr.png"
        Image.fromarray(np.random.default_rng(0).integers(0, 256, (96, 80), dtype=np.uint8)).save(image)
    else:
        image = tmp_path / "breast.nii.gz"
        nib.save(nib.Nifti1Image(np.random.default_rng(0).random((40, 36, 12)).astype(np.float32), np.eye(4)), image)
    out = run_like_bundle_infer_task(bundle, image)
    assert "image" not in out and "image_meta_dict" not in out  # nothing for Restored to map the scores onto
    assert isinstance(out["pred"], MetaTensor) and tuple(out["pred"].shape) == (2,)  # ClassificationWriter: .array
    assert float(out["pred"].sum()) == pytest.approx(1.0, abs=1e-5)


def test_paip_label_is_uint8_hw(tmp_path):
    image = tmp_path / "slide.png"
    rgb = np.random.default_rng(1).integers(0, 256, (64, 96, 3), dtype=np.uint8)
    rgb[16:48, 24:72] = (150, 40, 120)
    Image.fromarray(rgb).save(image)
    out = run_like_bundle_infer_task("apf_unetr_paip_segmentation", image)
    pred = out["pred"]
    assert pred.dtype == torch.uint8
    assert tuple(pred.shape) == tuple(out["image"].shape[1:]) == (96, 64)  # MONAI's PNG arrays are (W, H)


def test_btcv_label_of_a_non_ras_volume(tmp_path):
    """A CT stored LPS (not RAS): the label comes back uint8 in the stored voxel order and shape (Invertd undoes
    the bundle's Orientationd), so MONAI Label's Restored only drops the channel and adds the image's affine."""
    rng = np.random.default_rng(2)
    vol = rng.normal(0, 200, (64, 64, 3)).astype(np.float32)
    vol[20:40, 10:30] = 300.0
    lps = np.diag([-0.8, -0.8, 2.5, 1.0])
    image = tmp_path / "ct_lps.nii.gz"
    nib.save(nib.Nifti1Image(vol, lps), image)
    out = run_like_bundle_infer_task("apf_unetr_btcv_segmentation", image)
    pred = out["pred"]
    assert pred.dtype == torch.uint8 and tuple(pred.shape) == (1, 64, 64, 3)
    # the same volume stored RAS (axes flipped) gives the flipped label: the answer follows the stored geometry
    ras = tmp_path / "ct_ras.nii.gz"
    nib.save(nib.Nifti1Image(vol[::-1, ::-1].copy(), np.diag([0.8, 0.8, 2.5, 1.0])), ras)
    out_ras = run_like_bundle_infer_task("apf_unetr_btcv_segmentation", ras)
    assert torch.equal(out_ras["pred"][0], torch.flip(pred[0], dims=(0, 1)))
