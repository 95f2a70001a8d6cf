"""What a bundle run sets up first (``initialize`` calls :func:`setup_run`): errors about the user's input as
the last lines of output instead of a wall of traceback, and no benign third-party warnings.

MONAI's config parser wraps every exception raised while evaluating a config expression in
``RuntimeError: Failed to evaluate ConfigExpression`` (the original as ``__cause__``), so a data error
ends in 50-260 lines of traceback. The hook installed here prints only the message of the first
user-facing error in the chain (:data:`USER_ERRORS`) to stderr, last; Python then exits with status 1 as
for any uncaught exception. ``MONAI_EXT_DEBUG=1`` prints the full traceback before that message. Other
exceptions are left to the previous hook. Importing ``monai_ext.workflows`` inside ``python -m monai.bundle``
installs the hook too, so configs that do not call :func:`setup_run` (evaluation, inference) get it as well.
"""

from __future__ import annotations

import logging
import os
import sys
import warnings
from pathlib import Path
from types import TracebackType

from .checks import DatasetError
from .runs import ResumeError

logger = logging.getLogger(__name__)

DEBUG_ENV = "MONAI_EXT_DEBUG"

#: loggers whose benign messages are raised to ERROR (optional GPU decoders that are not installed)
QUIET_LOGGERS: tuple[str, ...] = ("monai.data.nvimgcodec_pydicom_plugin",)
#: ``warnings`` messages (regular expressions) that say nothing about the user's run
BENIGN_WARNINGS: tuple[str, ...] = (
    r"NvImgCodecPydicomReader: nvImageCodec",
)


def user_errors() -> tuple[type[BaseException], ...]:
    """Exception types whose message alone tells the user what is wrong (file and problem)."""
    from ..data.common import DataError  # one input file and its problem (a slide tile that cannot be decoded ...)
    from ..utils.checkpoint import CheckpointError

    return DatasetError, DataError, ResumeError, CheckpointError


def user_error_in(exc: BaseException | None) -> BaseException | None:
    """The first user-facing error in ``exc``'s chain (``__cause__`` / ``__context__``), or None."""
    types, seen = user_errors(), set()
    while exc is not None and id(exc) not in seen:
        if isinstance(exc, types):
            return exc
        seen.add(id(exc))
        exc = exc.__cause__ or exc.__context__
    return None


def _hook(previous):
    def hook(exc_type: type[BaseException], exc: BaseException, tb: TracebackType | None) -> None:
        err = user_error_in(exc)
        if err is None:
            previous(exc_type, exc, tb)
            return
        if os.environ.get(DEBUG_ENV, "") not in ("", "0"):
            previous(exc_type, exc, tb)
            hint = ""
        else:
            hint = f" (set {DEBUG_ENV}=1 for the traceback)"
        for h in logging.getLogger().handlers:  # the log lines before the error come first
            h.flush()
        sys.stdout.flush()
        sys.stderr.write(f"\nERROR: {type(err).__name__}{hint}:\n{err}\n")
        sys.stderr.flush()

    hook.monai_ext = True  # type: ignore[attr-defined]
    return hook


def running_as_bundle(argv0: str | None = None) -> bool:
    """True in ``python -m monai.bundle ...`` (also under torchrun), where ``sys.argv[0]`` is MONAI's
    ``monai/bundle/__main__.py``."""
    parts = Path(sys.argv[0] if argv0 is None else argv0).parts
    return tuple(parts[-3:]) == ("monai", "bundle", "__main__.py")


def install_error_hook() -> None:
    """Install the hook described in the module docstring (once)."""
    if not getattr(sys.excepthook, "monai_ext", False):
        sys.excepthook = _hook(sys.excepthook)


def filter_benign_warnings() -> None:
    """Silence :data:`BENIGN_WARNINGS` and :data:`QUIET_LOGGERS` below ERROR."""
    for pattern in BENIGN_WARNINGS:
        warnings.filterwarnings("ignore", message=pattern)
    for name in QUIET_LOGGERS:
        logging.getLogger(name).setLevel(logging.ERROR)


def setup_run() -> bool:
    """Call first in a bundle's ``initialize``: :func:`install_error_hook` and :func:`filter_benign_warnings`."""
    install_error_hook()
    filter_benign_warnings()
    return True
