"""`cryptotensors rekey`: a new data key, every tensor re-encrypted."""

from __future__ import annotations

import argparse
from typing import Optional

from .. import (
    _core,
    _keys,
    _rekey_keys,
    rekey,
)
from ._args import Command
from ._errors import EXIT_USAGE, PROG, CliError, _about
from ._jobs import _Job
from ._keys import _load_keys, _recipients
from ._output import _warn
from ._rotation import _rotate, _rotation_args, _rotation_changes
from .rewrap import _refusal


def _core_plan(job: _Job, changes: dict, keys) -> dict:
    """The core's plan of this rekey of `job` (from its header), with the
    arguments rekey() hands the core."""
    with _about(job.display):
        return _core.rekey_plan(
            job.path, keys=keys, **_rekey_keys(changes["recipients"], changes["add"]), remove=list(changes["remove"]),
            sign_with=_keys.signer(changes["sign_with"]) if changes["sign_with"] else None,
            drop_signature=bool(changes["drop_signature"]), policy=changes["policy"],
            remove_policy=bool(changes["remove_policy"]))


def _rekey_plan(job: _Job, changes: dict, single: bool, keys) -> Optional[dict]:
    """The rekey() options for one file, or None to leave it as it is (in a
    directory: a file that is not encrypted). The rules are the core's (its
    plan, from the header: those of a rewrap, and a key or key wrapper for
    every recipient that stays, found by kid), checked here for every file
    before any is written; the CLI only words the refusals."""
    plan = _core_plan(job, changes, keys)
    refusal = plan["refusal"]
    if refusal is None:
        return changes
    code, where = refusal["code"], job.display
    if code == "no_data_key":
        if single:
            raise CliError(EXIT_USAGE, f"{where}: not encrypted: it has no data key to replace (use `{PROG} encrypt`)")
        _warn(f"{where}: not encrypted; left as it is")
        return None
    if code == "no_key_for":
        raise CliError(EXIT_USAGE, f"{where}: the new data key is wrapped for every recipient that stays: "
                                   f"pass -r KEY.jwk for {', '.join(refusal['kids'])} (a public key is enough for X25519), "
                                   "or --remove-recipient it")
    if code == "not_staying":
        raise CliError(EXIT_USAGE, f"{where}: -r: {refusal['kid']} is not a recipient that stays "
                                   "(to give it access, use --add-recipient)")
    recipients = [r["kid"] for r in job.header.get("recipients") or ()]
    raise _refusal(job, refusal, changes, recipients)


def cmd_rekey(args: argparse.Namespace) -> int:
    changes = _rotation_changes(args)
    recipients = _recipients(args.recipient or ())
    changes["recipients"] = recipients or None
    keys = _keys.keyring(_load_keys(args.key))  # the opening keys rekey() is given
    return _rotate(args, rekey, lambda job, single: _rekey_plan(job, changes, single, keys))


_REKEY_EXAMPLES = f"""examples:
  revoke a recipient: a new data key for the others, every tensor re-encrypted, re-signed
  (copies of the old files, and weights already loaded, are not revoked):
    {PROG} rekey ENC_DIR -k customer.jwk -r partner.pub.jwk --remove-recipient OLD_KID --sign-key publisher.jwk
  a new data key for the same recipients, into a copy (the files were not signed):
    {PROG} rekey ENC_DIR -o ENC_DIR2 -k customer.jwk"""


def register(command: Command) -> None:
    """Adds the `rekey` command."""
    p = command("rekey", cmd_rekey, "re-encrypt under a new data key, keeping recipients (less --remove-recipient, "
                "plus --add-recipient): revokes the old data key for the new files; not copies of the old "
                "files, nor weights already loaded", examples=_REKEY_EXAMPLES)
    _rotation_args(p, "rekey")
    p.add_argument("-r", "--recipient", action="append", metavar="R.jwk",
                   help="the key of a recipient that stays: a public X25519 JWK, an oct JWK, or vault:MOUNT/KEY (repeatable); "
                        "every recipient that stays needs one, unless -k gives it")
