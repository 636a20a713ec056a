"""`cryptotensors rewrap`: change recipients, signature or policy; the data key stays."""

from __future__ import annotations

import argparse
from typing import Optional

from .. import (
    rewrap,
)
from ._args import Command
from ._errors import EXIT_USAGE, PROG, CliError
from ._jobs import _Job
from ._output import _warn
from ._rotation import _ENVELOPE_CHANGES, _rotate, _rotation_args, _rotation_changes


def _rewrap_plan(job: _Job, changes: dict, single: bool) -> Optional[dict]:
    """The rewrap() options for one file, or None to leave it as it is (in a
    directory: a file that is not encrypted, when only its envelope would
    change). What the library would refuse, the header tells: it is refused
    here, for every file, before any is written."""
    h = job.header
    signed = h.get("signer") is not None
    resign = changes["sign_with"] is not None or changes["drop_signature"]
    if not h.get("algorithm"):
        flags = [flag for key, flag in _ENVELOPE_CHANGES if changes[key]]
        if not signed:
            if single:
                raise CliError(EXIT_USAGE, f"{job.display}: neither encrypted nor signed: nothing to rewrap (use `{PROG} encrypt`)")
            _warn(f"{job.display}: neither encrypted nor signed; left as it is")
            return None
        if changes["drop_signature"]:
            raise CliError(EXIT_USAGE, f"{job.display}: not encrypted: dropping its signature would leave nothing to protect it")
        if single and flags:
            raise CliError(EXIT_USAGE, f"{job.display}: not encrypted: {', '.join(flags)} need an encrypted file")
        if not resign:
            _warn(f"{job.display}: not encrypted; left as it is")
            return None
        return {"sign_with": changes["sign_with"]}
    if signed and not resign:
        raise CliError(EXIT_USAGE, f"{job.display}: signed: pass --sign-key SK.jwk to re-sign it, or --drop-signature")
    kids = [r["kid"] for r in h.get("recipients") or ()]
    for kid in changes["remove"]:
        if kid not in kids:
            raise CliError(EXIT_USAGE, f"{job.display}: no recipient has kid {kid} (its recipients: {', '.join(kids)})")
    kept = set(kids) - set(changes["remove"])
    for jwk in changes["add"] or ():
        if jwk.get("kid") in kept:
            raise CliError(EXIT_USAGE, f"{job.display}: {jwk['kid']} is already a recipient")
    if not kept and not changes["add"]:
        raise CliError(EXIT_USAGE, f"{job.display}: removing every recipient would make it unreadable")
    return changes


def cmd_rewrap(args: argparse.Namespace) -> int:
    changes = _rotation_changes(args)
    if not any(changes.values()):
        raise CliError(EXIT_USAGE, "nothing to change: pass --add-recipient, --remove-recipient, --sign-key, "
                                   "--drop-signature, --policy or --remove-policy")
    return _rotate(args, rewrap, lambda job, single: _rewrap_plan(job, changes, single))


_REWRAP_EXAMPLES = f"""examples:
  replace a key-encryption key, re-signing: from the new file on, only the new key unwraps the data
  key; this does NOT revoke the old one (it may still hold the data key, or the old header): use rekey
    {PROG} rewrap ENC_DIR -k old.jwk --add-recipient new.pub.jwk --remove-recipient OLD_KID --sign-key publisher.jwk
  set an access policy, in a copy; remove it, in place (the files were not signed):
    {PROG} rewrap ENC_DIR -o ENC_DIR2 -k customer.jwk --policy tee_required.rego
    {PROG} rewrap ENC_DIR2 -k customer.jwk --remove-policy"""


def register(command: Command) -> None:
    """Adds the `rewrap` command."""
    p = command("rewrap", cmd_rewrap, "change recipients, signature or access policy without re-encrypting "
                "(only headers are rewritten; tensor bytes are copied unchanged). It keeps the data key: "
                "a removed recipient loses access to the new file only if it never unwrapped the key and "
                "kept no old header; to revoke, use rekey", examples=_REWRAP_EXAMPLES)
    _rotation_args(p, "rewrap")
