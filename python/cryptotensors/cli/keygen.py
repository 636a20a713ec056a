"""`cryptotensors keygen`: a new key, or the public half of one."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from .. import (
    generate_key,
    public_key,
)
from ._args import Command
from ._atomic import _write_new_file
from ._errors import EXIT_OK, EXIT_USAGE, CliError
from ._keys import _public_part, _read_jwks

_KEY_TYPES = {"oct": "oct", "x25519": "X25519", "ed25519": "Ed25519", "p256": "P-256"}


def _key_text(doc: dict) -> bytes:
    return (json.dumps(doc) + "\n").encode("utf-8")


def _emit_key(args: argparse.Namespace, doc: dict, secret: bool) -> None:
    """Prints a key, or writes it to -o (mode 0600 when it holds a secret)."""
    if args.output is None:
        sys.stdout.buffer.write(_key_text(doc))
        sys.stdout.flush()
    else:
        _write_new_file(args.output, _key_text(doc), 0o600 if secret else 0o666, args.force)


def cmd_keygen(args: argparse.Namespace) -> int:
    if not args.public:
        if args.input is not None:
            raise CliError(EXIT_USAGE, "a key file argument is only read with -y/--public")
        jwk = generate_key(_KEY_TYPES[args.type])
        _emit_key(args, jwk, secret=True)
        if args.output is not None and jwk["kty"] in ("OKP", "EC") and not args.quiet:
            print(f"Public key: {json.dumps(public_key(jwk))}", file=sys.stderr)
        return EXIT_OK
    source = args.input or "-"
    publics = [_public_part(k, source) for k in _read_jwks(source)]
    _emit_key(args, publics[0] if len(publics) == 1 else {"keys": publics}, secret=False)
    return EXIT_OK


def register(command: Command) -> None:
    """Adds the `keygen` command."""
    p = command("keygen", cmd_keygen, "generate a key (a private JWK), or with -y print the public key of one")
    p.add_argument("--type", choices=sorted(_KEY_TYPES), default="x25519",
                   help="oct: shared secret; x25519: recipient key pair (default); ed25519: signing key (EdDSA); "
                        "p256: signing key (ES256, EC P-256)")
    p.add_argument("-y", "--public", action="store_true", help="read a private JWK (file or stdin) and output its public JWK")
    p.add_argument("input", nargs="?", metavar="KEY.jwk", help="with -y: the private key file (default: stdin)")
    p.add_argument("-o", "--output", type=Path, help="write to this file (secrets with mode 0600) instead of stdout")
    p.add_argument("--force", action="store_true", help="replace an existing output file")
