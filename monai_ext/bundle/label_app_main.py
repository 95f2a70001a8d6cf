"""MONAI Label app serving the monai_ext bundles: ``monai-ext label-app`` copies this module as the app's main.py.

Like MONAI Label's sample `monaibundle` app, it loads every bundle folder under model/ with
BundleInferTask. MONAI Label picks the task type from the folder name (segmentation before
classification); a classification bundle ends in per-class probabilities, so it is created with
add_post_restore=False (restoring a class vector to the image grid fails) and answers JSON
predictions. Segmentation label maps are written as uint8, those of 2D images without a channel axis.
Start it with (local only: MONAI Label has no authentication by default, and the studies are patient data):
    monailabel start_server --app <this folder> --studies <images> --conf zoo_source local --conf sam2 false
        --host 127.0.0.1 --port 8000   (one command line)
Before exposing it on a network, put MONAI Label's authentication or an authenticating reverse proxy (TLS) in
front of it; see docs/security.md of monai_ext.
"""

import logging
import os
from typing import Any

import monailabel
from monai.transforms import MapTransform
from monailabel.interfaces.app import MONAILabelApp
from monailabel.interfaces.tasks.infer_v2 import InferTask
from monailabel.tasks.infer.bundle import BundleInferTask

logger = logging.getLogger(__name__)


class SqueezeLabel2d(MapTransform):
    """Drop the channel of a (1, H, W) label map of a 2D image: MONAI Label's Restored keeps it for 2D
    input, and its writer would then save a 3D image (an H x 1 PNG)."""

    def __init__(self, keys: Any, ref_image: str = "image") -> None:
        super().__init__(keys)
        self.ref_image = ref_image

    def __call__(self, data: Any) -> dict:
        d = dict(data)
        for key in self.keys:
            if d[self.ref_image].ndim == 3 and d[key].ndim == 3 and d[key].shape[0] == 1:
                d[key] = d[key][0]
        return d


class MonaiExtBundleInferTask(BundleInferTask):
    """BundleInferTask whose segmentation post-processing ends with :class:`SqueezeLabel2d`."""

    def post_transforms(self, data: Any = None) -> list:
        post = list(super().post_transforms(data))
        if self.add_post_restore:
            post.append(SqueezeLabel2d(keys=self.key_pred, ref_image=self.key_image))
        return post


class MyApp(MONAILabelApp):
    """One inference task per bundle folder under ``model/`` (``--conf models a,b`` selects some)."""

    def __init__(self, app_dir: str, studies: str, conf: dict[str, str]) -> None:
        self.model_dir = os.path.join(app_dir, "model")
        self.bundles = sorted(
            d for d in os.listdir(self.model_dir)
            if os.path.isfile(os.path.join(self.model_dir, d, "configs", "inference.yaml"))
        )
        wanted = [m.strip() for m in conf.get("models", "").split(",") if m.strip() and m.strip() != "all"]
        unknown = sorted(set(wanted) - set(self.bundles))
        if unknown:
            raise ValueError(f"--conf models: {unknown} not in {self.model_dir} (available: {self.bundles})")
        if wanted:
            self.bundles = [b for b in self.bundles if b in wanted]
        logger.info("bundles: %s", self.bundles)
        super().__init__(
            app_dir=app_dir,
            studies=studies,
            conf=conf,
            name="monai_ext bundles",
            description="monai_ext MONAI bundles (softmax-free ViT classification, APF-UNETR segmentation)",
            version=monailabel.__version__,
        )

    def init_infers(self) -> dict[str, InferTask]:
        infers: dict[str, InferTask] = {}
        for name in self.bundles:
            path = os.path.join(self.model_dir, name)
            # classification bundles: the output is a class-probability vector, not an image
            classification = "classification" in name and "segmentation" not in name
            # segmentation: label maps are written as uint8 (the bundles' own SaveImaged dtype; MONAI Label
            # would write float32, which its PNG writer rejects); a request may still set result_dtype.
            # load_strict: a checkpoint that does not fit the network fails instead of loading partly.
            infers[name] = MonaiExtBundleInferTask(
                path,
                self.conf,
                add_post_restore=not classification,
                load_strict=True,
                config=None if classification else {"result_dtype": "uint8"},
            )
            logger.info("+++ infer task %s: %s", name, "classification" if classification else "segmentation")
        return infers

    def init_trainers(self) -> dict[str, Any]:
        return {}
