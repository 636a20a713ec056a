"""Files written whole or not at all: O_TMPFILE where there is one, else a named temporary."""

from __future__ import annotations

import contextlib
import os
import secrets
import shutil
from pathlib import Path
from typing import BinaryIO, Callable, Optional

from ._errors import EXIT_USAGE, CliError, _about


def _write_new_file(path: Path, data: bytes, mode: int, force: bool) -> None:
    """Writes `data` to `path` atomically, created with `mode` (a secret is
    never readable by others, not even briefly). Without `force` an existing
    `path` is refused, atomically (link(2))."""
    if path.exists() and not force:
        raise CliError(EXIT_USAGE, f"{path} exists (use --force to replace it)")
    with _about(str(path)):
        try:
            _write_atomic(path, lambda fh: fh.write(data), mode, replace=force)
        except FileExistsError:
            raise CliError(EXIT_USAGE, f"{path} exists (use --force to replace it)") from None


def _write_atomic(path: Path, fill: Callable[[BinaryIO], object], mode: int, replace: bool) -> None:
    """Creates `path` with what `fill` writes, and `mode`: readers and a
    writer killed midway never leave a partial file under any name. On Linux
    the file is anonymous (O_TMPFILE) until complete, then linked in: at
    `path` itself when it must not `replace` (linkat fails if it exists), or
    at a fresh temporary name renamed over `path`. Elsewhere a named
    temporary `.NAME.RANDOM.tmp` is written and renamed (or linked) in."""
    fd, tmp = _open_anonymous(path.parent, mode), None
    if fd is None:
        tmp = path.parent / f".{path.name}.{secrets.token_hex(4)}.tmp"
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, mode)
    try:
        with os.fdopen(fd, "wb") as fh:
            fill(fh)
            fh.flush()
            os.fsync(fh.fileno())
            if tmp is None:
                if not replace:
                    _link_anonymous(fh.fileno(), path)
                    return
                tmp = path.parent / f".{path.name}.{secrets.token_hex(4)}.tmp"
                _link_anonymous(fh.fileno(), tmp)
        if replace:
            os.replace(tmp, path)
        else:
            os.link(tmp, path)
    finally:
        if tmp is not None:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(tmp)


def _open_anonymous(directory: Path, mode: int) -> Optional[int]:
    """An O_TMPFILE descriptor in `directory`, or None where the system or
    the file system has none (or /proc, to link it, is missing)."""
    flag = getattr(os, "O_TMPFILE", None)
    if flag is None or not os.path.isdir("/proc/self/fd"):
        return None
    try:
        return os.open(directory, flag | os.O_WRONLY | os.O_CLOEXEC, mode)
    except OSError:  # EOPNOTSUPP, EISDIR (old kernels), EINVAL: the named fallback says what else is wrong
        return None


def _link_anonymous(fd: int, path: Path) -> None:
    """Gives an O_TMPFILE file the name `path` (which must not exist):
    linkat(2) of /proc/self/fd/N with AT_SYMLINK_FOLLOW. os.link uses that
    flag only with a directory descriptor; without one it calls link(2),
    which links the /proc entry itself and fails (EXDEV)."""
    proc = os.open("/proc/self/fd", os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    try:
        os.link(str(fd), path, src_dir_fd=proc, follow_symlinks=True)
    finally:
        os.close(proc)


def _copy_file(src: Path, target: Path) -> None:
    """Copies a file with its mode and times (as shutil.copy2), atomically."""
    with open(src, "rb") as fh:
        _write_atomic(target, lambda out: shutil.copyfileobj(fh, out, 1 << 20), 0o600, replace=True)
    shutil.copystat(src, target)
