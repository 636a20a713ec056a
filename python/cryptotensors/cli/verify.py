"""`cryptotensors verify`: the signature, the policy and, given a key, every segment."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Optional

from .. import (
    _keys,
)
from ._args import Command, _claims_arg, _key_args
from ._errors import EXIT_KEY, EXIT_OK, CliError
from ._jobs import _collect, _each_tensor, _Job, _open, _tensor_jobs
from ._keys import _load_options
from ._output import _plural
from ._progress import _Progress


def _signature_status(signer: Optional[str], trusted: bool) -> str:
    if signer is None:
        return "not signed"
    if trusted:
        return f"signature valid, by trusted signer {signer}"
    return f"signature intact, by {signer} (not checked against a trusted key: pass --trusted-signer)"


def _verify_file(job: _Job, load: dict, trusted: bool, progress: _Progress) -> str:
    encrypted = sum(t["encrypted"] for t in job.header["tensors"])
    policy = "; access policy allows this load" if job.header.get("policy") else ""
    try:
        f = _open(job, **load)
    except CliError as e:
        if e.code != EXIT_KEY or load["keys"]:
            raise
        # Readers check the layout, the trailer digest and the signature before
        # they look for a key (FORMAT.md 4.4): a missing key means those passed.
        status = _signature_status(job.header.get("signer"), trusted)
        if policy and not trusted:  # it runs only once the file is authenticated (FORMAT.md 4.4)
            policy = "; access policy not checked"
        return f"{job.display}: {status}{policy}; {_plural(encrypted, 'encrypted tensor')} not checked (no key: pass -k KEY.jwk)"
    with f:
        signer = f.describe().get("signer")
        for _ in _each_tensor(f, job, progress):
            pass
    checked = "every segment authenticated" if job.header.get("segment_size") else "plain safetensors file"
    return f"{job.display}: OK, {_signature_status(signer, trusted)}{policy}; {_plural(len(job.header['tensors']), 'tensor')} read, {checked}"


def cmd_verify(args: argparse.Namespace) -> int:
    load = _load_options(args)
    trusted = _keys.trusted(load["trusted_signers"]) is not None  # the call's, or the environment's
    jobs = _tensor_jobs(_collect(Path(args.input)))
    with _Progress(args, "verify", jobs) as progress:
        for job in progress.files(jobs):
            line = _verify_file(job, load, trusted, progress)
            if not args.quiet:
                progress.println(line)
    return EXIT_OK


def register(command: Command) -> None:
    """Adds the `verify` command."""
    p = command("verify", cmd_verify, "check the signature, the access policy and, given a key, every segment")
    p.add_argument("input", metavar="IN", help="a .safetensors file or a model directory")
    _key_args(p, "a key that opens the files, to check every encrypted segment (repeatable)")
    _claims_arg(p)
