"""Where a command's outputs go: in place, or a directory staged beside its destination."""

from __future__ import annotations

import argparse
import contextlib
import fcntl
import os
import re
import secrets
import shutil
import time
from pathlib import Path
from typing import Callable, Iterator, List, Optional

from ._atomic import _copy_file
from ._errors import EXIT_NOT_FOUND, EXIT_OK, EXIT_USAGE, CliError, _about
from ._jobs import _Job, _tensor_jobs
from ._output import _human, _info, _plural
from ._progress import _Progress


def _check_parent(path: Path) -> None:
    parent = path.parent
    if not parent.is_dir():
        raise CliError(EXIT_NOT_FOUND, f"{parent}: No such directory")


def _check_apart(src: Path, out: Path, hint: str) -> None:
    """Refuses an output that is, holds or lies inside the input (after
    links are resolved): writing it would replace the input, or put the
    output among the files being read (and a plaintext copy inside the
    encrypted model directory that is shipped)."""
    src_r, out_r = src.resolve(), out.resolve()
    if out_r == src_r or out_r in src_r.parents:
        raise CliError(EXIT_USAGE, f"{out}: the output would replace the input ({hint})")
    if src_r in out_r.parents:
        raise CliError(EXIT_USAGE, f"{out}: the output is inside the input {src}")


# A staging directory `.OUT.RANDOM.tmp` beside the output OUT.
_STAGING = re.compile(r"\.(?P<name>.+)\.[0-9a-f]{8}\.tmp")


# How long an unlocked staging directory must have been untouched to be removed.
_STALE_AFTER = 60.0


def _lock(directory: Path) -> int:
    """Takes the lock that tells other runs this staging directory is in use
    (held until the descriptor is closed, or the process dies). Best effort:
    where the file system has no flock, the age rule alone protects it."""
    fd = os.open(directory, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    with contextlib.suppress(OSError):
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    return fd


def _remove_stale_staging(out: Path) -> None:
    """Removes staging directories of `out` left by runs that were killed:
    only names of our exact pattern, only real directories (not links), only
    those whose lock is free (their run is gone) and untouched for a minute."""
    try:
        entries = list(os.scandir(out.parent))
    except OSError:
        return
    for entry in entries:
        m = _STAGING.fullmatch(entry.name)
        if not m or m.group("name") != out.name or not entry.is_dir(follow_symlinks=False):
            continue
        with contextlib.suppress(OSError):
            if time.time() - entry.stat(follow_symlinks=False).st_mtime < _STALE_AFTER:
                continue
            fd = os.open(entry.path, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC)
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                shutil.rmtree(entry.path)
            finally:
                os.close(fd)


@contextlib.contextmanager
def _destination(src: Path, out: Optional[Path], in_place: bool, force: bool) -> Iterator[Callable[[str], Path]]:
    """Yields where each input (by relative path) is written. A directory is
    built beside `out` (as `.OUT.RANDOM.tmp`, each file in it complete or
    absent) and moved into place only once complete; on failure it is
    removed, so no partial output is ever left. A run killed outright leaves
    the staging directory, which the next run to the same `out` removes.
    Single files are written atomically by the library."""
    if in_place:
        yield (lambda rel: src / rel) if src.is_dir() else (lambda rel: src)
        return
    assert out is not None
    _check_apart(src, out, "use --in-place")
    out_r = out.resolve()
    if src.is_file():
        target = out / src.name if out.is_dir() else out
        if target.exists() and not force:
            raise CliError(EXIT_USAGE, f"{target} exists (use --force to replace it)")
        _check_parent(target)
        yield lambda rel: target
        return
    if out.exists() and not out.is_dir():
        raise CliError(EXIT_USAGE, f"{out} exists and is not a directory")
    if out.is_dir() and any(out.iterdir()) and not force:
        raise CliError(EXIT_USAGE, f"{out} exists and is not empty (use --force to replace it)")
    _check_parent(out_r)
    _remove_stale_staging(out_r)
    staging = out_r.parent / f".{out_r.name}.{secrets.token_hex(4)}.tmp"
    with _about(str(out)):
        staging.mkdir()
        lock = _lock(staging)

    def target(rel: str) -> Path:
        path = staging / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        return path

    try:
        yield target
        with _about(str(out)):
            _publish(staging, out_r)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    finally:
        os.close(lock)


def _publish(staging: Path, out: Path) -> None:
    """Moves a complete directory into place, replacing `out` if it exists
    (killed between the two renames, the old output is left as `.OUT.RANDOM.old`)."""
    if not out.exists():
        os.rename(staging, out)
        return
    old = out.parent / f".{out.name}.{secrets.token_hex(4)}.old"
    os.rename(out, old)
    os.rename(staging, out)
    shutil.rmtree(old, ignore_errors=True)


Convert = Callable[[_Job, Path, _Progress], None]


def _transform(args: argparse.Namespace, jobs: List[_Job], convert: Convert, verb: str, done: str = "") -> int:
    """Runs `convert` on every safetensors file and copies the other files of a
    model directory unchanged (names and index.json are kept); `done` is the
    summary's past tense of `verb` (default: verb + "ed")."""
    src = Path(args.input)
    with _destination(src, args.output, args.in_place, args.force) as target, _Progress(args, verb, jobs) as progress:
        for job in progress.files(jobs):
            if job.header is not None:
                convert(job, target(job.rel), progress)
            elif not args.in_place:
                with _about(f"copying {job.rel}"):
                    _copy_file(job.path, target(job.rel))
    n = len(_tensor_jobs(jobs))
    _info(args, f"{done or verb + 'ed'} {_plural(n, 'file')} ({_human(sum(j.size for j in jobs))}) -> {src if args.in_place else args.output}")
    return EXIT_OK
