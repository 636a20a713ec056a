"""`cryptotensors rewrap`: change recipients, signature or policy; the data key stays."""

from __future__ import annotations

import argparse
from typing import Optional, Sequence

from .. import _added, _core, _keys, _vault_cli
from ._args import Command
from ._errors import EXIT_USAGE, PROG, CliError, _about
from ._jobs import _Job
from ._output import _warn
from ._rotation import _ENVELOPE_CHANGES, _rotate, _rotation_args, _rotation_changes


def _refusal(job: _Job, refusal: dict, changes: dict, recipients: Sequence[str]) -> CliError:
    """The core's refusal of a rewrap, in the CLI's words (its flags)."""
    code, kid, where = refusal["code"], refusal["kid"], job.display
    flags = ", ".join(flag for key, flag in _ENVELOPE_CHANGES if changes[key])
    words = {
        "unprotected": f"{where}: neither encrypted nor signed: nothing to rewrap (use `{PROG} encrypt`)",
        "signed": f"{where}: signed: pass --sign-key SK.jwk to re-sign it, or --drop-signature",
        "not_encrypted": f"{where}: not encrypted: {flags} need an encrypted file",
        "policy_needs_encryption": f"{where}: not encrypted: {flags} need an encrypted file",
        "last_protection": f"{where}: not encrypted: dropping its signature would leave nothing to protect it",
        "unknown_kid": f"{where}: no recipient has kid {kid} (its recipients: {', '.join(recipients)})",
        "already_recipient": f"{where}: {kid} is already a recipient",
        "no_recipient_left": f"{where}: removing every recipient would make it unreadable",
    }
    return CliError(EXIT_USAGE, words.get(code, f"{where}: {refusal['message']}"))


def _core_plan(job: _Job, options: dict) -> dict:
    """The core's plan of this rewrap of `job` (from its header), or the CliError that refuses it."""
    with _about(job.display):
        plan = _core.rewrap_plan(
            job.path, **_added(options.get("add")),  # a key wrapper is asked only its kid
            remove=list(options.get("remove") or ()),
            sign_with=_keys.signer(options["sign_with"]) if options.get("sign_with") else None,
            drop_signature=bool(options.get("drop_signature")), policy=options.get("policy"),
            remove_policy=bool(options.get("remove_policy")))
    if plan["refusal"] is not None:
        recipients = [r["kid"] for r in job.header.get("recipients") or ()]
        raise _refusal(job, plan["refusal"], options, recipients)
    return plan


def _rewrap_plan(job: _Job, changes: dict, single: bool) -> Optional[dict]:
    """The rewrap() options for one file, or None to leave it as it is. The
    rules are the core's (its plan, from the header), checked here for every
    file before any is written. The CLI's own choice is only which changes
    apply to a file of a model directory that is not encrypted: its
    signature, if that changes, else nothing."""
    h = job.header
    if not h.get("algorithm") and not single:
        if h.get("signer") is None:
            _warn(f"{job.display}: neither encrypted nor signed; left as it is")
            return None
        if changes["sign_with"] is None and not changes["drop_signature"]:
            _warn(f"{job.display}: not encrypted; left as it is")
            return None
        _core_plan(job, {"sign_with": changes["sign_with"], "drop_signature": changes["drop_signature"]})
        return {"sign_with": changes["sign_with"]}
    _core_plan(job, changes)
    return changes


def cmd_rewrap(args: argparse.Namespace) -> int:
    changes = _rotation_changes(args)
    changes["transit_latest"] = args.transit_latest
    if not any(changes.values()):
        raise CliError(EXIT_USAGE, "nothing to change: pass --add-recipient, --remove-recipient, --sign-key, "
                                   "--drop-signature, --policy, --remove-policy or --transit-latest")
    return _rotate(args, _vault_cli.rewrap, lambda job, single: _rewrap_plan(job, changes, single))


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
    p.add_argument("--transit-latest", action="store_true",
                   help="move every Vault/OpenBao Transit stanza to its key's latest version (Transit rewrap)")
