"""`cryptotensors migrate`: files of cryptotensors 0.2.3 into this format."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import List, Sequence

from .. import (
    KeyConfigError,
    _legacy_key_list,
    migrate,
)
from ._args import _ALGORITHMS, Command, _segment_size
from ._destination import _transform
from ._errors import EXIT_KEY, EXIT_USAGE, PROG, CliError, _about
from ._jobs import _collect, _Job, _tensor_jobs
from ._keys import _read_arg, _recipients, _signing_key
from ._output import _plural, _warn
from ._progress import _Progress


def _legacy_keys(sources: Sequence[str]) -> List[dict]:
    """The old package's keys in every file given, as one list."""
    keys: List[dict] = []
    for source in sources:
        try:
            keys += _legacy_key_list(_read_arg(source).decode("utf-8"))
        except (KeyConfigError, UnicodeDecodeError, KeyError):
            raise CliError(EXIT_KEY, f"{source}: not a JWK, a list of JWKs or {{\"keys\": [...]}}") from None
    return keys


def _is_legacy(job: _Job) -> bool:
    return job.header.legacy


def cmd_migrate(args: argparse.Namespace) -> int:
    legacy = _legacy_keys([args.from_keys])
    if not args.trusted_signer and not args.no_verify:
        raise CliError(EXIT_USAGE, "name the old signer's public key with --trusted-signer LEGACY_PUB.json, "
                                   "or pass --no-verify to skip the old header signature")
    trusted = _legacy_keys(args.trusted_signer) if args.trusted_signer else None
    recipients = _recipients(args.recipient)
    signer = _signing_key(args.sign_key) if args.sign_key else None
    jobs = _collect(Path(args.input))
    for job in _tensor_jobs(jobs):
        if not _is_legacy(job):
            raise CliError(EXIT_USAGE, f"{job.display}: not a cryptotensors 0.2.3 file (use encrypt for plain files)")
    if args.no_verify:
        _warn("--no-verify: the old header signatures are NOT checked; the encrypted tensors are still authenticated")

    def convert(job: _Job, target: Path, progress: _Progress) -> None:
        progress.set_phase("re-encrypting")
        with _about(job.display):
            report = migrate(job.path, target, legacy_keys=legacy, encrypt_for=recipients, trusted_signers=trusted,
                             verify_signature=not args.no_verify, sign_with=signer, algorithm=args.algorithm,
                             segment_size=args.segment_size, encrypt_all=args.encrypt_all)
        progress.advance(job.size)
        plain = report["plain_tensors"]
        if plain:
            carried = "now encrypted" if args.encrypt_all else "still plain, now covered by the new file's digests"
            _warn(f"{job.rel}: {_plural(len(plain), 'tensor')} were stored in the clear and authenticated by nothing "
                  f"in the old file (its signature covers the header only), so they are carried as read ({carried}): "
                  + ", ".join(plain))
        if report["signature_verified"]:
            _warn(f"{job.rel}: the old signature was verified, but it covered the header only")
        if report["policy_dropped"]:
            _warn(f"{job.rel}: its __policy__ (old Rego) was not carried over; set a policy with rewrap --policy")

    return _transform(args, jobs, convert, "migrate", done="migrated")


_MIGRATE_EXAMPLES = f"""examples:
  convert a model directory protected with cryptotensors 0.2.3, checking its old signature:
    {PROG} migrate OLD_DIR -o NEW_DIR --from-keys legacy_keys.json --trusted-signer legacy_pub.json -r customer.pub.jwk --sign-key publisher.jwk"""


def register(command: Command) -> None:
    """Adds the `migrate` command."""
    p = command("migrate", cmd_migrate, "convert files of cryptotensors 0.2.3 (the paper's reference implementation) "
                "into this format: every old tag verified, then re-encrypted and written atomically",
                examples=_MIGRATE_EXAMPLES)
    p.add_argument("input", metavar="IN", help="a .safetensors file or a model directory")
    p.add_argument("-o", "--output", metavar="OUT", type=Path, required=True, help="output file or directory")
    p.add_argument("--force", action="store_true", help="replace an existing output")
    p.set_defaults(in_place=False)
    p.add_argument("--from-keys", metavar="LEGACY.json", required=True,
                   help="the old package's keys: a JWK, a list of JWKs or {\"keys\": [...]} (as CRYPTOTENSOR_KEYS took them)")
    verify = p.add_mutually_exclusive_group()
    verify.add_argument("--trusted-signer", action="append", metavar="LEGACY_PUB.json",
                        help="the old signer's public key, in the old form (repeatable); the old header signature must verify under it")
    verify.add_argument("--no-verify", action="store_true", help="do not check the old header signature")
    p.add_argument("-r", "--recipient", action="append", required=True, metavar="RECIPIENT.jwk",
                   help="encrypt for this key: a public X25519 JWK or an oct JWK, or pkcs11:LABEL (repeatable)")
    p.add_argument("--sign-key", metavar="SK.jwk", help="sign with this private Ed25519 or P-256 JWK")
    p.add_argument("--encrypt-all", action="store_true", help="also encrypt the tensors the old file left plain")
    p.add_argument("--algorithm", choices=_ALGORITHMS, default=_ALGORITHMS[0], help="default: %(default)s")
    p.add_argument("--segment-size", type=_segment_size, metavar="BYTES", help="a power of two from 4K to 1G; default 1M")
