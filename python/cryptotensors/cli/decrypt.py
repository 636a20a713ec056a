"""`cryptotensors decrypt`: plain safetensors files from encrypted ones."""

from __future__ import annotations

import argparse
import os
from pathlib import Path

from ._args import Command, _claims_arg, _key_args, _output_args
from ._destination import _transform
from ._jobs import _collect, _Job, _rewrite
from ._keys import _load_options
from ._progress import _Progress


def cmd_decrypt(args: argparse.Namespace) -> int:
    load = _load_options(args)
    jobs = _collect(Path(args.input), follow_links=not args.in_place)
    os.umask(os.umask(0o077) | 0o077)  # plaintext weights are the secret: outputs readable by their owner only

    def convert(job: _Job, target: Path, progress: _Progress) -> None:
        _rewrite(job, target, progress, load=load, save={})

    return _transform(args, jobs, convert, "decrypt")


def register(command: Command) -> None:
    """Adds the `decrypt` command."""
    p = command("decrypt", cmd_decrypt, "decrypt a file or a model directory to plain safetensors")
    _output_args(p)
    _key_args(p, "a key that opens the files (repeatable; CRYPTOTENSORS_KEYS is also used)")
    _claims_arg(p)
