"""Files and folders that appear whole or not at all: written beside their target, then renamed over it.

A rename within one file system is atomic, so a reader (or a process killed mid-write) sees the old version or the
new one, never a half-written file. The staging names are hidden (``.name.*``) and removed when the write fails.
"""

from __future__ import annotations

import os
import shutil
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import IO


def _with_default_permissions(path: str, directory: bool = False) -> None:
    """mkstemp/mkdtemp create private (0600/0700) entries; give the renamed result the usual umask-based mode."""
    umask = os.umask(0)
    os.umask(umask)
    os.chmod(path, (0o777 if directory else 0o666) & ~umask)


def staging_file(target: Path, suffix: str, mode: str = "w") -> tuple[IO, str]:
    """A new hidden file beside ``target`` (same file system, so renaming it over ``target`` is atomic), open in
    ``mode``, with the permissions an ordinary new file would get."""
    target.parent.mkdir(parents=True, exist_ok=True)
    handle, path = tempfile.mkstemp(prefix=f".{target.name}.", suffix=suffix, dir=target.parent)
    _with_default_permissions(path)
    if "b" in mode:
        return os.fdopen(handle, mode), path
    return os.fdopen(handle, mode, encoding="utf-8", newline=""), path


@contextmanager
def staged_directory(target: Path) -> Iterator[Path]:
    """A new hidden folder beside ``target`` to fill; when the block ends without an error it replaces ``target``
    (an existing folder is moved aside first and then deleted), else it is deleted."""
    target.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{target.name}.", dir=target.parent))
    _with_default_permissions(str(staging), directory=True)
    try:
        yield staging
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    old = target.with_name(f".{target.name}.old")
    if target.exists():
        shutil.rmtree(old, ignore_errors=True)
        os.replace(target, old)
    os.replace(staging, target)
    shutil.rmtree(old, ignore_errors=True)
