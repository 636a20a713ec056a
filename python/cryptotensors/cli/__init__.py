"""The ``cryptotensors`` command: keys, encryption, key rotation, inspection
and verification of safetensors model files, one file or a whole model directory.

    cryptotensors demo                     # the whole story on a tiny model, offline
    cryptotensors keygen --type x25519 -o customer.jwk
    cryptotensors keygen -y customer.jwk -o customer.pub.jwk
    cryptotensors encrypt MODEL_DIR -o ENC_DIR -r customer.pub.jwk --sign-key publisher.jwk [--policy P.rego]
    cryptotensors inspect ENC_DIR
    cryptotensors verify ENC_DIR --trusted-signer publisher.pub.jwk -k customer.jwk [--claims CLAIMS.json]
    cryptotensors decrypt ENC_DIR -o PLAIN_DIR -k customer.jwk [--claims CLAIMS.json]
    cryptotensors rewrap ENC_DIR -k customer.jwk --add-recipient new.pub.jwk --remove-recipient OLD_KID \
        --sign-key publisher.jwk         # rotate keys: only headers change, nothing is re-encrypted
    cryptotensors rekey ENC_DIR -k customer.jwk --remove-recipient OLD_KID \
        --sign-key publisher.jwk         # revoke: a new data key, every tensor re-encrypted

Key arguments are files holding a JWK or a JWK set ({"keys": [...]}). A policy
(--policy, rewrap --policy) is a Rego module in `package cryptotensors`, checked
on every load; --claims passes the loader's claims (e.g. TEE attestation
results, a JSON object) to it. Outputs are written atomically: a directory is
built beside its destination and moved into place when complete, so a failure
leaves nothing behind (a killed run leaves a hidden staging directory, removed
by the next run to the same output); in place (encrypt/decrypt --in-place,
rewrap/rekey without -o) each file is replaced atomically. A link in an input
directory must lead to a regular file inside it, and an output may not lie
inside its input. Text from files is printed with control and bidi
characters escaped. Errors are one line on stderr, and the exit code says
which kind of failure it was:

    0  ok
    1  other failure (not a safetensors file, unsupported content)
    2  usage: bad arguments, or the output exists (use --force)
    3  file not found
    4  key missing or wrong: no key given opens the file, or a key file is unusable
    5  integrity: the file was modified, or the key does not match
    6  signature missing, invalid or untrusted
    7  access policy denied
    8  disk full or another operating-system error
    9  refused input: a link leads out of the input directory, or an entry is not a regular file
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path
from typing import Callable, Optional, Sequence

from .. import SafetensorError, __version__
from ._args import _ALGORITHMS, _claims_arg, _exit_epilog, _key_args, _output_args, _policy_arg, _regex, _segment_size
from ._errors import (
    EXIT_CODES,
    EXIT_FAILURE,
    EXIT_INTEGRITY,
    EXIT_INTERRUPTED,
    EXIT_KEY,
    EXIT_NOT_FOUND,
    EXIT_OK,
    EXIT_OS,
    EXIT_POLICY,
    EXIT_SIGNATURE,
    EXIT_UNSAFE_PATH,
    EXIT_USAGE,
    PROG,
    CliError,
    _classify,
)
from ._output import _shown
from ._rotation import _rotation_args
from .decrypt import cmd_decrypt
from .demo import cmd_demo
from .encrypt import cmd_encrypt
from .inspect import cmd_inspect
from .keygen import _KEY_TYPES, cmd_keygen
from .migrate import _MIGRATE_EXAMPLES, cmd_migrate
from .rekey import _REKEY_EXAMPLES, cmd_rekey
from .rewrap import _REWRAP_EXAMPLES, cmd_rewrap
from .verify import cmd_verify

__all__ = ["main", "CliError", "PROG", "EXIT_CODES", "EXIT_OK", "EXIT_FAILURE", "EXIT_USAGE", "EXIT_NOT_FOUND", "EXIT_KEY", "EXIT_INTEGRITY", "EXIT_SIGNATURE", "EXIT_POLICY", "EXIT_OS", "EXIT_UNSAFE_PATH", "EXIT_INTERRUPTED"]


def _parser() -> argparse.ArgumentParser:
    fmt = argparse.RawDescriptionHelpFormatter
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("-q", "--quiet", action="store_true", help="no progress bars or summaries")
    parser = argparse.ArgumentParser(
        prog=PROG, formatter_class=fmt, epilog=_exit_epilog(),
        description="Encrypt, sign, inspect and verify safetensors model files. Start with: cryptotensors demo",
    )
    parser.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    def command(name: str, run: Callable[[argparse.Namespace], int], help_text: str, examples: str = "") -> argparse.ArgumentParser:
        epilog = f"{examples}\n\n{_exit_epilog()}" if examples else _exit_epilog()
        p = sub.add_parser(name, parents=[common], help=help_text, description=help_text, epilog=epilog, formatter_class=fmt)
        p.set_defaults(run=run)
        return p

    p = command("demo", cmd_demo, "encrypt, sign, verify and load back a tiny model, offline, step by step")
    p.add_argument("--dir", type=Path, help="keep the outputs in this (new or empty) directory")
    p.add_argument("--no-transformers", action="store_true", help="use a numpy state dict even if transformers is installed")

    p = command("keygen", cmd_keygen, "generate a key (a private JWK), or with -y print the public key of one")
    p.add_argument("--type", choices=sorted(_KEY_TYPES), default="x25519",
                   help="oct: shared secret; x25519: recipient key pair (default); ed25519: signing key (EdDSA); "
                        "p256: signing key (ES256, EC P-256)")
    p.add_argument("-y", "--public", action="store_true", help="read a private JWK (file or stdin) and output its public JWK")
    p.add_argument("input", nargs="?", metavar="KEY.jwk", help="with -y: the private key file (default: stdin)")
    p.add_argument("-o", "--output", type=Path, help="write to this file (secrets with mode 0600) instead of stdout")
    p.add_argument("--force", action="store_true", help="replace an existing output file")

    p = command("encrypt", cmd_encrypt, "encrypt (and sign) a file or a model directory")
    _output_args(p)
    p.add_argument("-r", "--recipient", action="append", required=True, metavar="RECIPIENT.jwk",
                   help="encrypt for this key: a public X25519 JWK or an oct JWK, or pkcs11:LABEL for a key "
                        "on the token set by CRYPTOTENSORS_PKCS11_* (repeatable)")
    p.add_argument("--sign-key", metavar="SK.jwk", help="sign with this private Ed25519 or P-256 JWK")
    p.add_argument("--tensors", type=_regex, metavar="REGEX", help="encrypt only tensors whose name matches (re.search)")
    p.add_argument("--algorithm", choices=_ALGORITHMS, default=_ALGORITHMS[0], help="default: %(default)s")
    p.add_argument("--segment-size", type=_segment_size, metavar="BYTES", help="a power of two from 4K to 1G; default 1M")
    _policy_arg(p)

    p = command("decrypt", cmd_decrypt, "decrypt a file or a model directory to plain safetensors")
    _output_args(p)
    _key_args(p, "a key that opens the files (repeatable; CRYPTOTENSORS_KEYS is also used)")
    _claims_arg(p)

    p = command("inspect", cmd_inspect, "show tensors, encryption, recipients and signer, with no key")
    p.add_argument("input", metavar="IN", help="a .safetensors file or a model directory")
    p.add_argument("--json", action="store_true", help="machine-readable output")

    p = command("verify", cmd_verify, "check the signature, the access policy and, given a key, every segment")
    p.add_argument("input", metavar="IN", help="a .safetensors file or a model directory")
    _key_args(p, "a key that opens the files, to check every encrypted segment (repeatable)")
    _claims_arg(p)

    p = command("rewrap", cmd_rewrap, "change recipients, signature or access policy without re-encrypting "
                "(only headers are rewritten; tensor bytes are copied unchanged). It keeps the data key: "
                "a removed recipient loses access to the new file only if it never unwrapped the key and "
                "kept no old header; to revoke, use rekey", examples=_REWRAP_EXAMPLES)
    _rotation_args(p, "rewrap")

    p = command("rekey", cmd_rekey, "re-encrypt under a new data key, keeping recipients (less --remove-recipient, "
                "plus --add-recipient): revokes the old data key for the new files; not copies of the old "
                "files, nor weights already loaded", examples=_REKEY_EXAMPLES)
    _rotation_args(p, "rekey")
    p.add_argument("-r", "--recipient", action="append", metavar="R.jwk",
                   help="the key of a recipient that stays: a public X25519 JWK or an oct JWK (repeatable); "
                        "every recipient that stays needs one, unless -k gives it")

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
    return parser


def main(argv: Optional[Sequence[str]] = None) -> int:
    """Runs the command line; returns the exit code."""
    args = _parser().parse_args(argv)
    try:
        return args.run(args)
    except CliError as e:
        code, message = e.code, str(e)
    except BrokenPipeError:  # e.g. `cryptotensors inspect DIR | head`: not an error
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return EXIT_OK
    except (SafetensorError, OSError) as exc:
        code, message = _classify(exc)
        if getattr(exc, "filename", None):
            message = f"{exc.filename}: {message}"
    except KeyboardInterrupt:
        code, message = EXIT_INTERRUPTED, "interrupted"
    print(f"{PROG}: error: {_shown(message)}", file=sys.stderr, flush=True)
    return code


if __name__ == "__main__":
    sys.exit(main())
