"""What rewrap and rekey share: their arguments, changes and the run over a model's files."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Callable, Optional

from .. import (
    InvalidArgumentError,
    KeyNotFoundError,
    SafetensorError,
    rekey,
)
from ._args import _claims_arg, _key_args, _policy_arg
from ._atomic import _copy_file
from ._destination import _check_apart, _transform
from ._errors import _CORE_ARGUMENT_ERROR, EXIT_USAGE, CliError, _about, _classify
from ._jobs import _collect, _Job, _no_key, _tensor_jobs
from ._keys import _load_keys, _read_claims, _read_policy, _recipients, _signing_key
from ._progress import _Progress

# rewrap() options that change the encryption envelope, by the flag that sets them.
_ENVELOPE_CHANGES = (("add", "--add-recipient"), ("remove", "--remove-recipient"), ("policy", "--policy"), ("remove_policy", "--remove-policy"))


def _rotate_file(operation: Callable, job: _Job, target: Path, load: dict, plan: dict, progress: _Progress) -> None:
    # A rekey rewrites every tensor: the bar moves as the core writes them.
    extra = {"progress": progress.within} if operation is rekey else {}
    try:
        operation(job.path, output=target, **load, **plan, **extra)
    except KeyNotFoundError:
        raise _no_key(job) from None
    except (SafetensorError, OSError) as exc:
        code, message = _classify(exc)
        if isinstance(exc, InvalidArgumentError):  # what the plan did not foresee: still the arguments
            code, message = EXIT_USAGE, message.removeprefix(_CORE_ARGUMENT_ERROR)
        raise CliError(code, f"{job.display}: {message}") from None


def _rotation_changes(args: argparse.Namespace) -> dict:
    return {
        "add": _recipients(args.add_recipient or (), "--add-recipient") or None,
        "remove": args.remove_recipient or [],
        "sign_with": _signing_key(args.sign_key) if args.sign_key else None,
        "drop_signature": args.drop_signature,
        "policy": _read_policy(args.policy) if args.policy else None,
        "remove_policy": args.remove_policy,
    }


def _rotate(args: argparse.Namespace, operation: Callable, plan_of: Callable[[_Job, bool], Optional[dict]]) -> int:
    """rewrap and rekey: each encrypted or signed file of IN, in place or into -o."""
    verb = operation.__name__
    load = {"keys": _load_keys(args.key), "trusted_signers": _load_keys(args.trusted_signer),
            "policy_input": _read_claims(args.claims)}
    src = Path(args.input)
    if args.output is not None:
        _check_apart(src, args.output, f"leave out -o to {verb} in place")
    jobs = _collect(src, follow_links=args.output is not None)
    plans = {job.rel: plan_of(job, not src.is_dir()) for job in _tensor_jobs(jobs)}
    if not any(plans.values()):
        what = "encrypted" if operation is rekey else "encrypted or signed"
        raise CliError(EXIT_USAGE, f"{src}: no file in it is {what}: nothing to {verb}")
    args.in_place = args.output is None  # without -o, each file is replaced (atomically, by the library)

    def convert(job: _Job, target: Path, progress: _Progress) -> None:
        plan = plans[job.rel]
        if plan is not None:
            _rotate_file(operation, job, target, load, plan, progress)
        elif not args.in_place:
            with _about(f"copying {job.rel}"):
                _copy_file(job.path, target)

    return _transform(args, jobs, convert, verb, f"{verb}ped" if verb == "rewrap" else f"{verb}ed")


def _rotation_args(p: argparse.ArgumentParser, verb: str) -> None:
    """The arguments rewrap and rekey share."""
    p.add_argument("input", metavar="IN", help="a .safetensors file or a model directory")
    p.add_argument("-o", "--output", metavar="OUT", type=Path,
                   help="output file or directory (default: replace each input file, atomically)")
    p.add_argument("--force", action="store_true", help="replace an existing output")
    _key_args(p, "a key that opens the files now (repeatable; CRYPTOTENSORS_KEYS is also used)")
    _claims_arg(p)
    p.add_argument("--add-recipient", action="append", metavar="R.jwk",
                   help="give this key access: a public X25519 JWK, an oct JWK, pkcs11:LABEL (a key on the "
                        "token CRYPTOTENSORS_PKCS11_* configures) or vault:[MOUNT/]KEY (a Transit key; repeatable)")
    p.add_argument("--remove-recipient", action="append", metavar="KID",
                   help="the new files are not wrapped for the recipient with this kid (see `inspect`; repeatable)")
    sign = p.add_mutually_exclusive_group()
    sign.add_argument("--sign-key", metavar="SK.jwk",
                      help="re-sign with this private Ed25519 or P-256 JWK (a signed file needs this or --drop-signature)")
    sign.add_argument("--drop-signature", action="store_true", help="remove the signature")
    policy = p.add_mutually_exclusive_group()
    _policy_arg(policy)
    policy.add_argument("--remove-policy", action="store_true", help="remove the access policy")
