"""Errors a user can act on. Messages name the problem and the fix."""

from __future__ import annotations


class CosaError(Exception):
    """Base class for every error cosa-sdk raises on purpose."""


class CosaInputError(CosaError, ValueError):
    """An input (image, array, file, option) cannot be used as given."""


class CosaModelError(CosaError):
    """A model bundle or checkpoint is missing, malformed or cannot run on this machine."""


class CosaDataError(CosaError):
    """A dataset folder or file is missing or malformed."""


class CosaConfigError(CosaError, ValueError):
    """A preset, override or run directory does not fit the requested operation."""
