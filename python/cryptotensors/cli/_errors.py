"""Exit codes, and the one table that maps library and OS errors to them."""

from __future__ import annotations

import contextlib
import errno
import os
from typing import Iterator, Tuple

from .. import (
    IntegrityError,
    InvalidKeyError,
    KeyConfigError,
    KeyNotFoundError,
    PolicyDeniedError,
    SafetensorError,
    SignatureError,
)
from .._keyservice import KeyServiceError

PROG = "cryptotensors"
EXIT_OK = 0
EXIT_FAILURE = 1
EXIT_USAGE = 2
EXIT_NOT_FOUND = 3
EXIT_KEY = 4
EXIT_INTEGRITY = 5
EXIT_SIGNATURE = 6
EXIT_POLICY = 7
EXIT_OS = 8
EXIT_UNSAFE_PATH = 9
EXIT_KEY_SERVICE = 10
EXIT_INTERRUPTED = 130


EXIT_CODES = {
    EXIT_OK: "ok",
    EXIT_FAILURE: "other failure (not a safetensors file, unsupported content)",
    EXIT_USAGE: "usage: bad arguments, or the output exists (use --force)",
    EXIT_NOT_FOUND: "file not found",
    EXIT_KEY: "key missing or wrong: no key given opens the file, or a key file is unusable",
    EXIT_INTEGRITY: "integrity: the file was modified or is damaged, or the key does not match",
    EXIT_SIGNATURE: "signature missing, invalid or untrusted",
    EXIT_POLICY: "access policy denied",
    EXIT_OS: "disk full or another operating-system error",
    EXIT_UNSAFE_PATH: "refused input: a link leads out of the input directory, or an entry is not a regular file",
    EXIT_KEY_SERVICE: "key service (Vault/OpenBao) refused, lacks the key, or cannot be reached",
}


# Library and OS errors to exit codes, by class, most specific first (all
# library errors derive from SafetensorError; the core's I/O errors are
# OSErrors with their errno, EncryptionRequiredError is an IntegrityError).
_ERROR_CODES = (
    (KeyServiceError, EXIT_KEY_SERVICE),
    (KeyNotFoundError, EXIT_KEY),
    (KeyConfigError, EXIT_KEY),
    (InvalidKeyError, EXIT_KEY),
    (IntegrityError, EXIT_INTEGRITY),
    (SignatureError, EXIT_SIGNATURE),
    (PolicyDeniedError, EXIT_POLICY),
    (FileNotFoundError, EXIT_NOT_FOUND),
    (OSError, EXIT_OS),
    (SafetensorError, EXIT_FAILURE),
)


# The text InvalidArgumentError's message starts with (dropped where the
# CLI names the argument itself), and the located, multi-line parser report
# of bad Rego.
_CORE_ARGUMENT_ERROR = "Invalid argument: "


class CliError(Exception):
    """A failure reported as one line on stderr with its exit code."""

    def __init__(self, code: int, message: str):
        super().__init__(message)
        self.code = code


def _classify(exc: BaseException) -> Tuple[int, str]:
    """The exit code and one-line message of a library or OS error."""
    code = next(c for kind, c in _ERROR_CODES if isinstance(exc, kind))
    message = str(exc)
    number = getattr(exc, "errno", None)
    if isinstance(exc, OSError) and exc.strerror:
        message = exc.strerror
    if number in (errno.ENOSPC, errno.EDQUOT):
        message = f"disk full ({os.strerror(number)})"
    return code, message


def _cli_error(what: str, exc: BaseException) -> CliError:
    code, message = _classify(exc)
    return CliError(code, f"{what}: {message}")


@contextlib.contextmanager
def _about(what: str) -> Iterator[None]:
    """Turns library and OS errors raised inside into a CliError about `what`."""
    try:
        yield
    except (SafetensorError, OSError) as exc:
        raise _cli_error(what, exc) from None
