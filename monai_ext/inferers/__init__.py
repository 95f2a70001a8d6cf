"""Inferers of monai_ext (MONAI ``Inferer`` subclasses): APF-UNETR at full resolution, 2D or slice-wise 3D;
``InfererNetwork`` wraps an inferer and its network as one module (the path an APF bundle's metadata describes)."""

from .apf import APFInferer, InfererNetwork

__all__ = ["APFInferer", "InfererNetwork"]
