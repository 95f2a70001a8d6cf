"""APF: quadtree adaptive patching (patch / unpatch) for 2D images.

Modules, in the order of the algorithm: :mod:`.edges` (step 1), :mod:`.quadtree` (steps 2-3, the metadata),
:mod:`.functional` (steps 4-6 as functions), :mod:`.array` (``AdaptivePatch``, ``AdaptiveUnpatch``) and
:mod:`.dictionary` (``AdaptivePatchd``, ``AdaptiveUnpatchd``), as MONAI's ``GridPatch`` / ``GridPatchd``.
The Z-order helpers are in :mod:`monai_ext.utils.zorder` (the network imports them too), the upper-bound
Dice in :mod:`monai_ext.metrics`.

Algorithm (``shared/papers/adaptive_patching_apf.txt``, Section III, Algorithm 1), done
deterministically and without the pitfalls of the authors' public research code (see
``docs/apf.md``):

1. **Edge map**: the image (channel-first ``(C, H, W)``; RGB converted to luminance, CT
   windowed first) is mapped to 8 bit, blurred with a ``k x k`` Gaussian and passed to
   Canny with thresholds ``low / high`` (OpenCV conventions, 100 / 200 in the paper). A
   precomputed edge map may be given instead.
2. **Quadtree**: the image is padded (bottom / right) to a square ``N x N`` with ``N`` the next
   power of two. Edge counts of every quadtree node come from one summed-area table sampled
   on the ``min_size`` grid and summed 2 x 2 level by level (no Python loop over pixels or
   nodes). Modes:

   - ``"threshold"``: split every node whose edge count is ``> split_value``, while its depth
     is ``< max_depth`` and it is larger than ``min_size`` (the paper's criterion).
   - ``"fixed"``: repeatedly split the leaf with the most edge pixels (counts ``> split_value``
     only), until ``num_tokens`` leaves or nothing can split. The leaf count grows as
     ``1 + 3k``; the rest is padded with empty, masked tokens. Because a child never holds
     more edges than its parent, this greedy process splits exactly the ``k`` top-ranked
     candidate nodes, ranked by (edge count desc, depth asc, Morton code asc); that
     ranking is the deterministic tie-break, and it is computed with one ``argpartition``.
   - ``"uniform"``: every node larger than ``min_size`` splits: plain ViT patching of
     ``min_size`` patches, through the same code path.

3. **Order**: leaves are sorted by the Morton (Z-order) code of their top-left corner, which
   is the NW, NE, SW, SE depth-first order of the tree. Leaf table ``(L, 3)`` int64 of
   ``(y, x, size)`` in padded-image pixels; padding rows are ``(0, 0, 0)``; ``mask`` ``(L,)``
   is True for real leaves. Nothing is ever dropped at random.
4. **Resize**: each leaf is resized to ``p x p``: images by exact area averaging (anti-aliased;
   leaf sizes are ``p`` times a power of two, so this is a block mean), label masks by
   nearest (the centre pixel of each block).
5. **Layout**: ``"patches"`` gives the stack ``(L, C, p, p)``; ``"grid"`` places token ``i`` at
   the ``i``-th cell of a Z-curve over a ``sqrt(L) x sqrt(L)`` grid, giving a pseudo-image
   ``(C, sqrt(L) * p, sqrt(L) * p)`` on which a UNETR with patch size ``p`` sees exactly one
   token per leaf (``L`` must be a perfect square). In uniform mode with ``L = (N / min_size)^2``
   the grid is exactly the area-down-scaled image.
6. **Unpatch**: predicted ``p x p`` patches are resized (bilinear by default) into their leaf
   boxes of the ``N x N`` canvas, one ``torch.nn.functional.interpolate`` per leaf size,
   padded tokens ignored, then cropped to ``H x W`` and optionally arg-maxed / thresholded.

The metadata needed to unpatch (:func:`plan_quadtree`'s dict: ``leaves``, ``mask``,
``spatial_shape``, ``padded_size``, ``patch_size``, ``num_leaves``) holds only arrays and
integers, so it survives MONAI's ``list_data_collate`` / ``decollate_batch``.
"""


from ...utils.zorder import grid_to_tokens, morton_encode, tokens_to_grid, zorder_grid, zorder_to_raster
from .array import AdaptivePatch, AdaptiveUnpatch
from .dictionary import (
    AdaptivePatchD,
    AdaptivePatchd,
    AdaptivePatchDict,
    AdaptiveUnpatchD,
    AdaptiveUnpatchd,
    AdaptiveUnpatchDict,
)
from .edges import compute_edge_map, to_uint8_gray
from .functional import extract_patches, quadtree_patch, quadtree_unpatch
from .quadtree import APF_MODES, MAX_SIDE, plan_quadtree

__all__ = [
    "APF_MODES",
    "MAX_SIDE",
    "AdaptivePatch",
    "AdaptivePatchD",
    "AdaptivePatchDict",
    "AdaptivePatchd",
    "AdaptiveUnpatch",
    "AdaptiveUnpatchD",
    "AdaptiveUnpatchDict",
    "AdaptiveUnpatchd",
    "compute_edge_map",
    "extract_patches",
    "grid_to_tokens",
    "morton_encode",
    "plan_quadtree",
    "quadtree_patch",
    "quadtree_unpatch",
    "to_uint8_gray",
    "tokens_to_grid",
    "zorder_grid",
    "zorder_to_raster",
]
