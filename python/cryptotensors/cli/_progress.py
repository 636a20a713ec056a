"""Progress of a command on stderr, in bytes and files, drawn by tqdm as the
Hugging Face hub draws its downloads."""

from __future__ import annotations

import argparse
import os
import sys
from typing import TYPE_CHECKING, Iterator, Optional, Sequence

from tqdm import tqdm

from ._output import _env_flag, _human, _shown

if TYPE_CHECKING:
    from ._jobs import _Job

# The bar, with sizes in binary units (tqdm's unit_divisor=1024 still
# prints "kB") and which file of how many; last, where a narrow terminal
# cuts it, the file's name and what is being done to it.
_FORMAT = "{desc} {percentage:3.0f}%|{bar:20}| {sizes}, {file} [{elapsed}<{remaining}, {speed}] {name}"


class _Bar(tqdm):
    """tqdm with the fields of _FORMAT that it lacks (format_meter passes
    every key of format_dict on to the format)."""

    file_text = name_text = ""

    @property
    def format_dict(self):
        d = super().format_dict
        rate = d.get("rate")
        d.update(sizes=f"{_human(d['n'])}/{_human(d['total'] or 0)}", file=self.file_text, name=self.name_text,
                 speed=f"{_human(rate)}/s" if rate else "?/s")
        return d


def _enabled(args: argparse.Namespace) -> bool:
    """Drawn only on a terminal, without -q, and unless HF_HUB_DISABLE_PROGRESS_BARS
    is set (as for the hub's own bars)."""
    return not args.quiet and sys.stderr.isatty() and not _env_flag("HF_HUB_DISABLE_PROGRESS_BARS")


def _screen() -> os.terminal_size:
    """The size of stderr's terminal. A terminal that reports none (0 x 0, as
    a fresh pseudo-terminal does) counts as 80 x 24: tqdm would take 0 rows
    to mean that every bar is off-screen, and draw nothing."""
    try:
        size = os.get_terminal_size(sys.stderr.fileno())
    except (OSError, ValueError):
        size = os.terminal_size((0, 0))
    return os.terminal_size((size.columns or 80, size.lines or 24))


class _Progress:
    """One bar for a whole command: every byte of tensor data (or of a file
    copied) in `jobs`, and the file being worked on."""

    def __init__(self, args: argparse.Namespace, verb: str, jobs: Sequence[_Job]):
        self.count, self.total = len(jobs), sum(j.size for j in jobs)
        self.index, self.name, self.phase = 0, "", ""
        self._base = 0  # bytes of the files before the current one
        self._bar: Optional[_Bar] = None
        if _enabled(args):
            columns, lines = _screen()
            self._bar = _Bar(total=self.total, desc=verb, unit="B", unit_scale=True, unit_divisor=1024,
                             bar_format=_FORMAT, file=sys.stderr, leave=False, ncols=columns - 1, nrows=lines)

    def __enter__(self) -> _Progress:
        return self

    def __exit__(self, *exc) -> None:
        if self._bar is not None:
            self._bar.close()

    def files(self, jobs: Sequence[_Job]) -> Iterator[_Job]:
        """Yields each job, accounting for all its bytes once the caller is done with it."""
        done = 0
        for self.index, job in enumerate(jobs, 1):
            self.name, self.phase, self._base = job.rel, "", done
            self._show(done)
            yield job
            done += job.size
        self._show(done)

    def advance(self, nbytes: int) -> None:
        if self._bar is not None:
            self._bar.update(nbytes)

    def within(self, done: int) -> None:
        """`done` bytes of the current file are done: the core's progress
        callback, called while a file is converted (never past its size)."""
        if self._bar is not None:
            self._bar.update(self._base + done - self._bar.n)

    def set_phase(self, phase: str) -> None:
        self.phase = phase
        if self._bar is not None:
            self._show(self._bar.n)

    def println(self, line: str) -> None:
        """Prints a line on stdout; a bar on the same terminal is redrawn below it."""
        tqdm.write(_shown(line), file=sys.stdout)
        sys.stdout.flush()

    def _show(self, done: int) -> None:
        """Sets the bar to `done` bytes (a file's own count may fall short of
        its size: a copy, or a header) and draws it now."""
        if self._bar is None:
            return
        self._bar.n = done
        self._bar.file_text = f"file {self.index}/{self.count}"
        self._bar.name_text = f"{_shown(self.name)} {self.phase}".rstrip()
        self._bar.refresh()
