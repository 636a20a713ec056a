"""One exception class per error kind (issue 12): callers and the CLI's exit
codes branch on the class, never on the message."""

import errno
import os

import numpy as np
import pytest

import cryptotensors as ct
import cryptotensors.numpy as cn
from cryptotensors import cli

VECTORS = os.path.join(os.path.dirname(__file__), "vectors")


def test_every_library_class_is_a_safetensor_error():
    for cls in (ct.UnsupportedError, ct.InvalidKeyError, ct.KeyNotFoundError, ct.IntegrityError,
                ct.EncryptionRequiredError, ct.SignatureError, ct.PolicyDeniedError, ct.InternalError,
                ct.KeyConfigError, ct.SafetensorOSError):
        assert issubclass(cls, ct.SafetensorError), cls
    # Code written before the class existed still catches it as what it was.
    assert issubclass(ct.EncryptionRequiredError, ct.IntegrityError)
    assert not issubclass(ct.UnsupportedError, ct.IntegrityError)


def test_safetensor_os_error_is_both_an_os_error_and_a_safetensor_error():
    e = ct.SafetensorOSError(errno.EISDIR, os.strerror(errno.EISDIR))
    assert isinstance(e, OSError) and isinstance(e, ct.SafetensorError)
    assert (e.errno, e.strerror) == (errno.EISDIR, os.strerror(errno.EISDIR))
    with pytest.raises(OSError):
        raise e
    with pytest.raises(ct.SafetensorError):
        raise e


def test_plain_file_under_require_encryption_is_encryption_required_error():
    path = os.path.join(VECTORS, "plain.safetensors")
    with pytest.raises(ct.EncryptionRequiredError, match="require_encryption=True") as info:
        ct.safe_open(path, "np", require_encryption=True)
    assert type(info.value) is ct.EncryptionRequiredError
    assert isinstance(info.value, ct.IntegrityError)


def test_core_io_errors_are_os_errors_with_their_errno(tmp_path):
    with pytest.raises(FileNotFoundError) as missing:
        ct.inspect(tmp_path / "missing.safetensors")
    assert missing.value.errno == errno.ENOENT
    assert missing.value.strerror == os.strerror(errno.ENOENT)
    assert str(missing.value) == f"[Errno {errno.ENOENT}] {os.strerror(errno.ENOENT)}"
    with pytest.raises(OSError) as directory:
        ct.inspect(tmp_path)
    assert type(directory.value) is ct.SafetensorOSError
    assert isinstance(directory.value, ct.SafetensorError)
    assert (directory.value.errno, directory.value.strerror) == (errno.EISDIR, os.strerror(errno.EISDIR))


def test_serializing_to_a_directory_keeps_the_errno(tmp_path):
    target = tmp_path / "taken"
    target.mkdir()
    (target / "child").write_bytes(b"")  # a non-empty directory cannot be renamed over
    with pytest.raises(ct.SafetensorError) as info:
        cn.save_file({"a": np.zeros(2, np.float32)}, str(target))
    assert isinstance(info.value, OSError) and info.value.errno is not None, repr(info.value)


def test_unusable_loader_key_is_invalid_key_error():
    path = os.path.join(VECTORS, "plain.safetensors")
    with pytest.raises(ct.InvalidKeyError, match="^Invalid key:"):
        ct.safe_open(path, "np", keys={"kty": "oct", "k": "AAAA"})


@pytest.mark.parametrize(
    "exc, code, message",
    [
        (ct.EncryptionRequiredError("File is not encrypted"), cli.EXIT_INTEGRITY, "File is not encrypted"),
        (ct.IntegrityError("Decryption failed"), cli.EXIT_INTEGRITY, "Decryption failed"),
        (ct.InvalidKeyError("Invalid key: no"), cli.EXIT_KEY, "Invalid key: no"),
        (ct.KeyNotFoundError("No key"), cli.EXIT_KEY, "No key"),
        (ct.SignatureError("Signature invalid"), cli.EXIT_SIGNATURE, "Signature invalid"),
        (ct.PolicyDeniedError("denied"), cli.EXIT_POLICY, "denied"),
        (ct.UnsupportedError("Unsupported: version 2"), cli.EXIT_FAILURE, "Unsupported: version 2"),
        (ct.SafetensorError("Invalid key is not a prefix any more"), cli.EXIT_FAILURE,
         "Invalid key is not a prefix any more"),
        (FileNotFoundError(errno.ENOENT, "No such file or directory"), cli.EXIT_NOT_FOUND, "No such file or directory"),
        (ct.SafetensorOSError(errno.EISDIR, "Is a directory"), cli.EXIT_OS, "Is a directory"),
        (ct.SafetensorOSError(errno.EDQUOT, "Disk quota exceeded"), cli.EXIT_OS,
         f"disk full ({os.strerror(errno.EDQUOT)})"),
        # Message text no longer decides: an I/O-looking message on another class is that class's.
        (ct.SafetensorError("I/O error: No such file or directory (os error 2)"), cli.EXIT_FAILURE,
         "I/O error: No such file or directory (os error 2)"),
    ],
)
def test_cli_exit_code_is_chosen_by_class(exc, code, message):
    assert cli._classify(exc) == (code, message)



def test_refused_argument_is_invalid_argument_error():
    path = os.path.join(VECTORS, "plain.safetensors")
    with pytest.raises(ct.InvalidArgumentError, match="^Invalid argument: unknown backend") as info:
        ct._core.Handle.open(path, "bogus")
    assert type(info.value) is ct.InvalidArgumentError
