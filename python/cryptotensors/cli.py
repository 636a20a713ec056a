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
import contextlib
import errno
import fcntl
import json
import os
import re
import secrets
import shutil
import stat
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO, Callable, Dict, Iterator, List, Optional, Sequence, Tuple

from . import (
    IntegrityError,
    InvalidArgumentError,
    InvalidKeyError,
    KeyConfigError,
    KeyNotFoundError,
    PolicyDeniedError,
    SafetensorError,
    SignatureError,
    TensorSpec,
    __version__,
    _keys,
    _legacy_key_list,
    _vault_cli,
    generate_key,
    migrate,
    public_key,
    rekey,
    safe_open,
    serialize,
    serialize_file,
)
from . import inspect as inspect_file
from ._serialize import _SPEC_DTYPES

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
EXIT_INTERRUPTED = 130

EXIT_CODES = {
    EXIT_OK: "ok",
    EXIT_FAILURE: "other failure (not a safetensors file, unsupported content)",
    EXIT_USAGE: "usage: bad arguments, or the output exists (use --force)",
    EXIT_NOT_FOUND: "file not found",
    EXIT_KEY: "key missing or wrong: no key given opens the file, or a key file is unusable",
    EXIT_INTEGRITY: "integrity: the file was modified, or the key does not match",
    EXIT_SIGNATURE: "signature missing, invalid or untrusted",
    EXIT_POLICY: "access policy denied",
    EXIT_OS: "disk full or another operating-system error",
    EXIT_UNSAFE_PATH: "refused input: a link leads out of the input directory, or an entry is not a regular file",
}

# Library and OS errors to exit codes, by class, most specific first (all
# library errors derive from SafetensorError; the core's I/O errors are
# OSErrors with their errno, EncryptionRequiredError is an IntegrityError).
_ERROR_CODES = (
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
_REGO_LOCATION = re.compile(r"^\s*--> [^:\n]*:(\d+):(\d+)\s*$", re.M)
_REGO_ERROR = re.compile(r"^error: (.+)$", re.M)

_KEY_TYPES = {"oct": "oct", "x25519": "X25519", "ed25519": "Ed25519", "p256": "P-256"}
# Signing keys: (kty, crv) of Ed25519 (EdDSA) and P-256 (ES256) JWKs.
_SIGNING_CURVES = {("OKP", "Ed25519"), ("EC", "P-256")}
_ALGORITHMS = ("AES-256-GCM", "ChaCha20-Poly1305")
_MIN_SEGMENT, _MAX_SEGMENT = 1 << 12, 1 << 30
_UNITS = {"": 1, "k": 1 << 10, "kib": 1 << 10, "m": 1 << 20, "mib": 1 << 20, "g": 1 << 30, "gib": 1 << 30}
# TensorSpec takes constructor-style dtype names; the header uses format codes.
_CONSTRUCTOR_NAMES = {code: name for name, code in _SPEC_DTYPES.items()}
# Other weight formats a model directory may hold: copied as they are, so unencrypted.
_PLAINTEXT_WEIGHTS = (".bin", ".pt", ".pth", ".ckpt", ".gguf", ".h5", ".msgpack", ".onnx", ".npz")


class CliError(Exception):
    """A failure reported as one line on stderr with its exit code."""

    def __init__(self, code: int, message: str):
        super().__init__(message)
        self.code = code


# ---------------------------------------------------------------- errors


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


# ---------------------------------------------------------------- output


def _info(args: argparse.Namespace, message: str) -> None:
    """A result line on stdout, unless -q."""
    if not args.quiet:
        print(_shown(message), flush=True)


def _warn(message: str) -> None:
    print(f"{PROG}: warning: {_shown(message)}", file=sys.stderr, flush=True)


def _shown(text: object, keep: str = "") -> str:
    """Text safe to print on a terminal, as one line. Whatever a file says
    (tensor names, kids, metadata, a policy, a file name, errors quoting any
    of them) could otherwise move the cursor, erase or recolour lines, or
    reorder them (bidi overrides), and so forge a line such as "OK,
    signature valid". Every character that is not printable (C0 and C1
    controls, DEL, newlines, tabs, format characters such as U+202A-U+202E
    and U+2066-U+2069, separators other than the space, unpaired
    surrogates) is written as Python escapes it in a repr: \\x1b, \\n,
    \\u202e. Printable text is unchanged, so escaping twice changes nothing.
    `keep` names harmless characters to leave as they are (a policy's tabs)."""
    text = str(text)
    if text.isprintable():
        return text
    return "".join(c if c.isprintable() or c in keep else repr(c)[1:-1] for c in text)


def _human(n: float) -> str:
    for unit in ("B", "KiB", "MiB", "GiB"):
        if n < 1024 or unit == "GiB":
            return f"{n:.0f} {unit}" if n == int(n) else f"{n:.1f} {unit}"
        n /= 1024
    raise AssertionError("unreachable")


def _plural(n: int, word: str) -> str:
    return f"{n} {word}{'s' * (n != 1)}"


def _env_flag(name: str) -> bool:
    return os.environ.get(name, "").strip().lower() not in ("", "0", "false", "no", "off")


class _Progress:
    """One line of progress on stderr, in bytes and files. Drawn only on a
    terminal, without -q and unless HF_HUB_DISABLE_PROGRESS_BARS is set."""

    def __init__(self, args: argparse.Namespace, verb: str, jobs: Sequence[_Job]):
        self.enabled = not args.quiet and sys.stderr.isatty() and not _env_flag("HF_HUB_DISABLE_PROGRESS_BARS")
        self.verb, self.count = verb, len(jobs)
        self.total = sum(j.size for j in jobs)
        self.done = self.index = 0
        self.name = self.phase = ""
        self._drawn = False
        self._last = 0.0

    def __enter__(self) -> _Progress:
        return self

    def __exit__(self, *exc) -> None:
        self._clear()

    def files(self, jobs: Sequence[_Job]) -> Iterator[_Job]:
        """Yields each job, accounting for all its bytes once the caller is done with it."""
        for self.index, job in enumerate(jobs, 1):
            start, self.name, self.phase = self.done, job.rel, ""
            self._draw(force=True)
            yield job
            self.done = start + job.size
        self._draw(force=True)

    def advance(self, nbytes: int) -> None:
        self.done += nbytes
        self._draw()

    def set_phase(self, phase: str) -> None:
        self.phase = phase
        self._draw(force=True)

    def println(self, line: str) -> None:
        """Prints a line on stdout above the progress line."""
        self._clear()
        print(_shown(line), flush=True)
        self._draw(force=True)

    def _draw(self, force: bool = False) -> None:
        now = time.monotonic()
        if not self.enabled or (not force and now - self._last < 0.1):
            return
        self._last = now
        share = self.done / self.total if self.total else 1.0
        bar = ("#" * int(share * 20)).ljust(20, ".")
        line = (
            f"{self.verb} [{bar}] {int(share * 100):3d}%  {_human(self.done)}/{_human(self.total)}"
            f"  file {self.index}/{self.count} {_shown(self.name)} {self.phase}"
        )
        width = shutil.get_terminal_size().columns - 1
        sys.stderr.write("\r" + line[:width] + "\x1b[K")
        sys.stderr.flush()
        self._drawn = True

    def _clear(self) -> None:
        if self._drawn:
            sys.stderr.write("\r\x1b[K")
            sys.stderr.flush()
            self._drawn = False


# ---------------------------------------------------------------- keys


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


def _token_recipient(label: str):
    """`pkcs11:LABEL`: the key LABEL on the PKCS#11 token that the environment
    configures (CRYPTOTENSORS_PKCS11_*), which wraps each file's data key."""
    from . import pkcs11

    try:
        provider = pkcs11.from_env()
    except ImportError as e:
        raise CliError(EXIT_KEY, str(e)) from None
    if provider is None:
        raise CliError(EXIT_KEY, f"-r pkcs11:{label}: set CRYPTOTENSORS_PKCS11_MODULE (and _TOKEN, _PIN) first")
    if not label:
        raise CliError(EXIT_USAGE, "-r pkcs11:LABEL needs the label of a key on the token")
    return provider.recipient(label)


def _recipients(sources: Sequence[str]) -> list:
    recipients: list = []
    for source in sources:
        if source.startswith("pkcs11:"):
            recipients.append(_token_recipient(source[len("pkcs11:") :]))
            continue
        if _vault_cli.is_spec(source):
            with _about(f"-r {source}"):
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


def _key_text(doc: dict) -> bytes:
    return (json.dumps(doc) + "\n").encode("utf-8")


def _write_new_file(path: Path, data: bytes, mode: int, force: bool) -> None:
    """Writes `data` to `path` atomically, created with `mode` (a secret is
    never readable by others, not even briefly). Without `force` an existing
    `path` is refused, atomically (link(2))."""
    if path.exists() and not force:
        raise CliError(EXIT_USAGE, f"{path} exists (use --force to replace it)")
    with _about(str(path)):
        try:
            _write_atomic(path, lambda fh: fh.write(data), mode, replace=force)
        except FileExistsError:
            raise CliError(EXIT_USAGE, f"{path} exists (use --force to replace it)") from None


def _write_atomic(path: Path, fill: Callable[[BinaryIO], object], mode: int, replace: bool) -> None:
    """Creates `path` with what `fill` writes, and `mode`: readers and a
    writer killed midway never leave a partial file under any name. On Linux
    the file is anonymous (O_TMPFILE) until complete, then linked in: at
    `path` itself when it must not `replace` (linkat fails if it exists), or
    at a fresh temporary name renamed over `path`. Elsewhere a named
    temporary `.NAME.RANDOM.tmp` is written and renamed (or linked) in."""
    fd, tmp = _open_anonymous(path.parent, mode), None
    if fd is None:
        tmp = path.parent / f".{path.name}.{secrets.token_hex(4)}.tmp"
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, mode)
    try:
        with os.fdopen(fd, "wb") as fh:
            fill(fh)
            fh.flush()
            os.fsync(fh.fileno())
            if tmp is None:
                if not replace:
                    _link_anonymous(fh.fileno(), path)
                    return
                tmp = path.parent / f".{path.name}.{secrets.token_hex(4)}.tmp"
                _link_anonymous(fh.fileno(), tmp)
        if replace:
            os.replace(tmp, path)
        else:
            os.link(tmp, path)
    finally:
        if tmp is not None:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(tmp)


def _open_anonymous(directory: Path, mode: int) -> Optional[int]:
    """An O_TMPFILE descriptor in `directory`, or None where the system or
    the file system has none (or /proc, to link it, is missing)."""
    flag = getattr(os, "O_TMPFILE", None)
    if flag is None or not os.path.isdir("/proc/self/fd"):
        return None
    try:
        return os.open(directory, flag | os.O_WRONLY | os.O_CLOEXEC, mode)
    except OSError:  # EOPNOTSUPP, EISDIR (old kernels), EINVAL: the named fallback says what else is wrong
        return None


def _link_anonymous(fd: int, path: Path) -> None:
    """Gives an O_TMPFILE file the name `path` (which must not exist):
    linkat(2) of /proc/self/fd/N with AT_SYMLINK_FOLLOW. os.link uses that
    flag only with a directory descriptor; without one it calls link(2),
    which links the /proc entry itself and fails (EXDEV)."""
    proc = os.open("/proc/self/fd", os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    try:
        os.link(str(fd), path, src_dir_fd=proc, follow_symlinks=True)
    finally:
        os.close(proc)


def _copy_file(src: Path, target: Path) -> None:
    """Copies a file with its mode and times (as shutil.copy2), atomically."""
    with open(src, "rb") as fh:
        _write_atomic(target, lambda out: shutil.copyfileobj(fh, out, 1 << 20), 0o600, replace=True)
    shutil.copystat(src, target)


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


# ---------------------------------------------------------------- input files


@dataclass
class _Job:
    """One input file: a safetensors file (with its header) or a file to copy."""

    path: Path
    rel: str  # path relative to the input directory (the file name for a file input)
    header: Optional[dict]  # cryptotensors.inspect() of a safetensors file, else None
    size: int  # bytes of tensor data, or of the file to copy

    @property
    def display(self) -> str:
        return str(self.path)


def _job(path: Path, rel: str) -> _Job:
    with _about(str(path)):
        if not rel or Path(rel).suffix == ".safetensors":
            header = inspect_file(path)
            return _Job(path, rel or path.name, header, sum(t["nbytes"] for t in header["tensors"]))
        return _Job(path, rel, None, path.stat().st_size)


def _refused(path: Path, why: str) -> CliError:
    return CliError(EXIT_UNSAFE_PATH, f"{path}: {why}; refused")


def _raise(exc: OSError) -> None:
    raise exc


def _walk(root: Path, follow_links: bool) -> Iterator[Tuple[Path, str]]:
    """The files of the directory `root` as (path to read, path relative to
    `root`), sorted, skipping version-control directories (a .git directory
    of a model holds its weights again, in plain text).

    What a directory holds is not trusted: a link to a file outside it (an
    ssh key, another model) would be copied or encrypted into an output that
    is then shipped, so a link must resolve to a regular file inside `root`
    (it is read, and written as a regular file), and without `follow_links`
    (in place: replacing a link would leave its target as it was) there may
    be none. Links to directories, and entries that are not regular files
    (FIFOs, sockets, devices), are refused too: skipping them would make an
    output that silently lacks what the input has."""
    top = root.resolve()
    for parent, dirs, files in os.walk(top, onerror=_raise):  # an unreadable directory is not skipped either
        dirs[:] = sorted(d for d in dirs if d not in (".git", ".hg"))
        for d in dirs:
            if os.path.islink(os.path.join(parent, d)):
                raise _refused(Path(parent) / d, "a link to a directory")
        for name in sorted(files):
            path = Path(parent) / name
            rel = path.relative_to(top).as_posix()
            real = path
            if path.is_symlink():
                if not follow_links:
                    raise _refused(path, "a link, which cannot be replaced in place")
                real = path.resolve()
                if not real.is_relative_to(top):
                    raise _refused(path, f"a link to {real}, outside {root}")
            try:
                mode = real.stat().st_mode
            except FileNotFoundError:
                raise CliError(EXIT_NOT_FOUND, f"{path}: a link to a missing file") from None
            if not stat.S_ISREG(mode):
                raise _refused(path, "not a regular file")
            yield real, rel


def _collect(src: Path, follow_links: bool = True) -> List[_Job]:
    """The jobs for a file or a model directory (header-only: fast, no key)."""
    if not src.exists():
        raise CliError(EXIT_NOT_FOUND, f"{src}: No such file or directory")
    if not src.is_dir() and not src.is_file():
        raise _refused(src, "not a regular file")
    jobs = [_job(p, rel) for p, rel in _walk(src, follow_links)] if src.is_dir() else [_job(src, "")]
    if not any(j.header is not None for j in jobs):
        raise CliError(EXIT_NOT_FOUND, f"{src}: no .safetensors file in it")
    return jobs


def _tensor_jobs(jobs: Sequence[_Job]) -> List[_Job]:
    return [j for j in jobs if j.header is not None]


def _spec_args(job: _Job, name: str, dtype: str, shape: Sequence[int]) -> Tuple[str, List[int]]:
    """TensorSpec's dtype name and shape for a header dtype and shape."""
    ctor = _CONSTRUCTOR_NAMES.get(dtype)
    shape = list(shape)
    if ctor is None:
        raise CliError(EXIT_FAILURE, f"{job.display}: tensor {name!r}: dtype {dtype} cannot be written yet")
    if dtype == "F4":  # TensorSpec counts float4_e2m1fn_x2 in pairs of values
        if not shape or shape[-1] % 2:
            raise CliError(EXIT_FAILURE, f"{job.display}: tensor {name!r}: F4 with an odd last dimension cannot be written yet")
        shape[-1] //= 2
    return ctor, shape


def _check_writable(jobs: Sequence[_Job]) -> None:
    """Fails before anything is written if a tensor could not be written back."""
    for job in _tensor_jobs(jobs):
        for t in job.header["tensors"]:
            _spec_args(job, t["name"], t["dtype"], t["shape"])


def _no_key(job: _Job) -> CliError:
    """No key given opens a file: the error names the kids that would."""
    kids = ", ".join(r["kid"] for r in job.header.get("recipients") or ())
    return CliError(EXIT_KEY, f"{job.display}: no key given opens it; it needs the key of one of these kids: {kids} (pass -k KEY.jwk)")


def _open(job: _Job, **load) -> safe_open:
    """Opens a file to read raw tensor bytes."""
    try:
        return safe_open(job.path, "np", **load)
    except KeyNotFoundError:
        raise _no_key(job) from None
    except (SafetensorError, OSError) as exc:
        raise _cli_error(job.display, exc) from None


def _each_tensor(f: safe_open, job: _Job, progress: _Progress) -> Iterator[Tuple[str, str, list, object]]:
    """Reads every tensor, in file order, as raw bytes into a numpy uint8 array:
    any dtype, no framework. Each segment is authenticated as it is read."""
    import numpy

    handle = f._handle
    for name in f.offset_keys():
        dtype, shape, nbytes, _, _ = handle.info(name)
        buf = numpy.empty(nbytes, numpy.uint8)
        with _about(f"{job.display}: tensor {name!r}"):
            handle.read_into(name, buf)
        progress.advance(nbytes)
        yield name, dtype, shape, buf


def _rewrite(job: _Job, target: Path, progress: _Progress, load: dict, save: dict) -> None:
    """Reads every tensor of a file (with `load` options) and writes them, with
    its metadata, to `target` (with `save` options), atomically."""
    with _open(job, **load) as f:
        metadata = f.metadata()
        tensors = list(_each_tensor(f, job, progress))
    specs = {}
    for name, dtype, shape, buf in tensors:  # `tensors` keeps the buffers alive
        ctor, spec_shape = _spec_args(job, name, dtype, shape)
        specs[name] = TensorSpec._of(ctor, spec_shape, buf, buf.ctypes.data)
    progress.set_phase("writing")
    with _about(f"writing {job.rel}"):
        serialize_file(specs, target, metadata, **save)


# ---------------------------------------------------------------- destinations


def _check_parent(path: Path) -> None:
    parent = path.parent
    if not parent.is_dir():
        raise CliError(EXIT_NOT_FOUND, f"{parent}: No such directory")


def _check_apart(src: Path, out: Path, hint: str) -> None:
    """Refuses an output that is, holds or lies inside the input (after
    links are resolved): writing it would replace the input, or put the
    output among the files being read (and a plaintext copy inside the
    encrypted model directory that is shipped)."""
    src_r, out_r = src.resolve(), out.resolve()
    if out_r == src_r or out_r in src_r.parents:
        raise CliError(EXIT_USAGE, f"{out}: the output would replace the input ({hint})")
    if src_r in out_r.parents:
        raise CliError(EXIT_USAGE, f"{out}: the output is inside the input {src}")


# A staging directory `.OUT.RANDOM.tmp` beside the output OUT.
_STAGING = re.compile(r"\.(?P<name>.+)\.[0-9a-f]{8}\.tmp")
# How long an unlocked staging directory must have been untouched to be removed.
_STALE_AFTER = 60.0


def _lock(directory: Path) -> int:
    """Takes the lock that tells other runs this staging directory is in use
    (held until the descriptor is closed, or the process dies). Best effort:
    where the file system has no flock, the age rule alone protects it."""
    fd = os.open(directory, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    with contextlib.suppress(OSError):
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    return fd


def _remove_stale_staging(out: Path) -> None:
    """Removes staging directories of `out` left by runs that were killed:
    only names of our exact pattern, only real directories (not links), only
    those whose lock is free (their run is gone) and untouched for a minute."""
    try:
        entries = list(os.scandir(out.parent))
    except OSError:
        return
    for entry in entries:
        m = _STAGING.fullmatch(entry.name)
        if not m or m.group("name") != out.name or not entry.is_dir(follow_symlinks=False):
            continue
        with contextlib.suppress(OSError):
            if time.time() - entry.stat(follow_symlinks=False).st_mtime < _STALE_AFTER:
                continue
            fd = os.open(entry.path, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC)
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                shutil.rmtree(entry.path)
            finally:
                os.close(fd)


@contextlib.contextmanager
def _destination(src: Path, out: Optional[Path], in_place: bool, force: bool) -> Iterator[Callable[[str], Path]]:
    """Yields where each input (by relative path) is written. A directory is
    built beside `out` (as `.OUT.RANDOM.tmp`, each file in it complete or
    absent) and moved into place only once complete; on failure it is
    removed, so no partial output is ever left. A run killed outright leaves
    the staging directory, which the next run to the same `out` removes.
    Single files are written atomically by the library."""
    if in_place:
        yield (lambda rel: src / rel) if src.is_dir() else (lambda rel: src)
        return
    assert out is not None
    _check_apart(src, out, "use --in-place")
    out_r = out.resolve()
    if src.is_file():
        target = out / src.name if out.is_dir() else out
        if target.exists() and not force:
            raise CliError(EXIT_USAGE, f"{target} exists (use --force to replace it)")
        _check_parent(target)
        yield lambda rel: target
        return
    if out.exists() and not out.is_dir():
        raise CliError(EXIT_USAGE, f"{out} exists and is not a directory")
    if out.is_dir() and any(out.iterdir()) and not force:
        raise CliError(EXIT_USAGE, f"{out} exists and is not empty (use --force to replace it)")
    _check_parent(out_r)
    _remove_stale_staging(out_r)
    staging = out_r.parent / f".{out_r.name}.{secrets.token_hex(4)}.tmp"
    with _about(str(out)):
        staging.mkdir()
        lock = _lock(staging)

    def target(rel: str) -> Path:
        path = staging / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        return path

    try:
        yield target
        with _about(str(out)):
            _publish(staging, out_r)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    finally:
        os.close(lock)


def _publish(staging: Path, out: Path) -> None:
    """Moves a complete directory into place, replacing `out` if it exists
    (killed between the two renames, the old output is left as `.OUT.RANDOM.old`)."""
    if not out.exists():
        os.rename(staging, out)
        return
    old = out.parent / f".{out.name}.{secrets.token_hex(4)}.old"
    os.rename(out, old)
    os.rename(staging, out)
    shutil.rmtree(old, ignore_errors=True)


Convert = Callable[[_Job, Path, _Progress], None]


def _transform(args: argparse.Namespace, jobs: List[_Job], convert: Convert, verb: str, done: str = "") -> int:
    """Runs `convert` on every safetensors file and copies the other files of a
    model directory unchanged (names and index.json are kept); `done` is the
    summary's past tense of `verb` (default: verb + "ed")."""
    src = Path(args.input)
    with _destination(src, args.output, args.in_place, args.force) as target, _Progress(args, verb, jobs) as progress:
        for job in progress.files(jobs):
            if job.header is not None:
                convert(job, target(job.rel), progress)
            elif not args.in_place:
                with _about(f"copying {job.rel}"):
                    _copy_file(job.path, target(job.rel))
    n = len(_tensor_jobs(jobs))
    _info(args, f"{done or verb + 'ed'} {_plural(n, 'file')} ({_human(sum(j.size for j in jobs))}) -> {src if args.in_place else args.output}")
    return EXIT_OK


# ---------------------------------------------------------------- encrypt, decrypt


def _selected(job: _Job, pattern: Optional[re.Pattern]) -> List[str]:
    names = [t["name"] for t in job.header["tensors"]]
    return names if pattern is None else [n for n in names if pattern.search(n)]


def _check_encryptable(args: argparse.Namespace, jobs: Sequence[_Job]) -> Dict[str, List[str]]:
    """The tensors to encrypt in each file, refusing encrypted inputs and a
    --tensors pattern that selects nothing anywhere."""
    for job in _tensor_jobs(jobs):
        if job.header.get("algorithm"):
            raise CliError(EXIT_USAGE, f"{job.display}: already encrypted (decrypt it first)")
    selection = {job.rel: _selected(job, args.tensors) for job in _tensor_jobs(jobs)}
    if args.tensors is not None and not any(selection.values()):
        raise CliError(EXIT_USAGE, f"--tensors {args.tensors.pattern!r} matches no tensor")
    for rel, names in selection.items():
        if args.tensors is not None and not names:
            _warn(f"{rel}: no tensor matches --tensors; it is written unencrypted")
    for job in jobs:
        if job.header is None and job.path.suffix in _PLAINTEXT_WEIGHTS:
            _warn(f"{job.display}: not a .safetensors file; copied unencrypted")
    return selection


def cmd_encrypt(args: argparse.Namespace) -> int:
    recipients = _recipients(args.recipient)
    signer = _signing_key(args.sign_key) if args.sign_key else None
    policy = _read_policy(args.policy) if args.policy else None
    jobs = _collect(Path(args.input), follow_links=not args.in_place)
    selection = _check_encryptable(args, jobs)
    _check_writable(jobs)

    def convert(job: _Job, target: Path, progress: _Progress) -> None:
        names = selection[job.rel]
        save: dict = {"sign_with": signer}
        if names:
            chosen = None if args.tensors is None else names
            save.update(encrypt_for=recipients, encrypted_tensors=chosen, algorithm=args.algorithm, policy=policy)
        if names or signer:
            save["segment_size"] = args.segment_size
        _rewrite(job, target, progress, load={}, save=save)

    return _transform(args, jobs, convert, "encrypt")


def _load_options(args: argparse.Namespace) -> dict:
    """safe_open's keys, trusted signers and policy claims from -k, --trusted-signer and --claims."""
    options = {
        "keys": _load_keys(args.key),
        "trusted_signers": _load_keys(args.trusted_signer),
        "policy_input": _read_claims(args.claims),
    }
    # A malformed CRYPTOTENSORS_KEYS or _TRUSTED_SIGNERS (KeyConfigError, exit
    # 4) fails here, as itself: at the first open it would read as "no key".
    _keys.keyring_json(options["keys"])
    _keys.trusted_json(options["trusted_signers"])
    return options


def cmd_decrypt(args: argparse.Namespace) -> int:
    load = _load_options(args)
    jobs = _collect(Path(args.input), follow_links=not args.in_place)
    _check_writable(jobs)
    os.umask(os.umask(0o077) | 0o077)  # plaintext weights are the secret: outputs readable by their owner only

    def convert(job: _Job, target: Path, progress: _Progress) -> None:
        _rewrite(job, target, progress, load=load, save={})

    return _transform(args, jobs, convert, "decrypt")


# ---------------------------------------------------------------- migrate


def _legacy_keys(sources: Sequence[str]) -> List[dict]:
    """The old package's keys in every file given, as one list."""
    keys: List[dict] = []
    for source in sources:
        try:
            keys += _legacy_key_list(_read_arg(source).decode("utf-8"))
        except (KeyConfigError, UnicodeDecodeError, KeyError):
            raise CliError(EXIT_KEY, f"{source}: not a JWK, a list of JWKs or {{\"keys\": [...]}}") from None
    return keys


def _is_legacy(job: _Job) -> bool:
    return any(k in (job.header.get("metadata") or {}) for k in ("__encryption__", "__crypto_keys__"))


def cmd_migrate(args: argparse.Namespace) -> int:
    legacy = _legacy_keys([args.from_keys])
    if not args.trusted_signer and not args.no_verify:
        raise CliError(EXIT_USAGE, "name the old signer's public key with --trusted-signer LEGACY_PUB.json, "
                                   "or pass --no-verify to skip the old header signature")
    trusted = _legacy_keys(args.trusted_signer) if args.trusted_signer else None
    recipients = _recipients(args.recipient)
    signer = _signing_key(args.sign_key) if args.sign_key else None
    jobs = _collect(Path(args.input))
    for job in _tensor_jobs(jobs):
        if not _is_legacy(job):
            raise CliError(EXIT_USAGE, f"{job.display}: not a cryptotensors 0.2.3 file (use encrypt for plain files)")
    if args.no_verify:
        _warn("--no-verify: the old header signatures are NOT checked; the encrypted tensors are still authenticated")

    def convert(job: _Job, target: Path, progress: _Progress) -> None:
        progress.set_phase("re-encrypting")
        with _about(job.display):
            report = migrate(job.path, target, legacy_keys=legacy, encrypt_for=recipients, trusted_signers=trusted,
                             verify_signature=not args.no_verify, sign_with=signer, algorithm=args.algorithm,
                             segment_size=args.segment_size, encrypt_all=args.encrypt_all)
        progress.advance(job.size)
        plain = report["plain_tensors"]
        if plain:
            carried = "now encrypted" if args.encrypt_all else "still plain, now covered by the new file's digests"
            _warn(f"{job.rel}: {_plural(len(plain), 'tensor')} were stored in the clear and authenticated by nothing "
                  f"in the old file (its signature covers the header only), so they are carried as read ({carried}): "
                  + ", ".join(plain))
        if report["signature_verified"]:
            _warn(f"{job.rel}: the old signature was verified, but it covered the header only")
        if report["policy_dropped"]:
            _warn(f"{job.rel}: its __policy__ (old Rego) was not carried over; set a policy with rewrap --policy")

    return _transform(args, jobs, convert, "migrate", done="migrated")


# ---------------------------------------------------------------- rewrap


# rewrap() options that change the encryption envelope, by the flag that sets them.
_ENVELOPE_CHANGES = (("add", "--add-recipient"), ("remove", "--remove-recipient"), ("policy", "--policy"), ("remove_policy", "--remove-policy"))


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
    for jwk in changes["recipients"] or ():
        if _vault_cli.kid_of(jwk) not in kept:
            raise CliError(EXIT_USAGE, f"{job.display}: -r: {_vault_cli.kid_of(jwk)} is not a recipient that stays "
                                       "(to give it access, use --add-recipient)")
    return plan


def _rotate_file(operation: Callable, job: _Job, target: Path, load: dict, plan: dict) -> None:
    try:
        operation(job.path, output=target, **load, **plan)
    except KeyNotFoundError:
        raise _no_key(job) from None
    except (SafetensorError, OSError) as exc:
        code, message = _classify(exc)
        if isinstance(exc, InvalidArgumentError):  # what the plan did not foresee: still the arguments
            code, message = EXIT_USAGE, message.removeprefix(_CORE_ARGUMENT_ERROR)
        raise CliError(code, f"{job.display}: {message}") from None


def _rotation_changes(args: argparse.Namespace) -> dict:
    return {
        "add": _recipients(args.add_recipient or ()) or None,
        "remove": args.remove_recipient or [],
        "sign_with": _signing_key(args.sign_key) if args.sign_key else None,
        "drop_signature": args.drop_signature,
        "policy": _read_policy(args.policy) if args.policy else None,
        "remove_policy": args.remove_policy,
    }


def _rotate(args: argparse.Namespace, operation: Callable, plan_of: Callable[[_Job, bool], Optional[dict]]) -> int:
    """rewrap and rekey: each encrypted or signed file of IN, in place or into -o."""
    verb = operation.__name__
    load = {"keys": _load_keys(args.key), "trusted_signers": _load_keys(args.trusted_signer),
            "policy_input": _read_claims(args.claims)}
    src = Path(args.input)
    if args.output is not None:
        _check_apart(src, args.output, f"leave out -o to {verb} in place")
    jobs = _collect(src, follow_links=args.output is not None)
    plans = {job.rel: plan_of(job, not src.is_dir()) for job in _tensor_jobs(jobs)}
    if not any(plans.values()):
        what = "encrypted" if operation is rekey else "encrypted or signed"
        raise CliError(EXIT_USAGE, f"{src}: no file in it is {what}: nothing to {verb}")
    args.in_place = args.output is None  # without -o, each file is replaced (atomically, by the library)

    def convert(job: _Job, target: Path, progress: _Progress) -> None:
        plan = plans[job.rel]
        if plan is not None:
            _rotate_file(operation, job, target, load, plan)
        elif not args.in_place:
            with _about(f"copying {job.rel}"):
                _copy_file(job.path, target)

    return _transform(args, jobs, convert, verb, f"{verb}ped" if verb == "rewrap" else f"{verb}ed")


def cmd_rewrap(args: argparse.Namespace) -> int:
    changes = _rotation_changes(args)
    changes["transit_latest"] = args.transit_latest
    if not any(changes.values()):
        raise CliError(EXIT_USAGE, "nothing to change: pass --add-recipient, --remove-recipient, --sign-key, "
                                   "--drop-signature, --policy, --remove-policy or --transit-latest")
    return _rotate(args, _vault_cli.rewrap, lambda job, single: _rewrap_plan(job, changes, single))


def cmd_rekey(args: argparse.Namespace) -> int:
    changes = _rotation_changes(args)
    recipients = _recipients(args.recipient or ())
    changes["recipients"] = recipients or None
    keyring = json.loads(_keys.keyring_json(_load_keys(args.key)) or "[]")
    return _rotate(args, rekey, lambda job, single: _rekey_plan(job, changes, single, keyring))


# ---------------------------------------------------------------- inspect


def _shape(shape: Sequence[int]) -> str:
    return "[" + ", ".join(str(d) for d in shape) + "]"


def _table(header: Sequence[str], rows: Sequence[Sequence[str]], indent: str = "  ") -> List[str]:
    widths = [max(len(r[i]) for r in [header, *rows]) for i in range(len(header))]
    return [indent + "  ".join(c.ljust(w) for c, w in zip(row, widths)).rstrip() for row in [header, *rows]]


def _facts(h: dict) -> List[Tuple[str, str]]:
    """The file-level facts of an inspect() result, as (label, text)."""
    tensors = h["tensors"]
    facts = [("tensors", f"{len(tensors)}, {sum(t['encrypted'] for t in tensors)} encrypted")]
    facts.append(("algorithm", h.get("algorithm") or "none (not encrypted)"))
    if h.get("segment_size"):
        facts.append(("segment size", f"{_human(h['segment_size'])} ({h['segment_size']} bytes)"))
    for r in h.get("recipients") or ():
        facts.append(("recipient", f"{r['kid']} ({r['alg']})"))
    signer = h.get("signer")
    facts.append(("signer", f"{signer} (not verified: use `{PROG} verify`)" if signer else "none (not signed)"))
    for k, v in sorted((h.get("metadata") or {}).items()):
        facts.append(("metadata", f"{k}={v}"))
    facts.append(("policy", "Rego, checked on every load:" if h.get("policy") else "none"))
    return facts


def _render(job: _Job) -> str:
    h = job.header
    rows = [(_shown(t["name"]), _shown(t["dtype"]), _shape(t["shape"]), "yes" if t["encrypted"] else "no") for t in h["tensors"]]
    lines = [_shown(job.display), *_table(("tensor", "dtype", "shape", "encrypted"), rows)]
    facts = [(label, _shown(text)) for label, text in _facts(h)]
    width = max(len(label) for label, _ in facts)
    lines += [f"  {label.ljust(width)}  {text}" for label, text in facts]
    lines += [("      " + _shown(line, keep="\t")).rstrip() for line in (h.get("policy") or "").splitlines()]
    return "\n".join(lines)


def cmd_inspect(args: argparse.Namespace) -> int:
    src = Path(args.input)
    jobs = _tensor_jobs(_collect(src))
    if args.json:
        doc = jobs[0].header if src.is_file() else {"files": {j.rel: j.header for j in jobs}}
        print(json.dumps(doc, indent=2, ensure_ascii=True))  # \u-escapes controls and bidi overrides too
    else:
        print("\n\n".join(_render(j) for j in jobs))
    return EXIT_OK


# ---------------------------------------------------------------- verify


def _signature_status(signer: Optional[str], trusted: bool) -> str:
    if signer is None:
        return "not signed"
    if trusted:
        return f"signature valid, by trusted signer {signer}"
    return f"signature intact, by {signer} (not checked against a trusted key: pass --trusted-signer)"


def _verify_file(job: _Job, load: dict, trusted: bool, progress: _Progress) -> str:
    encrypted = sum(t["encrypted"] for t in job.header["tensors"])
    policy = "; access policy allows this load" if job.header.get("policy") else ""
    try:
        f = _open(job, **load)
    except CliError as e:
        if e.code != EXIT_KEY or load["keys"]:
            raise
        # Readers check the layout, the trailer digest and the signature before
        # they look for a key (FORMAT.md 4.4): a missing key means those passed.
        status = _signature_status(job.header.get("signer"), trusted)
        if policy and not trusted:  # it runs only once the file is authenticated (FORMAT.md 4.4)
            policy = "; access policy not checked"
        return f"{job.display}: {status}{policy}; {_plural(encrypted, 'encrypted tensor')} not checked (no key: pass -k KEY.jwk)"
    with f:
        signer = f.describe().get("signer")
        for _ in _each_tensor(f, job, progress):
            pass
    checked = "every segment authenticated" if job.header.get("segment_size") else "plain safetensors file"
    return f"{job.display}: OK, {_signature_status(signer, trusted)}{policy}; {_plural(len(job.header['tensors']), 'tensor')} read, {checked}"


def cmd_verify(args: argparse.Namespace) -> int:
    load = _load_options(args)
    trusted = _keys.trusted_json(load["trusted_signers"]) is not None  # the call's, or the environment's
    jobs = _tensor_jobs(_collect(Path(args.input)))
    with _Progress(args, "verify", jobs) as progress:
        for job in progress.files(jobs):
            line = _verify_file(job, load, trusted, progress)
            if not args.quiet:
                progress.println(line)
    return EXIT_OK


# ---------------------------------------------------------------- demo


class _DemoPaths:
    """Where the demo puts things, under its working directory."""

    def __init__(self, root: Path):
        self.root = root
        self.model, self.encrypted = root / "model", root / "model-encrypted"
        self.keys = root / "keys"
        self.customer, self.customer_pub = self.keys / "customer.jwk", self.keys / "customer.pub.jwk"
        self.publisher, self.publisher_pub = self.keys / "publisher.jwk", self.keys / "publisher.pub.jwk"


class _Steps:
    """Numbered demo steps, each printed with its timing and notes."""

    def __init__(self, total: int):
        self.total, self.n = total, 0

    @contextlib.contextmanager
    def step(self, title: str) -> Iterator[Callable[[str], None]]:
        self.n += 1
        notes: List[str] = []
        start = time.perf_counter()
        yield notes.append
        print(f"[{self.n}/{self.total}] {title}  ({time.perf_counter() - start:.2f} s)")
        for note in notes:
            print(f"      {note}")
        sys.stdout.flush()


def _run_cli(argv: Sequence[object], root: Path) -> str:
    """Runs a command of this CLI in-process, as a user would type it; returns it for display."""
    words = [str(a) for a in argv]
    code = main([*words, "-q"])
    shown = " ".join(str(Path(w).relative_to(root)) if w.startswith(str(root)) else w for w in words)
    if code != EXIT_OK:
        raise CliError(code, f"the demo stopped at: {PROG} {shown}")
    return f"$ {PROG} {shown}"


@contextlib.contextmanager
def _environ(name: str, value: str) -> Iterator[None]:
    old = os.environ.get(name)
    os.environ[name] = value
    try:
        yield
    finally:
        if old is None:
            del os.environ[name]
        else:
            os.environ[name] = old


def _shards(directory: Path) -> List[Path]:
    """The shards of a model directory, from its index (or the single file)."""
    index = directory / "model.safetensors.index.json"
    if not index.exists():
        return [directory / "model.safetensors"]
    names = json.loads(index.read_text(encoding="utf-8"))["weight_map"].values()
    return [directory / n for n in sorted(set(names))]


class _TransformersModel:
    """A tiny Llama built from a config with transformers; compared by its logits."""

    def __init__(self):
        start = time.perf_counter()
        os.environ.setdefault("HF_HUB_OFFLINE", "1")  # nothing here needs the network; make sure of it
        import torch
        import transformers
        from transformers import LlamaConfig, LlamaForCausalLM

        transformers.utils.logging.set_verbosity_error()
        transformers.utils.logging.disable_progress_bar()
        self.torch, self.cls = torch, LlamaForCausalLM
        self.config = LlamaConfig(
            hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4,
            num_key_value_heads=2, vocab_size=256, max_position_embeddings=128,
        )
        self.label = (
            f"a tiny Llama with transformers {transformers.__version__} (hidden 64, 2 layers, vocab 256); "
            f"importing torch and transformers took {time.perf_counter() - start:.1f} s"
        )
        self.input_ids = torch.tensor([[1, 17, 42, 99, 128, 200, 255, 3]])
        self.original = self.reloaded = None

    def save(self, directory: Path) -> None:
        self.torch.manual_seed(0)
        self.original = self.cls(self.config).eval()
        self.original.save_pretrained(directory, max_shard_size="200KB")

    def load(self, directory: Path, trusted) -> str:
        from .torch import load_file

        state = {}
        for shard in _shards(directory):
            state.update(load_file(shard, trusted_signers=trusted))
        self.torch.manual_seed(1)  # a different random init: the weights must come from the files
        self.reloaded = self.cls(self.config).eval()
        self.reloaded.load_state_dict(state, strict=True)
        return f"{len(state)} tensors into a fresh LlamaForCausalLM (load_state_dict, strict)"

    def compare(self) -> Tuple[bool, str]:
        with self.torch.no_grad():
            a = self.original(self.input_ids).logits
            b = self.reloaded(self.input_ids).logits
        same = bool(self.torch.equal(a, b))
        return same, f"logits {list(a.shape)} on fixed input ids, original vs decrypted: max |difference| = {(a - b).abs().max().item()}"


class _StateDictModel:
    """A tiny Llama-shaped state dict in numpy, sharded as save_pretrained would; compared tensor by tensor."""

    label = "a tiny Llama-shaped state dict with numpy (hidden 64, 2 layers, vocab 256)"

    def __init__(self):
        import numpy

        self.np = numpy
        rng = numpy.random.default_rng(0)
        shapes = {"model.embed_tokens.weight": (256, 64), "model.norm.weight": (64,), "lm_head.weight": (256, 64)}
        for i in range(2):
            p = f"model.layers.{i}."
            shapes.update({
                p + "self_attn.q_proj.weight": (64, 64), p + "self_attn.k_proj.weight": (32, 64),
                p + "self_attn.v_proj.weight": (32, 64), p + "self_attn.o_proj.weight": (64, 64),
                p + "mlp.gate_proj.weight": (128, 64), p + "mlp.up_proj.weight": (128, 64),
                p + "mlp.down_proj.weight": (64, 128), p + "input_layernorm.weight": (64,),
                p + "post_attention_layernorm.weight": (64,),
            })
        self.original = {k: rng.standard_normal(s, dtype=numpy.float32) for k, s in shapes.items()}
        self.reloaded: dict = {}

    def save(self, directory: Path) -> None:
        from .numpy import save_file

        directory.mkdir()
        names = sorted(self.original)
        groups = [names[: len(names) // 2], names[len(names) // 2:]]
        weight_map = {}
        for i, group in enumerate(groups, 1):
            shard = f"model-{i:05d}-of-{len(groups):05d}.safetensors"
            save_file({n: self.original[n] for n in group}, directory / shard, metadata={"format": "pt"})
            weight_map.update(dict.fromkeys(group, shard))
        total = sum(a.nbytes for a in self.original.values())
        index = {"metadata": {"total_size": total}, "weight_map": weight_map}
        (directory / "model.safetensors.index.json").write_text(json.dumps(index, indent=2), encoding="utf-8")
        config = {"model_type": "llama", "hidden_size": 64, "num_hidden_layers": 2, "vocab_size": 256}
        (directory / "config.json").write_text(json.dumps(config, indent=2), encoding="utf-8")

    def load(self, directory: Path, trusted) -> str:
        from .numpy import load_file

        for shard in _shards(directory):
            self.reloaded.update(load_file(shard, trusted_signers=trusted))
        return f"{len(self.reloaded)} numpy arrays"

    def compare(self) -> Tuple[bool, str]:
        same = self.original.keys() == self.reloaded.keys() and all(
            self.np.array_equal(v, self.reloaded[k]) and v.dtype == self.reloaded[k].dtype for k, v in self.original.items()
        )
        return same, f"{len(self.original)} tensors compared, original vs decrypted: every byte equal = {same}"


def _demo_model(no_transformers: bool):
    if not no_transformers:
        try:
            return _TransformersModel()
        except ImportError:
            pass
    return _StateDictModel()


@contextlib.contextmanager
def _demo_dir(keep: Optional[Path]) -> Iterator[Path]:
    if keep is None:
        import tempfile

        with tempfile.TemporaryDirectory(prefix="cryptotensors-demo-") as tmp:
            yield Path(tmp)
        return
    if keep.exists() and (not keep.is_dir() or any(keep.iterdir())):
        raise CliError(EXIT_USAGE, f"{keep} exists and is not an empty directory")
    with _about(str(keep)):
        keep.mkdir(parents=True, exist_ok=True)
    yield keep.resolve()


def _describe_encrypted(directory: Path) -> List[str]:
    headers = [inspect_file(p) for p in _shards(directory)]
    tensors = [t for h in headers for t in h["tensors"]]
    first = headers[0]
    return [
        f"{len(headers)} shards, {len(tensors)} tensors, {sum(t['encrypted'] for t in tensors)} encrypted "
        f"({first['algorithm']}, {_human(first['segment_size'])} segments); names, dtypes and shapes stay readable",
        f"recipient {first['recipients'][0]['kid']}, signer {first['signer']}",
    ]


def _stock_safetensors_refuses(shard: Path) -> Optional[str]:
    try:
        import safetensors
    except ImportError:
        return None
    try:
        with safetensors.safe_open(str(shard), "np") as f:
            f.keys()
    except Exception as exc:  # whatever stock safetensors raises, it is the point shown
        return f"stock safetensors {safetensors.__version__} refuses it: {str(exc).splitlines()[0]}"
    return f"stock safetensors {safetensors.__version__} opened it (unexpected)"


def cmd_demo(args: argparse.Namespace) -> int:
    start = time.perf_counter()
    steps = _Steps(total=7)
    with _demo_dir(args.dir) as root:
        p = _DemoPaths(root)
        print(f"{PROG} demo: a tiny model is encrypted, signed, verified and loaded back; no network.")
        print(f"Working in {root}\n")
        with steps.step("Build a model") as note:
            model = _demo_model(args.no_transformers)
            model.save(p.model)
            files = sorted(f.name for f in p.model.iterdir())
            note(f"{model.label}")
            note(f"model/: {', '.join(files)}")
        with steps.step("Generate keys: the customer's X25519 key pair, the publisher's Ed25519 signing key") as note:
            p.keys.mkdir()
            for kind, private, public in (("x25519", p.customer, p.customer_pub), ("ed25519", p.publisher, p.publisher_pub)):
                note(_run_cli(["keygen", "--type", kind, "-o", private], root))
                note(_run_cli(["keygen", "-y", private, "-o", public], root))
        with steps.step("Encrypt the model for the customer and sign it as the publisher") as note:
            note(_run_cli(["encrypt", p.model, "-o", p.encrypted, "-r", p.customer_pub, "--sign-key", p.publisher], root))
            note("config and index.json are copied unchanged; each shard keeps its name")
        with steps.step("Inspect it, with no key") as note:
            note(f"$ {PROG} inspect model-encrypted")
            for line in _describe_encrypted(p.encrypted):
                note(line)
            refusal = _stock_safetensors_refuses(_shards(p.encrypted)[0])
            if refusal:
                note(refusal)
        with steps.step("Verify the signature against the trusted publisher key, and every segment") as note:
            note(_run_cli(["verify", p.encrypted, "--trusted-signer", p.publisher_pub, "-k", p.customer], root))
            note("signature valid, by the trusted publisher; every segment authenticated")
        with steps.step("Load it back with transparent decryption") as note:
            trusted = json.loads(p.publisher_pub.read_text(encoding="utf-8"))
            with _environ(_keys.KEYS_ENV, str(p.customer)):
                note(f"{_keys.KEYS_ENV}=keys/customer.jwk; no keys= argument in the loading code")
                note(model.load(p.encrypted, trusted))
        with steps.step("Compare with the original") as note:
            same, detail = model.compare()
            note(detail)
        if not same:
            raise CliError(EXIT_FAILURE, "the decrypted model differs from the original")
        print(f"\nIdentical: the decrypted model is the original, bit for bit. Total {time.perf_counter() - start:.2f} s.")
        print(f"Outputs kept in {root}" if args.dir else "(Outputs deleted; pass --dir DIR to keep them.)")
    print(_NEXT_STEPS)
    return EXIT_OK


_NEXT_STEPS = f"""
Next, on your own model (a directory from save_pretrained, or one .safetensors file):
  {PROG} keygen --type x25519 -o customer.jwk              # the customer keeps this secret
  {PROG} keygen -y customer.jwk -o customer.pub.jwk        # and sends you this
  {PROG} keygen --type ed25519 -o publisher.jwk            # your signing key
  {PROG} keygen -y publisher.jwk -o publisher.pub.jwk      # published, for verification
  {PROG} encrypt ./my-model -o ./my-model-encrypted -r customer.pub.jwk --sign-key publisher.jwk
  {PROG} inspect ./my-model-encrypted
  {PROG} verify ./my-model-encrypted --trusted-signer publisher.pub.jwk -k customer.jwk
  CRYPTOTENSORS_KEYS=customer.jwk python your_loader.py    # cryptotensors' safe_open/load_file decrypt
  CRYPTOTENSORS_PATCH=1 CRYPTOTENSORS_KEYS=customer.jwk python serve.py   # transformers/accelerate, unchanged
  CRYPTOTENSORS_KEYS=customer.jwk vllm serve ./my-model-encrypted         # vLLM, through the plugin"""


# ---------------------------------------------------------------- arguments


def _segment_size(text: str) -> int:
    m = re.fullmatch(r"\s*(\d+)\s*([a-zA-Z]*)\s*", text)
    unit = _UNITS.get(m.group(2).lower()) if m else None
    if unit is None:
        raise argparse.ArgumentTypeError(f"{text!r} is not a size (e.g. 1048576, 64K, 1M)")
    n = int(m.group(1)) * unit
    if n & (n - 1) or not _MIN_SEGMENT <= n <= _MAX_SEGMENT:
        raise argparse.ArgumentTypeError(f"{text!r}: a segment size is a power of two from 4K to 1G")
    return n


def _regex(text: str) -> re.Pattern:
    try:
        return re.compile(text)
    except re.error as e:
        raise argparse.ArgumentTypeError(f"{text!r} is not a regular expression: {e}") from None


def _exit_epilog() -> str:
    return "exit codes:\n" + "\n".join(f"  {code}  {meaning}" for code, meaning in EXIT_CODES.items())


def _output_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("input", metavar="IN", help="a .safetensors file or a model directory")
    where = p.add_mutually_exclusive_group(required=True)
    where.add_argument("-o", "--output", metavar="OUT", type=Path, help="output file or directory")
    where.add_argument("--in-place", action="store_true", help="replace each input file, atomically")
    p.add_argument("--force", action="store_true", help="replace an existing output")


def _key_args(p: argparse.ArgumentParser, key_help: str) -> None:
    p.add_argument("-k", "--key", action="append", metavar="KEY.jwk", help=key_help)
    p.add_argument("--trusted-signer", action="append", metavar="PUB.jwk",
                   help="the file must be signed by this public Ed25519 or P-256 key (repeatable)")


def _policy_arg(p) -> None:
    p.add_argument("--policy", metavar="P.rego",
                   help="set this access policy, checked on every load: a Rego module in `package cryptotensors` "
                        "that defines allow (and a reason); a file that is not a valid policy is a usage error (exit 2)")


def _claims_arg(p: argparse.ArgumentParser) -> None:
    p.add_argument("--claims", metavar="CLAIMS.json",
                   help="claims for the files' access policy, a JSON object (e.g. TEE attestation results; \"-\": stdin)")


_REWRAP_EXAMPLES = f"""examples:
  replace a key-encryption key, re-signing: from the new file on, only the new key unwraps the data
  key; this does NOT revoke the old one (it may still hold the data key, or the old header): use rekey
    {PROG} rewrap ENC_DIR -k old.jwk --add-recipient new.pub.jwk --remove-recipient OLD_KID --sign-key publisher.jwk
  set an access policy, in a copy; remove it, in place (the files were not signed):
    {PROG} rewrap ENC_DIR -o ENC_DIR2 -k customer.jwk --policy tee_required.rego
    {PROG} rewrap ENC_DIR2 -k customer.jwk --remove-policy"""

_REKEY_EXAMPLES = f"""examples:
  revoke a recipient: a new data key for the others, every tensor re-encrypted, re-signed
  (copies of the old files, and weights already loaded, are not revoked):
    {PROG} rekey ENC_DIR -k customer.jwk -r partner.pub.jwk --remove-recipient OLD_KID --sign-key publisher.jwk
  a new data key for the same recipients, into a copy (the files were not signed):
    {PROG} rekey ENC_DIR -o ENC_DIR2 -k customer.jwk"""


def _rotation_args(p: argparse.ArgumentParser, verb: str) -> None:
    """The arguments rewrap and rekey share."""
    p.add_argument("input", metavar="IN", help="a .safetensors file or a model directory")
    p.add_argument("-o", "--output", metavar="OUT", type=Path,
                   help="output file or directory (default: replace each input file, atomically)")
    p.add_argument("--force", action="store_true", help="replace an existing output")
    _key_args(p, "a key that opens the files now (repeatable; CRYPTOTENSORS_KEYS is also used)")
    _claims_arg(p)
    p.add_argument("--add-recipient", action="append", metavar="R.jwk",
                   help="give this key access: a public X25519 JWK or an oct JWK (repeatable)")
    p.add_argument("--remove-recipient", action="append", metavar="KID",
                   help="the new files are not wrapped for the recipient with this kid (see `inspect`; repeatable)")
    sign = p.add_mutually_exclusive_group()
    sign.add_argument("--sign-key", metavar="SK.jwk",
                      help="re-sign with this private Ed25519 or P-256 JWK (a signed file needs this or --drop-signature)")
    sign.add_argument("--drop-signature", action="store_true", help="remove the signature")
    policy = p.add_mutually_exclusive_group()
    _policy_arg(policy)
    policy.add_argument("--remove-policy", action="store_true", help="remove the access policy")


_MIGRATE_EXAMPLES = f"""examples:
  convert a model directory protected with cryptotensors 0.2.3, checking its old signature:
    {PROG} migrate OLD_DIR -o NEW_DIR --from-keys legacy_keys.json --trusted-signer legacy_pub.json -r customer.pub.jwk --sign-key publisher.jwk"""


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
                        "on the token set by CRYPTOTENSORS_PKCS11_*, or vault:MOUNT/KEY for a Vault/OpenBao Transit key "
                        "on the server set by VAULT_ADDR (repeatable)")
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
    p.add_argument("--transit-latest", action="store_true",
                   help="move every Vault/OpenBao Transit stanza to its key's latest version (Transit rewrap)")

    p = command("rekey", cmd_rekey, "re-encrypt under a new data key, keeping recipients (less --remove-recipient, "
                "plus --add-recipient): revokes the old data key for the new files; not copies of the old "
                "files, nor weights already loaded", examples=_REKEY_EXAMPLES)
    _rotation_args(p, "rekey")
    p.add_argument("-r", "--recipient", action="append", metavar="R.jwk",
                   help="the key of a recipient that stays: a public X25519 JWK, an oct JWK, or vault:MOUNT/KEY (repeatable); "
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
