"""Atomic file writes: the one helper every writer of this project uses.

:func:`atomic_write` writes into a temporary file *in the target's folder* (so the final ``os.replace`` is a rename on
one filesystem), flushes and ``fsync``\\ s it, gives it ordinary permissions (``0644 & ~umask``: ``mkstemp`` creates
``0600`` files that a ComfyUI server or web server running as another user could not read), then renames it over the
target. A failure at any point removes the temporary file: readers see the old file or the complete new one, never
half a file. The temporary name is hidden (leading dot) and keeps the target's suffix (``.name.XXXX.tmp.png``), so
writers that pick the format from the extension (PIL, safetensors, trimesh) still work.
"""
from __future__ import annotations

import os
import tempfile
from pathlib import Path
from typing import Callable

__all__ = ["atomic_write", "file_mode", "current_umask", "fsync_dir"]


def current_umask() -> int:
    """The process umask (read from ``/proc`` where possible, which, unlike ``os.umask``, changes nothing)."""
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith("Umask:"):
                    return int(line.split()[1], 8)
    except (OSError, ValueError, IndexError):
        pass
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def file_mode(mode: int = 0o644) -> int:
    """``mode & ~umask``: the permissions an ordinary ``open(path, "w")`` would have given (``0644`` by default)."""
    return mode & ~current_umask()


def fsync_dir(path: "str | os.PathLike") -> None:
    """``fsync`` a directory so a rename inside it is durable (best effort: not every OS/filesystem allows it)."""
    try:
        fd = os.open(path, os.O_RDONLY | getattr(os, "O_DIRECTORY", 0))
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def atomic_write(path: "str | os.PathLike", data: "bytes | None" = None, *,
                 writer: "Callable[[Path], object] | None" = None, mode: int = 0o644) -> Path:
    """Write ``data`` (bytes) or call ``writer(tmp_path)`` to fill a temporary file, then rename it to ``path``.

    Exactly one of ``data`` / ``writer`` is normally given (``writer`` may open ``tmp_path`` by name, e.g.
    ``lambda p: image.save(p, format="PNG")``; an empty file is written when both are None). The parent folder is
    created. The result has ``mode & ~umask`` permissions (default ``0644``). Returns ``Path(path)``.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp_name = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp" + path.suffix, dir=path.parent)
    tmp = Path(tmp_name)
    try:
        with os.fdopen(fd, "wb") as f:
            if data is not None:
                f.write(data)
        if writer is not None:
            writer(tmp)
        with open(tmp, "rb+") as f:  # the writer may have replaced the file: fsync what is there now
            os.fsync(f.fileno())
        os.chmod(tmp, file_mode(mode))
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    fsync_dir(path.parent)
    return path
