"""Optional packages, imported on first use so that clipx imports without them."""

from __future__ import annotations

import importlib
from types import ModuleType

from .version import DISTRIBUTION


class MissingPackageError(ImportError):
    """An optional package a feature needs is not installed: the user's to fix (pip install), not a bug."""


def require(module: str, needed_for: str, extra: str) -> ModuleType:
    """`module` imported, or a MissingPackageError that says what needs it and which pip extra installs it."""
    try:
        return importlib.import_module(module)
    except ImportError:
        raise MissingPackageError(f"{needed_for} needs the {module} package: pip install '{DISTRIBUTION}[{extra}]'") from None
