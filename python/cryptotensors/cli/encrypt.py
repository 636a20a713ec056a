"""`cryptotensors encrypt`: encrypt (and sign) a file or a model directory."""

from __future__ import annotations

import argparse
import re
from pathlib import Path
from typing import Dict, List, Optional, Sequence

from ._args import _ALGORITHMS, Command, _output_args, _policy_arg, _regex, _segment_size
from ._destination import _transform
from ._errors import EXIT_USAGE, CliError
from ._jobs import _collect, _Job, _rewrite, _tensor_jobs
from ._keys import _read_policy, _recipients, _signing_key
from ._output import _warn
from ._progress import _Progress

# Other weight formats a model directory may hold: copied as they are, so unencrypted.
_PLAINTEXT_WEIGHTS = (".bin", ".pt", ".pth", ".ckpt", ".gguf", ".h5", ".msgpack", ".onnx", ".npz")


def _selected(job: _Job, pattern: Optional[re.Pattern]) -> List[str]:
    names = [t["name"] for t in job.header["tensors"]]
    return names if pattern is None else [n for n in names if pattern.search(n)]


def _check_encryptable(args: argparse.Namespace, jobs: Sequence[_Job]) -> Dict[str, List[str]]:
    """The tensors to encrypt in each file, refusing encrypted inputs and a
    --tensors pattern that selects nothing anywhere."""
    for job in _tensor_jobs(jobs):
        if job.header.get("algorithm"):
            raise CliError(EXIT_USAGE, f"{job.display}: already encrypted (decrypt it first)")
    selection = {job.rel: _selected(job, args.tensors) for job in _tensor_jobs(jobs)}
    if args.tensors is not None and not any(selection.values()):
        raise CliError(EXIT_USAGE, f"--tensors {args.tensors.pattern!r} matches no tensor")
    for rel, names in selection.items():
        if args.tensors is not None and not names:
            _warn(f"{rel}: no tensor matches --tensors; it is written unencrypted")
    for job in jobs:
        if job.header is None and job.path.suffix in _PLAINTEXT_WEIGHTS:
            _warn(f"{job.display}: not a .safetensors file; copied unencrypted")
    return selection


def cmd_encrypt(args: argparse.Namespace) -> int:
    recipients = _recipients(args.recipient)
    signer = _signing_key(args.sign_key) if args.sign_key else None
    policy = _read_policy(args.policy) if args.policy else None
    jobs = _collect(Path(args.input), follow_links=not args.in_place)
    selection = _check_encryptable(args, jobs)

    def convert(job: _Job, target: Path, progress: _Progress) -> None:
        names = selection[job.rel]
        save: dict = {"sign_with": signer}
        if names:
            chosen = None if args.tensors is None else names
            save.update(encrypt_for=recipients, encrypted_tensors=chosen, algorithm=args.algorithm, policy=policy)
        if names or signer:
            save["segment_size"] = args.segment_size
        _rewrite(job, target, progress, load={}, save=save)

    return _transform(args, jobs, convert, "encrypt")


def register(command: Command) -> None:
    """Adds the `encrypt` command."""
    p = command("encrypt", cmd_encrypt, "encrypt (and sign) a file or a model directory")
    _output_args(p)
    p.add_argument("-r", "--recipient", action="append", required=True, metavar="RECIPIENT.jwk",
                   help="encrypt for this key: a public X25519 JWK or an oct JWK, or pkcs11:LABEL for a key "
                        "on the token set by CRYPTOTENSORS_PKCS11_*, or vault:MOUNT/KEY for a Vault/OpenBao Transit key "
                        "on the server set by VAULT_ADDR (repeatable)")
    p.add_argument("--sign-key", metavar="SK.jwk", help="sign with this private Ed25519 or P-256 JWK")
    p.add_argument("--tensors", type=_regex, metavar="REGEX", help="encrypt only tensors whose name matches (re.search)")
    p.add_argument("--algorithm", choices=_ALGORITHMS, default=_ALGORITHMS[0], help="default: %(default)s")
    p.add_argument("--segment-size", type=_segment_size, metavar="BYTES", help="a power of two from 4K to 1G; default 1M")
    _policy_arg(p)
