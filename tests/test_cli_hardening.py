"""The command line neither leaks nor lies: links out of a model directory,
outputs inside inputs, hostile text in headers, malformed key variables and
files left behind by killed writers."""

import contextlib
import hashlib
import json
import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import numpy as np
import pytest

import cryptotensors
from cryptotensors import _keys, cli
from cryptotensors.numpy import load_file, save_file

BIN = Path(sys.executable).parent / "cryptotensors"
SECRET = "PRIVATE-KEY-MATERIAL-4f1d2c"


def run(*args, env=None, timeout=300):
    base = {k: v for k, v in os.environ.items() if not k.startswith(("CRYPTOTENSORS_", "HF_HUB_DISABLE"))}
    base["CRYPTOTENSORS_CONFIG_DIR"] = "/nonexistent-cryptotensors-config"
    base.update(env or {})
    return subprocess.run([str(BIN), *map(str, args)], capture_output=True, text=True, env=base, timeout=timeout)


def fails(result, code, *fragments):
    """Failed with `code`: one line on stderr, naming each fragment, no traceback."""
    assert result.returncode == code, (result.returncode, result.stdout, result.stderr)
    lines = result.stderr.splitlines()
    assert len(lines) == 1 and lines[0].startswith(f"{cli.PROG}: error: "), result.stderr
    for fragment in fragments:
        assert fragment in lines[0], lines[0]
    return lines[0]


@pytest.fixture()
def keys(tmp_path):
    d = tmp_path / "keys"
    d.mkdir()
    for name, kind in (("customer", "x25519"), ("other", "x25519"), ("publisher", "ed25519")):
        assert run("keygen", "--type", kind, "-o", d / f"{name}.jwk").returncode == 0
        assert run("keygen", "-y", d / f"{name}.jwk", "-o", d / f"{name}.pub.jwk").returncode == 0
    return d


@pytest.fixture()
def model(tmp_path):
    d = tmp_path / "model"
    d.mkdir()
    save_file({"w": np.arange(16, dtype=np.float32)}, d / "model.safetensors")
    (d / "config.json").write_text('{"model_type": "tiny"}')
    return d


@pytest.fixture()
def outside(tmp_path):
    """Files outside the model directory: a secret, and another model."""
    d = tmp_path / "home"
    d.mkdir()
    (d / "id_ed25519").write_text(SECRET)
    save_file({"other": np.ones(4, np.float32)}, d / "other.safetensors")
    return d


def _files_under(root: Path):
    return sorted(p.relative_to(root).as_posix() for p in root.rglob("*"))


# ---------------------------------------------------------------- links out of the input


@pytest.mark.parametrize("target", ["id_ed25519", "other.safetensors"])
def test_encrypt_refuses_a_link_out_of_the_model_directory(tmp_path, model, outside, keys, target):
    (model / "notes.txt" if target == "id_ed25519" else model / "extra.safetensors").symlink_to(outside / target)
    out = tmp_path / "enc"
    line = fails(run("encrypt", model, "-o", out, "-r", keys / "customer.pub.jwk"), cli.EXIT_UNSAFE_PATH,
                 "a link to", str(outside / target), "outside", "refused")
    assert SECRET not in line
    assert not out.exists() and _files_under(tmp_path).count("enc") == 0
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".enc.")]


def test_a_link_inside_the_model_directory_is_copied_as_a_file(tmp_path, model, keys):
    (model / "sub").mkdir()
    (model / "sub" / "alias.json").symlink_to("../config.json")
    out = tmp_path / "enc"
    assert run("encrypt", model, "-o", out, "-r", keys / "customer.pub.jwk").returncode == 0
    alias = out / "sub" / "alias.json"
    assert not alias.is_symlink() and alias.read_text() == '{"model_type": "tiny"}'
    # ... but not in place, where replacing the link would leave its target as it was.
    fails(run("encrypt", model, "--in-place", "-r", keys / "customer.pub.jwk"), cli.EXIT_UNSAFE_PATH,
          "alias.json", "cannot be replaced in place")


@pytest.mark.parametrize("kind", ["directory link", "fifo"])
def test_entries_that_would_be_skipped_or_hang_are_refused(tmp_path, model, outside, keys, kind):
    if kind == "fifo":
        os.mkfifo(model / "pipe")
    else:
        (model / "more").symlink_to(outside)
    why = "not a regular file" if kind == "fifo" else "a link to a directory"
    result = run("encrypt", model, "-o", tmp_path / "enc", "-r", keys / "customer.pub.jwk", timeout=60)
    fails(result, cli.EXIT_UNSAFE_PATH, why)
    assert not (tmp_path / "enc").exists()


@pytest.mark.parametrize("command", ["decrypt", "rewrap", "inspect", "verify"])
def test_every_command_walking_a_directory_refuses_links_out(tmp_path, model, outside, keys, command):
    enc = tmp_path / "enc"
    assert run("encrypt", model, "-o", enc, "-r", keys / "customer.pub.jwk").returncode == 0
    (enc / "stolen.safetensors").symlink_to(outside / "other.safetensors")
    argv = {
        "decrypt": ["-o", tmp_path / "plain", "-k", keys / "customer.jwk"],
        "rewrap": ["-o", tmp_path / "rewrapped", "-k", keys / "customer.jwk", "--add-recipient", keys / "other.pub.jwk"],
        "inspect": [],
        "verify": ["-k", keys / "customer.jwk"],
    }[command]
    fails(run(command, enc, *argv), cli.EXIT_UNSAFE_PATH, "stolen.safetensors", "outside")
    assert not (tmp_path / "plain").exists() and not (tmp_path / "rewrapped").exists()


# ---------------------------------------------------------------- outputs inside inputs


@pytest.mark.parametrize("command", ["encrypt", "decrypt", "rewrap"])
@pytest.mark.parametrize("via_link", [False, True])
def test_an_output_inside_the_input_is_refused(tmp_path, model, keys, command, via_link):
    enc = tmp_path / "enc"
    assert run("encrypt", model, "-o", enc, "-r", keys / "customer.pub.jwk").returncode == 0
    src = model if command == "encrypt" else enc
    before = _files_under(src)
    base = src
    if via_link:
        base = tmp_path / "alias"
        base.symlink_to(src)
    argv = {
        "encrypt": ["-r", keys / "customer.pub.jwk"],
        "decrypt": ["-k", keys / "customer.jwk"],
        "rewrap": ["-k", keys / "customer.jwk", "--add-recipient", keys / "other.pub.jwk"],
    }[command]
    fails(run(command, src, "-o", base / "plain", *argv), cli.EXIT_USAGE, "inside the input")
    assert _files_under(src) == before


# ---------------------------------------------------------------- hostile text


FORGED = "\x1b[2K\r\x1b[1AOK, signature valid\u202e\u2066\x85\x9b"


@pytest.fixture()
def hostile(tmp_path):
    """A file whose names, kids, signer and metadata carry terminal escapes,
    C1 controls and bidi overrides, and a key that opens it."""
    key = cryptotensors.generate_key("oct")
    key["kid"] = "kid" + FORGED
    signer = cryptotensors.generate_key("Ed25519")
    signer["kid"] = "signer" + FORGED
    path = tmp_path / "hostile.safetensors"
    save_file({"name" + FORGED: np.zeros(4, np.float32)}, path, metadata={"m" + FORGED: "v" + FORGED},
              encrypt_for=[key], sign_with=signer)
    (tmp_path / "key.jwk").write_text(json.dumps(key))
    (tmp_path / "other.jwk").write_text(json.dumps(cryptotensors.generate_key("oct")))
    return path


def _no_raw_controls(text):
    bad = [c for c in text if c != "\n" and not c.isprintable()]
    assert not bad, [hex(ord(c)) for c in bad]


def test_inspect_and_verify_escape_what_the_file_says(hostile, tmp_path):
    text = run("inspect", hostile)
    assert text.returncode == 0, text.stderr
    _no_raw_controls(text.stdout)
    assert "name\\x1b[2K\\r\\x1b[1AOK, signature valid\\u202e\\u2066\\x85\\x9b" in text.stdout
    for shown in ("kid\\x1b[2K", "signer\\x1b[2K", "m\\x1b[2K", "v\\x1b[2K"):
        assert shown in text.stdout
    as_json = run("inspect", hostile, "--json")
    _no_raw_controls(as_json.stdout)
    assert "\\u202e" in as_json.stdout and json.loads(as_json.stdout)["tensors"][0]["name"] == "name" + FORGED
    verified = run("verify", hostile, "-k", tmp_path / "key.jwk")
    assert verified.returncode == 0, verified.stderr
    _no_raw_controls(verified.stdout)
    assert verified.stdout.count("\n") == 1 and "signer\\x1b[2K" in verified.stdout


def test_errors_escape_what_the_file_says(hostile, tmp_path):
    line = fails(run("decrypt", hostile, "-o", tmp_path / "plain.safetensors"), cli.EXIT_KEY, "kid\\x1b[2K")
    _no_raw_controls(line)
    line = fails(run("decrypt", hostile, "-o", tmp_path / "plain.safetensors", "-k", tmp_path / "other.jwk"), cli.EXIT_KEY)
    _no_raw_controls(line)


def test_file_names_are_escaped(tmp_path, keys):
    d = tmp_path / "m"
    d.mkdir()
    save_file({"w": np.zeros(2, np.float32)}, d / "x\x1b[2Jy.safetensors")
    result = run("inspect", d)
    assert result.returncode == 0
    _no_raw_controls(result.stdout)
    assert "x\\x1b[2Jy.safetensors" in result.stdout


# ---------------------------------------------------------------- malformed key variables


MALFORMED = [
    '{"kty": "oct", "k": "' + SECRET,  # truncated JSON
    '[{"kty": "oct", "k": "' + SECRET + '"}, 5]',  # a list holding a non-key
]


@pytest.mark.parametrize("text", MALFORMED)
@pytest.mark.parametrize("variable", [_keys.KEYS_ENV, _keys.TRUSTED_ENV])
def test_a_malformed_key_variable_is_one_line_exit_4(tmp_path, hostile, variable, text):
    result = run("verify", hostile, env={variable: text})
    line = fails(result, cli.EXIT_KEY, variable, "not a JWK")
    assert SECRET not in result.stderr + result.stdout and len(line) < 200


NOT_UTF8 = b'{"kty": "oct", "k": "\xff' + SECRET.encode() + b'"}'  # only in a file: variables are text


@pytest.mark.parametrize(("text", "as_file"), [(t, f) for t in MALFORMED for f in (False, True)] + [(NOT_UTF8, True)])
@pytest.mark.parametrize("variable", [_keys.KEYS_ENV, _keys.TRUSTED_ENV])
def test_the_library_error_holds_no_key_text(tmp_path, hostile, monkeypatch, variable, text, as_file):
    if as_file:
        path = tmp_path / "keys.jwks"
        path.write_bytes(text if isinstance(text, bytes) else text.encode())
        monkeypatch.setenv(variable, str(path))
    else:
        monkeypatch.setenv(variable, text)
    with pytest.raises(cryptotensors.KeyConfigError) as info:
        cryptotensors.safe_open(hostile, "np")
    assert isinstance(info.value, cryptotensors.SafetensorError)
    assert variable in str(info.value) or str(tmp_path) in str(info.value)
    _holds_no_secret(info.value, set())
    # Nor do the locals of the library's frames it passed through (loggers
    # and crash reporters that show locals would print them).
    tb = info.value.__traceback__
    while tb is not None:
        if "cryptotensors" in Path(tb.tb_frame.f_code.co_filename).parts:
            _holds_no_secret(dict(tb.tb_frame.f_locals), set())
        tb = tb.tb_next


@pytest.mark.parametrize("text", MALFORMED)
@pytest.mark.parametrize("argument", ["keys", "trusted_signers"])
def test_key_text_passed_by_the_caller_stays_out_of_the_error(hostile, argument, text):
    with pytest.raises(cryptotensors.KeyConfigError) as info:
        cryptotensors.safe_open(hostile, "np", **{argument: text})
    assert argument in str(info.value)
    _holds_no_secret(info.value, set())


def _holds_no_secret(obj, seen):
    """Walks an exception's args, attributes (__dict__), cause and context,
    recursively: none may hold the key text, and none chains to another."""
    if id(obj) in seen:
        return
    seen.add(id(obj))
    if isinstance(obj, (str, bytes)):
        assert (SECRET if isinstance(obj, str) else SECRET.encode()) not in obj
        return
    if isinstance(obj, (list, tuple, set)):
        for v in obj:
            _holds_no_secret(v, seen)
        return
    if isinstance(obj, dict):
        for k, v in obj.items():
            _holds_no_secret(k, seen)
            _holds_no_secret(v, seen)
        return
    if isinstance(obj, BaseException):
        assert SECRET not in repr(obj) and SECRET not in str(obj)
        _holds_no_secret(obj.args, seen)
        _holds_no_secret(vars(obj), seen)
        _holds_no_secret(obj.__cause__, seen)
        _holds_no_secret(obj.__context__, seen)
        assert obj.__cause__ is None and obj.__context__ is None


# ---------------------------------------------------------------- killed writers


_SAVER = textwrap.dedent("""
    import sys
    import numpy as np
    from cryptotensors.numpy import save_file
    big = {"w": np.full(16 << 20, int(sys.argv[2]), np.float32)}  # 64 MiB
    print("saving", flush=True)
    while True:
        save_file(big, sys.argv[1])
""")


def test_a_killed_save_leaves_the_old_or_new_file_and_nothing_else(tmp_path):
    target = tmp_path / "model.safetensors"
    save_file({"w": np.zeros(4, np.float32)}, target)
    for attempt, delay in enumerate((0.05, 0.2, 0.35), 1):
        proc = subprocess.Popen([sys.executable, "-c", _SAVER, str(target), str(attempt)], stdout=subprocess.PIPE)
        try:
            assert proc.stdout.readline() == b"saving\n"
            time.sleep(delay)
        finally:
            proc.send_signal(signal.SIGKILL)
            proc.wait()
        assert sorted(os.listdir(tmp_path)) == ["model.safetensors"], attempt
        loaded = load_file(target)["w"]
        assert loaded.shape == (4,) or (loaded.shape == (16 << 20,) and loaded[-1] in range(1, attempt + 1))


def test_a_save_removes_stale_temporaries_of_its_target_only(tmp_path):
    target = tmp_path / "model.safetensors"
    past = time.time() - 3600
    stale = tmp_path / ".model.safetensors.AbCdEfGhIj_.tmp"
    fresh = tmp_path / ".model.safetensors.ZZZZZZZZZZZ.tmp"  # a writer may have just created it
    foreign = [tmp_path / ".other.safetensors.AbCdEfGhIj_.tmp", tmp_path / ".model.safetensors.mine.tmp"]
    for p in [stale, fresh, *foreign]:
        p.write_bytes(b"partial")
    for p in [stale, *foreign]:
        os.utime(p, (past, past))
    save_file({"w": np.zeros(4, np.float32)}, target)
    assert not stale.exists()
    assert fresh.exists() and all(p.exists() for p in foreign)


def test_encrypt_removes_staging_left_by_a_killed_run(tmp_path, model, keys):
    out = tmp_path / "enc"
    past = time.time() - 3600
    stale, fresh = tmp_path / ".enc.0123abcd.tmp", tmp_path / ".enc.4567cdef.tmp"
    other = tmp_path / ".other.0123abcd.tmp"
    for d in (stale, fresh, other):
        d.mkdir()
        (d / "model.safetensors").write_bytes(b"half")
    for d in (stale, other):
        os.utime(d, (past, past))
    assert run("encrypt", model, "-o", out, "-r", keys / "customer.pub.jwk").returncode == 0
    assert not stale.exists() and fresh.exists() and other.exists()
    assert sorted(p.name for p in out.iterdir()) == ["config.json", "model.safetensors"]


def test_a_killed_encrypt_leaves_no_output_and_no_half_written_file(tmp_path, keys):
    """The staging directory of a directory output only ever holds complete
    files: a copied file appears whole (it had no name until then)."""
    model = tmp_path / "model"
    model.mkdir()
    big = os.urandom(1 << 20) * 128  # 128 MiB, copied unencrypted (sorted first)
    size, digest = len(big), hashlib.sha256(big).hexdigest()
    (model / "big.dat").write_bytes(big)
    del big
    save_file({"w": np.ones(16 << 20, np.float32)}, model / "model.safetensors")  # 64 MiB, encrypted after it
    out = tmp_path / "enc"
    proc = subprocess.Popen([str(BIN), "encrypt", model, "-o", out, "-r", keys / "customer.pub.jwk", "-q"],
                            stderr=subprocess.DEVNULL)
    seen = None
    try:
        while seen is None and proc.poll() is None:
            for staging in tmp_path.glob(".enc.*.tmp"):
                with contextlib.suppress(FileNotFoundError):
                    seen = (staging / "big.dat").stat().st_size
    finally:
        proc.kill()
        proc.wait()
    assert seen == size, "a half-copied file was visible"
    if not out.exists():  # killed before the end, as intended: nothing at the output, complete files staged
        for staging in tmp_path.glob(".enc.*.tmp"):
            for f in staging.iterdir():
                assert f.name in ("big.dat", "model.safetensors"), f.name
                if f.name == "big.dat":
                    assert hashlib.sha256(f.read_bytes()).hexdigest() == digest
                if f.name == "model.safetensors":
                    assert cryptotensors.inspect(f)["algorithm"] == "AES-256-GCM"


@pytest.mark.parametrize("anonymous", [True, False])
def test_key_files_are_written_whole_with_or_without_o_tmpfile(tmp_path, monkeypatch, anonymous):
    if not anonymous:  # a system or file system without O_TMPFILE: a named temporary, renamed or linked in
        monkeypatch.setattr(cli._atomic, "_open_anonymous", lambda directory, mode: None)
    key = tmp_path / "k.jwk"
    assert cli.main(["keygen", "--type", "oct", "-o", str(key), "-q"]) == cli.EXIT_OK
    first = key.read_text()
    assert cli.main(["keygen", "--type", "oct", "-o", str(key), "-q"]) == cli.EXIT_USAGE
    assert key.read_text() == first
    assert cli.main(["keygen", "--type", "oct", "-o", str(key), "--force", "-q"]) == cli.EXIT_OK
    assert key.read_text() != first and json.loads(key.read_text())["kty"] == "oct"
    assert os.stat(key).st_mode & 0o777 == 0o600 and os.listdir(tmp_path) == ["k.jwk"]
