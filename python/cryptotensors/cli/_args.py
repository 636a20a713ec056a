"""Argument types and the argument groups several commands share."""

from __future__ import annotations

import argparse
import re
from pathlib import Path
from typing import Callable

from ._errors import EXIT_CODES

# command(name, run, help, examples=""): a subcommand's parser, which the command's module fills.
Command = Callable[..., argparse.ArgumentParser]

_ALGORITHMS = ("AES-256-GCM", "ChaCha20-Poly1305")


_MIN_SEGMENT, _MAX_SEGMENT = 1 << 12, 1 << 30


_UNITS = {"": 1, "k": 1 << 10, "kib": 1 << 10, "m": 1 << 20, "mib": 1 << 20, "g": 1 << 30, "gib": 1 << 30}


def _segment_size(text: str) -> int:
    m = re.fullmatch(r"\s*(\d+)\s*([a-zA-Z]*)\s*", text)
    unit = _UNITS.get(m.group(2).lower()) if m else None
    if unit is None:
        raise argparse.ArgumentTypeError(f"{text!r} is not a size (e.g. 1048576, 64K, 1M)")
    n = int(m.group(1)) * unit
    if n & (n - 1) or not _MIN_SEGMENT <= n <= _MAX_SEGMENT:
        raise argparse.ArgumentTypeError(f"{text!r}: a segment size is a power of two from 4K to 1G")
    return n


def _regex(text: str) -> re.Pattern:
    try:
        return re.compile(text)
    except re.error as e:
        raise argparse.ArgumentTypeError(f"{text!r} is not a regular expression: {e}") from None


def _exit_epilog() -> str:
    return "exit codes:\n" + "\n".join(f"  {code}  {meaning}" for code, meaning in EXIT_CODES.items())


def _output_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("input", metavar="IN", help="a .safetensors file or a model directory")
    where = p.add_mutually_exclusive_group(required=True)
    where.add_argument("-o", "--output", metavar="OUT", type=Path, help="output file or directory")
    where.add_argument("--in-place", action="store_true", help="replace each input file, atomically")
    p.add_argument("--force", action="store_true", help="replace an existing output")


def _key_args(p: argparse.ArgumentParser, key_help: str) -> None:
    p.add_argument("-k", "--key", action="append", metavar="KEY.jwk", help=key_help)
    p.add_argument("--trusted-signer", action="append", metavar="PUB.jwk",
                   help="the file must be signed by this public Ed25519 or P-256 key (repeatable)")


def _policy_arg(p) -> None:
    p.add_argument("--policy", metavar="P.rego",
                   help="set this access policy, checked on every load: a Rego module in `package cryptotensors` "
                        "that defines allow (and a reason); a file that is not a valid policy is a usage error (exit 2)")


def _claims_arg(p: argparse.ArgumentParser) -> None:
    p.add_argument("--claims", metavar="CLAIMS.json",
                   help="claims for the files' access policy, a JSON object (e.g. TEE attestation results; \"-\": stdin)")
