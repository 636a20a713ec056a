"""The input files of a command (one file or a model directory), and reading their tensors."""

from __future__ import annotations

import os
import stat
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator, List, Optional, Sequence, Tuple

from .. import (
    KeyNotFoundError,
    SafetensorError,
    _core,
    safe_open,
)
from .. import inspect as inspect_file
from .._core import Inspection
from .._serialize import save_options
from ._errors import EXIT_KEY, EXIT_NOT_FOUND, EXIT_UNSAFE_PATH, CliError, _about, _cli_error
from ._progress import _Progress


@dataclass
class _Job:
    """One input file: a safetensors file (with its header) or a file to copy."""

    path: Path
    rel: str  # path relative to the input directory (the file name for a file input)
    header: Optional[Inspection]  # cryptotensors.inspect() of a safetensors file, else None
    size: int  # bytes of tensor data, or of the file to copy

    @property
    def display(self) -> str:
        return str(self.path)


def _job(path: Path, rel: str, damaged: bool = False) -> _Job:
    with _about(str(path)):
        if not rel or Path(rel).suffix == ".safetensors":
            header = inspect_file(path)
            if not damaged:
                header.check()  # a damaged file fails here, with the error reading it raises
            return _Job(path, rel or path.name, header, sum(t["nbytes"] for t in header["tensors"]))
        return _Job(path, rel, None, path.stat().st_size)


def _refused(path: Path, why: str) -> CliError:
    return CliError(EXIT_UNSAFE_PATH, f"{path}: {why}; refused")


def _raise(exc: OSError) -> None:
    raise exc


def _walk(root: Path, follow_links: bool) -> Iterator[Tuple[Path, str]]:
    """The files of the directory `root` as (path to read, path relative to
    `root`), sorted, skipping version-control directories (a .git directory
    of a model holds its weights again, in plain text).

    What a directory holds is not trusted: a link to a file outside it (an
    ssh key, another model) would be copied or encrypted into an output that
    is then shipped, so a link must resolve to a regular file inside `root`
    (it is read, and written as a regular file), and without `follow_links`
    (in place: replacing a link would leave its target as it was) there may
    be none. Links to directories, and entries that are not regular files
    (FIFOs, sockets, devices), are refused too: skipping them would make an
    output that silently lacks what the input has."""
    top = root.resolve()
    for parent, dirs, files in os.walk(top, onerror=_raise):  # an unreadable directory is not skipped either
        dirs[:] = sorted(d for d in dirs if d not in (".git", ".hg"))
        for d in dirs:
            if os.path.islink(os.path.join(parent, d)):
                raise _refused(Path(parent) / d, "a link to a directory")
        for name in sorted(files):
            path = Path(parent) / name
            rel = path.relative_to(top).as_posix()
            real = path
            if path.is_symlink():
                if not follow_links:
                    raise _refused(path, "a link, which cannot be replaced in place")
                real = path.resolve()
                if not real.is_relative_to(top):
                    raise _refused(path, f"a link to {real}, outside {root}")
            try:
                mode = real.stat().st_mode
            except FileNotFoundError:
                raise CliError(EXIT_NOT_FOUND, f"{path}: a link to a missing file") from None
            if not stat.S_ISREG(mode):
                raise _refused(path, "not a regular file")
            yield real, rel


def _collect(src: Path, follow_links: bool = True, damaged: bool = False) -> List[_Job]:
    """The jobs for a file or a model directory (header-only: fast, no key).
    A damaged safetensors file fails, unless `damaged` keeps its job (its
    header says what could be learnt and why the rest could not)."""
    if not src.exists():
        raise CliError(EXIT_NOT_FOUND, f"{src}: No such file or directory")
    if not src.is_dir() and not src.is_file():
        raise _refused(src, "not a regular file")
    jobs = [_job(p, rel, damaged) for p, rel in _walk(src, follow_links)] if src.is_dir() else [_job(src, "", damaged)]
    if not any(j.header is not None for j in jobs):
        raise CliError(EXIT_NOT_FOUND, f"{src}: no .safetensors file in it")
    return jobs


def _tensor_jobs(jobs: Sequence[_Job]) -> List[_Job]:
    return [j for j in jobs if j.header is not None]


def _no_key(job: _Job) -> CliError:
    """No key given opens a file: the error names the kids that would."""
    kids = ", ".join(r["kid"] for r in job.header.get("recipients") or ())
    return CliError(EXIT_KEY, f"{job.display}: no key given opens it; it needs the key of one of these kids: {kids} (pass -k KEY.jwk)")


def _open(job: _Job, **load) -> safe_open:
    """Opens a file to read raw tensor bytes."""
    try:
        return safe_open(job.path, "np", **load)
    except KeyNotFoundError:
        raise _no_key(job) from None
    except (SafetensorError, OSError) as exc:
        raise _cli_error(job.display, exc) from None


def _each_tensor(f: safe_open, job: _Job, progress: _Progress) -> Iterator[Tuple[str, str, list, object]]:
    """Reads every tensor, in file order, as raw bytes into a numpy uint8 array:
    any dtype, no framework. Each segment is authenticated as it is read."""
    import numpy

    handle = f._handle
    for name in f.offset_keys():
        dtype, shape, nbytes, _, _ = handle.info(name)
        buf = numpy.empty(nbytes, numpy.uint8)
        with _about(f"{job.display}: tensor {name!r}"):
            handle.read_into(name, buf)
        progress.advance(nbytes)
        yield name, dtype, shape, buf


def _rewrite(job: _Job, target: Path, progress: _Progress, load: dict, save: dict) -> None:
    """Writes every tensor of a file (opened with `load` options), with its
    metadata, to `target` (with `save` options), atomically. The core
    streams it: each segment is authenticated as it is read, no tensor is
    whole in memory, and every dtype is written as it is. The bar moves as
    the core reports the bytes written."""
    with _open(job, **load) as f:
        names = f.offset_keys()
        options = save_options(names, **save)
        progress.set_phase("writing")
        try:
            _core.transcode(f._handle, os.fspath(target), progress=progress.within, **options)
        except OSError as exc:  # the disk, or the directory written to
            raise _cli_error(f"writing {job.rel}", exc) from None
        except SafetensorError as exc:  # the file read: damaged, or a key that does not match
            _name_the_damage(f, job)
            raise _cli_error(job.display, exc) from None
    progress.within(job.size)


class _Quiet:
    def advance(self, nbytes: int) -> None:
        pass


def _name_the_damage(f: safe_open, job: _Job) -> None:
    """After a failed rewrite: reads the tensors again, one at a time, so
    that the error names the first one that does not authenticate (the core
    reports only that one did not)."""
    for _ in _each_tensor(f, job, _Quiet()):
        pass
