"""The temporary file behind every atomic write (checkpoints, dataset cache files).

Writers stream into a temporary file in the destination's folder (same file system, so
the final ``os.replace`` is atomic), fsync it, then rename it over the destination; an
interrupted write never leaves a partial file under the real name.
"""
from __future__ import annotations

import os
import tempfile


def current_umask() -> int:
    """The process's umask (read by setting and restoring it; no file is created)."""
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def temp_file_beside(dest: str, prefix: str) -> tuple:
    """Open a new temporary file for writing in ``dest``'s folder.

    Parameters
    ----------
    dest : str
        The final path; its folder is created if missing.
    prefix : str
        Start of the temporary file's name (callers match their ignore patterns with it).

    Returns
    -------
    (file object opened "wb", str path of the temporary file)
        ``mkstemp`` creates files 0600; this one gets the mode a plain ``open`` would give
        it under the umask, so shared run directories and caches stay readable.
    """
    folder = os.path.dirname(os.path.abspath(dest))
    os.makedirs(folder, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=prefix, dir=folder)
    try:
        os.chmod(tmp, 0o666 & ~current_umask())
    except OSError:        # a file system without modes: keep mkstemp's
        pass
    return os.fdopen(fd, "wb"), tmp
