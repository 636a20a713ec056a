"""`cryptotensors rekey`: a new data key, every tensor re-encrypted."""

from __future__ import annotations

import argparse
import json
from typing import List, Optional

from .. import (
    _keys,
    _vault_cli,
    rekey,
)
from ._args import Command
from ._errors import EXIT_USAGE, PROG, CliError
from ._jobs import _Job
from ._keys import _load_keys, _recipients
from ._output import _warn
from ._rotation import _rotate, _rotation_args, _rotation_changes
from .rewrap import _rewrap_plan


def _rekey_plan(job: _Job, changes: dict, single: bool, keyring: List[dict]) -> Optional[dict]:
    """The rekey() options for one file, or None to leave it as it is (in a
    directory: a file that is not encrypted). Like _rewrap_plan, refuses
    before any file is written what the library would refuse, including a
    recipient that stays and whose key is not given (found by kid)."""
    h = job.header
    if not h.get("algorithm"):
        if single:
            raise CliError(EXIT_USAGE, f"{job.display}: not encrypted: it has no data key to replace (use `{PROG} encrypt`)")
        _warn(f"{job.display}: not encrypted; left as it is")
        return None
    plan = _rewrap_plan(job, changes, single)
    kept = [r["kid"] for r in h.get("recipients") or () if r["kid"] not in changes["remove"]]
    given = {_vault_cli.kid_of(k) for k in [*(changes["recipients"] or ()), *keyring]}
    missing = [kid for kid in kept if kid not in given]
    if missing:
        raise CliError(EXIT_USAGE, f"{job.display}: the new data key is wrapped for every recipient that stays: "
                                   f"pass -r KEY.jwk for {', '.join(missing)} (a public key is enough for X25519), "
                                   "or --remove-recipient it")
    for recipient in changes["recipients"] or ():
        if _vault_cli.kid_of(recipient) not in kept:
            raise CliError(EXIT_USAGE, f"{job.display}: -r: {_vault_cli.kid_of(recipient)} is not a recipient that stays "
                                       "(to give it access, use --add-recipient)")
    return plan


def cmd_rekey(args: argparse.Namespace) -> int:
    changes = _rotation_changes(args)
    recipients = _recipients(args.recipient or ())
    changes["recipients"] = recipients or None
    keyring = json.loads(_keys.keyring_json(_load_keys(args.key)) or "[]")
    return _rotate(args, rekey, lambda job, single: _rekey_plan(job, changes, single, keyring))


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
