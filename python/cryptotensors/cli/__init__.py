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
    5  integrity: the file was modified or is damaged, or the key does not match
    6  signature missing, invalid or untrusted
    7  access policy denied
    8  disk full or another operating-system error
    9  refused input: a link leads out of the input directory, or an entry is not a regular file
   10  key service (Vault/OpenBao) refused, lacks the key, or cannot be reached
"""

from __future__ import annotations

import argparse
import os
import sys
from typing import Callable, Optional, Sequence

from .. import SafetensorError, __version__
from . import decrypt, demo, encrypt, inspect, keygen, migrate, rekey, rewrap, verify
from ._args import _exit_epilog
from ._errors import (
    EXIT_CODES,
    EXIT_FAILURE,
    EXIT_INTEGRITY,
    EXIT_INTERRUPTED,
    EXIT_KEY,
    EXIT_KEY_SERVICE,
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

__all__ = ["main", "CliError", "PROG", "EXIT_CODES", "EXIT_OK", "EXIT_FAILURE", "EXIT_USAGE", "EXIT_NOT_FOUND", "EXIT_KEY", "EXIT_INTEGRITY", "EXIT_SIGNATURE", "EXIT_POLICY", "EXIT_OS", "EXIT_UNSAFE_PATH", "EXIT_KEY_SERVICE", "EXIT_INTERRUPTED"]


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

    for module in (demo, keygen, encrypt, decrypt, inspect, verify, rewrap, rekey, migrate):
        module.register(command)
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
