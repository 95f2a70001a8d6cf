"""Inferers of monai_ext (MONAI ``Inferer`` subclasses): APF-UNETR at full resolution, 2D or slice-wise 3D."""

from .apf import APFInferer

__all__ = ["APFInferer"]
