"""The project's bundles by name, and where a bundle folder is found.

The one list of bundle names (:data:`BUNDLE_DATASETS`: bundle -> dataset of ``monai-ext synth/prepare``); the
demo, the bundle tools and the MONAI Label check read it from here. Bundle tools take a bundle *folder*; a bare
bundle name is looked up in an explicit ``--bundles-dir`` or else in ``./bundles`` of the working directory,
never next to the installed package, so that the tools work the same from a wheel as from a checkout.
"""

from __future__ import annotations

from pathlib import Path

__all__ = ["BUNDLE_DATASETS", "BUNDLE_NAMES", "INFERENCE_CONFIG", "BundleError", "bundles_dir", "resolve_bundle"]

#: the project's bundles (in the order the tools list them) -> the dataset (``monai-ext synth/prepare`` name)
BUNDLE_DATASETS: dict[str, str] = {
    "vindr_cxr_cardiomegaly_classification": "vindr_cxr",
    "duke_breast_mri_classification": "duke",
    "apf_unetr_btcv_segmentation": "btcv",
    "apf_unetr_paip_segmentation": "paip",
    "airogs_glaucoma_classification": "airogs",
    "isic_melanoma_classification": "isic",
    "brain_mri_efficient_attention_classification": "radimagenet_brain",
}
BUNDLE_NAMES: tuple[str, ...] = tuple(BUNDLE_DATASETS)
INFERENCE_CONFIG = "inference.yaml"


class BundleError(ValueError):
    """A bundle, its metadata or a checkpoint is unusable; the message names the file and the problem."""


def bundles_dir(path: str | Path | None = None) -> Path:
    """The folder holding the bundles: ``path`` if given, else ``bundles/`` of the working directory.

    Raises :class:`BundleError` (saying where it looked and how to point elsewhere) when it is no folder.
    """
    if path is not None:
        base = Path(path)
        if not base.is_dir():
            raise BundleError(f"--bundles-dir {base}: no such folder")
        return base.resolve()
    base = Path.cwd() / "bundles"
    if not base.is_dir():
        raise BundleError(f"no bundles folder: {base} does not exist; run from the folder holding bundles/ "
                          f"(e.g. a monai_ext checkout) or give --bundles-dir DIR")
    return base


def resolve_bundle(bundle: str | Path, bundles_dir: str | Path | None = None) -> Path:
    """A complete bundle folder (``configs/metadata.json`` and ``configs/inference.yaml``), absolute.

    ``bundle`` is a folder, or a bare name (e.g. one of :data:`BUNDLE_NAMES`) looked up in ``bundles_dir``,
    default ``./bundles``. The error names the folder searched and the option to search another one.
    """
    path = Path(bundle)
    if not path.is_dir() and len(path.parts) == 1:
        base = Path(bundles_dir) if bundles_dir is not None else Path.cwd() / "bundles"
        if not (base / path).is_dir():
            where = f"--bundles-dir {base}" if bundles_dir is not None else \
                f"{base} (the working directory's bundles/; give --bundles-dir DIR to look elsewhere)"
            raise BundleError(f"{bundle}: no such bundle folder, nor a bundle of that name in {where}; "
                              f"give the bundle's folder (known bundles: {', '.join(BUNDLE_NAMES)})")
        path = base / path
    if not path.is_dir():
        raise BundleError(f"{bundle}: no such bundle folder")
    for need in ("configs/metadata.json", f"configs/{INFERENCE_CONFIG}"):
        if not (path / need).is_file():
            raise BundleError(f"{path}: not a complete bundle, {need} is missing")
    return path.resolve()
