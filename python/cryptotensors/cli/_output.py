"""What the CLI prints: result lines and warnings, with text escaped for a terminal."""

from __future__ import annotations

import argparse
import os
import sys

from ._errors import PROG


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
