"""Writes that survive a crash or a power loss: fsync the data, then the directory that names it."""

from __future__ import annotations

import os
from pathlib import Path


def fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def fsync_tree(root: Path) -> None:
    """fsync every file and directory under root (and root), so a name published afterwards never
    names a file whose data is still only in the page cache."""
    for directory, _, files in os.walk(root, topdown=False):
        for name in files:
            with open(os.path.join(directory, name), "rb") as handle:
                os.fsync(handle.fileno())
        fsync_dir(Path(directory))


def write_durably(path: Path, text: str) -> None:
    """Replace a small file so that after a crash it holds either the old or the new text, never a part."""
    tmp = path.with_name(f".{path.name}.tmp")
    with open(tmp, "w") as handle:
        handle.write(text)
        handle.flush()
        os.fsync(handle.fileno())
    os.replace(tmp, path)
    fsync_dir(path.parent)


def replace_dir(tmp: Path, final: Path) -> None:
    """Publish directory tmp (already fsynced) as final, replacing any directory of that name. The old
    one is moved aside first and deleted last: at no moment is neither of them on disk."""
    import shutil

    trash = final.with_name(f".trash-{final.name}")
    if final.exists():
        shutil.rmtree(trash, ignore_errors=True)
        os.replace(final, trash)
    os.replace(tmp, final)
    fsync_dir(final.parent)
    shutil.rmtree(trash, ignore_errors=True)
