"""Reading key, policy and claims arguments, checked before any file is touched."""

from __future__ import annotations

import argparse
import json
import re
import sys
from pathlib import Path
from typing import List, Optional, Sequence

from .. import (
    SafetensorError,
    TensorSpec,
    _keys,
    _vault_cli,
    generate_key,
    public_key,
    serialize,
)
from ._errors import _CORE_ARGUMENT_ERROR, EXIT_KEY, EXIT_USAGE, CliError, _about

_REGO_LOCATION = re.compile(r"^\s*--> [^:\n]*:(\d+):(\d+)\s*$", re.M)


_REGO_ERROR = re.compile(r"^error: (.+)$", re.M)


# Signing keys: (kty, crv) of Ed25519 (EdDSA) and P-256 (ES256) JWKs.
_SIGNING_CURVES = {("OKP", "Ed25519"), ("EC", "P-256")}


def _read_jwks(source: str) -> List[dict]:
    """The JWKs in a file ("-": stdin) holding a JWK or a JWK set."""
    raw = _read_arg(source)
    try:
        keys = _keys._as_list(raw.decode("utf-8"))
    except (ValueError, TypeError):
        keys = []
    if not keys or not all(isinstance(k, dict) and "kty" in k for k in keys):
        raise CliError(EXIT_KEY, f"{source}: not a JWK or a JWK set")
    return keys


def _load_keys(sources: Optional[Sequence[str]]) -> Optional[List[dict]]:
    """The keys of every file given (None when none is)."""
    keys = [k for source in sources or () for k in _read_jwks(source)]
    return keys or None


def _signing_key(source: str) -> dict:
    keys = _read_jwks(source)
    if len(keys) != 1 or (keys[0].get("kty"), keys[0].get("crv")) not in _SIGNING_CURVES or "d" not in keys[0]:
        raise CliError(EXIT_KEY, f"{source}: --sign-key needs one private Ed25519 or P-256 JWK")
    _check_save_keys(source, sign_with=keys[0])
    return keys[0]


def _dry_run(**options) -> None:
    """Serializes one empty tensor with these save options: raises what the
    library would raise for them, before any file is touched."""
    serialize({"x": TensorSpec(dtype="uint8", shape=[0], data_ptr=0, data_len=0)}, **options)


def _check_save_keys(source: str, **options) -> None:
    """Fails early, naming the key file, if the library would refuse these save keys."""
    with _about(source):
        _dry_run(**options)


def _token_recipient(label: str, flag: str):
    """`pkcs11:LABEL`: the key LABEL on the PKCS#11 token that the environment
    configures (CRYPTOTENSORS_PKCS11_*), which wraps each file's data key."""
    from .. import pkcs11

    try:
        provider = pkcs11.from_env()
    except ImportError as e:
        raise CliError(EXIT_KEY, str(e)) from None
    if provider is None:
        raise CliError(EXIT_KEY, f"{flag} pkcs11:{label}: set CRYPTOTENSORS_PKCS11_MODULE (and _TOKEN, _PIN) first")
    if not label:
        raise CliError(EXIT_USAGE, f"{flag} pkcs11:LABEL needs the label of a key on the token")
    return provider.recipient(label)


def _recipients(sources: Sequence[str], flag: str = "-r") -> list:
    """The recipients that `flag`'s arguments name: JWK files, pkcs11:LABEL, vault:[MOUNT/]KEY."""
    recipients: list = []
    for source in sources:
        if source.startswith("pkcs11:"):
            recipients.append(_token_recipient(source[len("pkcs11:") :], flag))
            continue
        if _vault_cli.is_spec(source):
            with _about(f"{flag} {source}"):
                recipients.append(_vault_cli.recipient(source))
            continue
        keys = _read_jwks(source)
        _check_save_keys(source, encrypt_for=keys)
        recipients += keys
    return recipients


def _read_arg(source: str) -> bytes:
    """The bytes of a file argument ("-": stdin)."""
    if source == "-":
        return sys.stdin.buffer.read()
    with _about(source):
        return Path(source).read_bytes()


def _policy_error(source: str, message: str) -> str:
    """One line for the library's report on a bad policy (Rego parser reports
    span several lines: they become `FILE:LINE:COLUMN: what`)."""
    message = message.removeprefix(_CORE_ARGUMENT_ERROR)
    where, what = _REGO_LOCATION.search(message), _REGO_ERROR.search(message)
    if where and what:
        return f"{source}:{where.group(1)}:{where.group(2)}: invalid policy: {what.group(1).strip()}"
    return f"{source}: " + "; ".join(line.strip() for line in message.splitlines() if line.strip())


def _read_policy(source: str) -> str:
    """The Rego text of a policy file, checked by the library (a bad policy is a
    usage error: nothing is written)."""
    try:
        text = _read_arg(source).decode("utf-8")
    except UnicodeDecodeError:
        raise CliError(EXIT_USAGE, f"{source}: a policy is Rego text in UTF-8") from None
    try:
        _dry_run(encrypt_for=generate_key("oct"), policy=text)  # a policy needs encryption; any key will do
    except SafetensorError as exc:
        raise CliError(EXIT_USAGE, _policy_error(source, str(exc))) from None
    return text


def _read_claims(source: Optional[str]) -> Optional[dict]:
    """The claims of a --claims file (a JSON object), for access policies."""
    if source is None:
        return None
    try:
        claims = json.loads(_read_arg(source))
    except ValueError:  # not JSON, or not UTF-8
        claims = None
    if not isinstance(claims, dict):
        raise CliError(EXIT_USAGE, f"{source}: --claims needs a JSON object of claims")
    return claims


def _public_part(jwk: dict, source: str) -> dict:
    with _about(source):
        return public_key(jwk)


def _load_options(args: argparse.Namespace) -> dict:
    """safe_open's keys, trusted signers and policy claims from -k, --trusted-signer and --claims."""
    options = {
        "keys": _load_keys(args.key),
        "trusted_signers": _load_keys(args.trusted_signer),
        "policy_input": _read_claims(args.claims),
    }
    # A malformed CRYPTOTENSORS_KEYS or _TRUSTED_SIGNERS (KeyConfigError, exit
    # 4) fails here, as itself: at the first open it would read as "no key".
    _keys.keyring(options["keys"])
    _keys.trusted(options["trusted_signers"])
    return options
