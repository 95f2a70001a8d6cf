"""Package-wide helpers. :mod:`monai_ext.utils.checkpoint` is the one checkpoint loader (weights only).

Names are imported lazily, so that ``monai-ext`` does not load torch until a command needs it.
"""

from __future__ import annotations

import importlib
from typing import Any

_EXPORTS = {
    name: "checkpoint"
    for name in ("CKPT_KEYS", "CheckpointError", "CheckpointMismatchError", "SafeCheckpointLoader", "StateDiff",
                 "TransferReport", "UnsafeCheckpointError", "compare_state_dict", "convert_checkpoint",
                 "load_checkpoint", "load_state_dict", "state_dict_of",
                 "transfer_weights", "unwrap")
}

__all__ = list(_EXPORTS)


def __getattr__(name: str) -> Any:
    if name in _EXPORTS:
        return getattr(importlib.import_module(f"{__name__}.{_EXPORTS[name]}"), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(__all__))
