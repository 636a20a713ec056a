"""What the CLI prints: result lines, warnings, text escaped for a terminal, progress."""

from __future__ import annotations

import argparse
import os
import shutil
import sys
import time
from typing import TYPE_CHECKING, Iterator, Sequence

from ._errors import PROG

if TYPE_CHECKING:
    from ._jobs import _Job


def _info(args: argparse.Namespace, message: str) -> None:
    """A result line on stdout, unless -q."""
    if not args.quiet:
        print(_shown(message), flush=True)


def _warn(message: str) -> None:
    print(f"{PROG}: warning: {_shown(message)}", file=sys.stderr, flush=True)


def _shown(text: object, keep: str = "") -> str:
    """Text safe to print on a terminal, as one line. Whatever a file says
    (tensor names, kids, metadata, a policy, a file name, errors quoting any
    of them) could otherwise move the cursor, erase or recolour lines, or
    reorder them (bidi overrides), and so forge a line such as "OK,
    signature valid". Every character that is not printable (C0 and C1
    controls, DEL, newlines, tabs, format characters such as U+202A-U+202E
    and U+2066-U+2069, separators other than the space, unpaired
    surrogates) is written as Python escapes it in a repr: \\x1b, \\n,
    \\u202e. Printable text is unchanged, so escaping twice changes nothing.
    `keep` names harmless characters to leave as they are (a policy's tabs)."""
    text = str(text)
    if text.isprintable():
        return text
    return "".join(c if c.isprintable() or c in keep else repr(c)[1:-1] for c in text)


def _human(n: float) -> str:
    for unit in ("B", "KiB", "MiB", "GiB"):
        if n < 1024 or unit == "GiB":
            return f"{n:.0f} {unit}" if n == int(n) else f"{n:.1f} {unit}"
        n /= 1024
    raise AssertionError("unreachable")


def _plural(n: int, word: str) -> str:
    return f"{n} {word}{'s' * (n != 1)}"


def _env_flag(name: str) -> bool:
    return os.environ.get(name, "").strip().lower() not in ("", "0", "false", "no", "off")


class _Progress:
    """One line of progress on stderr, in bytes and files. Drawn only on a
    terminal, without -q and unless HF_HUB_DISABLE_PROGRESS_BARS is set."""

    def __init__(self, args: argparse.Namespace, verb: str, jobs: Sequence[_Job]):
        self.enabled = not args.quiet and sys.stderr.isatty() and not _env_flag("HF_HUB_DISABLE_PROGRESS_BARS")
        self.verb, self.count = verb, len(jobs)
        self.total = sum(j.size for j in jobs)
        self.done = self.index = 0
        self.name = self.phase = ""
        self._drawn = False
        self._last = 0.0

    def __enter__(self) -> _Progress:
        return self

    def __exit__(self, *exc) -> None:
        self._clear()

    def files(self, jobs: Sequence[_Job]) -> Iterator[_Job]:
        """Yields each job, accounting for all its bytes once the caller is done with it."""
        for self.index, job in enumerate(jobs, 1):
            start, self.name, self.phase = self.done, job.rel, ""
            self._draw(force=True)
            yield job
            self.done = start + job.size
        self._draw(force=True)

    def advance(self, nbytes: int) -> None:
        self.done += nbytes
        self._draw()

    def set_phase(self, phase: str) -> None:
        self.phase = phase
        self._draw(force=True)

    def println(self, line: str) -> None:
        """Prints a line on stdout above the progress line."""
        self._clear()
        print(_shown(line), flush=True)
        self._draw(force=True)

    def _draw(self, force: bool = False) -> None:
        now = time.monotonic()
        if not self.enabled or (not force and now - self._last < 0.1):
            return
        self._last = now
        share = self.done / self.total if self.total else 1.0
        bar = ("#" * int(share * 20)).ljust(20, ".")
        line = (
            f"{self.verb} [{bar}] {int(share * 100):3d}%  {_human(self.done)}/{_human(self.total)}"
            f"  file {self.index}/{self.count} {_shown(self.name)} {self.phase}"
        )
        width = shutil.get_terminal_size().columns - 1
        sys.stderr.write("\r" + line[:width] + "\x1b[K")
        sys.stderr.flush()
        self._drawn = True

    def _clear(self) -> None:
        if self._drawn:
            sys.stderr.write("\r\x1b[K")
            sys.stderr.flush()
            self._drawn = False
