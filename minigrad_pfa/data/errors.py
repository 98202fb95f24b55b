"""Errors of the data layer.

Every error about data names three things, because a researcher who hits one should be able
to fix it without reading this code:

* the file (or folder) concerned,
* what was expected there (format, size, checksum, ...),
* the command (or action) that fixes it.
"""
from __future__ import annotations

import os


class DataError(RuntimeError):
    """A dataset file is missing, partial, corrupt or of the wrong kind.

    Parameters
    ----------
    path : str or os.PathLike or None
        The file or folder the problem is about.
    problem : str
        What is wrong, in a few words ("is truncated", "checksum mismatch", ...).
    expected : str, optional
        What should have been there.
    fix : str, optional
        The command or action that fixes it.
    """

    def __init__(self, path, problem: str, expected: str | None = None,
                 fix: str | None = None):
        self.path = os.fspath(path) if path is not None else None
        self.problem = problem
        self.expected = expected
        self.fix = fix
        lines = [f"{self.path}: {problem}" if self.path else problem]
        if expected:
            lines.append(f"  expected: {expected}")
        if fix:
            lines.append(f"  fix: {fix}")
        super().__init__("\n".join(lines))


class MissingDataError(DataError):
    """A dataset, or one of its files, cannot be found in any source."""


class FormatError(DataError):
    """A file exists but is truncated, corrupt, or not in the expected format."""


class ChecksumError(DataError):
    """A file's checksum differs from the pinned one (corrupt, partial or different data)."""


class UnsafePickleError(FormatError):
    """A pickle asked for something other than the plain NumPy arrays it should contain."""


class DownloadError(MissingDataError):
    """Every download location failed (no network, HTTP error, or a bad checksum)."""
