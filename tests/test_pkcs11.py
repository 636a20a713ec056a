"""The PKCS#11 key provider against SoftHSM2: the key-encryption key sits on
the token as a sensitive, non-extractable AES key, and files open through the
token, in-process and in a fresh process configured only by the environment."""

import base64
import glob
import json
import os
import shutil
import subprocess
import sys
import textwrap
import threading
import traceback
from importlib.metadata import entry_points

import numpy as np
import pytest
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

import cryptotensors as ct
import cryptotensors.numpy as cn
from cryptotensors import _providers

pkcs11 = pytest.importorskip("pkcs11", reason="python-pkcs11 is not installed (pip install python-pkcs11)")

from cryptotensors.pkcs11 import Pkcs11Provider, from_env, generate_key, import_oct_key, open_session  # noqa: E402


def _softhsm_module():
    candidates = [
        "/usr/lib/softhsm/libsofthsm2.so",  # Debian, Ubuntu
        "/usr/lib/x86_64-linux-gnu/softhsm/libsofthsm2.so",
        "/usr/lib64/pkcs11/libsofthsm2.so",  # Fedora, RHEL
        "/usr/local/lib/softhsm/libsofthsm2.so",
        "/opt/homebrew/lib/softhsm/libsofthsm2.so",
    ]
    candidates += glob.glob("/usr/lib/*/softhsm/libsofthsm2.so")
    return next((p for p in candidates if os.path.exists(p)), None)


MODULE = _softhsm_module()
UTIL = shutil.which("softhsm2-util")
if MODULE is None or UTIL is None:
    pytest.skip(
        "SoftHSM2 is not installed (softhsm2-util and libsofthsm2.so; apt-get install softhsm2)",
        allow_module_level=True,
    )

TOKEN = "cryptotensors-test"
PIN = "pin-7c1e94d2"  # distinctive, so a leak is easy to spot
SO_PIN = "so-pin-5b83"


def b64d(s):
    return base64.urlsafe_b64decode(s + "=" * (-len(s) % 4))


def entry_point_installed():
    try:
        eps = entry_points(group=_providers.GROUP)
    except TypeError:  # Python 3.9
        eps = entry_points().get(_providers.GROUP, [])
    return any(ep.name == "pkcs11" and ep.value == "cryptotensors.pkcs11:from_env" for ep in eps)


NEEDS_ENTRY_POINT = pytest.mark.skipif(
    not entry_point_installed(),
    reason="the installed cryptotensors metadata lacks the pkcs11 entry point; reinstall (maturin develop)",
)


@pytest.fixture(scope="module")
def hsm(tmp_path_factory):
    """A SoftHSM2 token of its own (own config and token directory), holding
    one imported oct key. SoftHSM reads SOFTHSM2_CONF when the module is first
    initialized in a process, so this is set once for the whole module."""
    root = tmp_path_factory.mktemp("softhsm")
    (root / "tokens").mkdir()
    conf = root / "softhsm2.conf"
    conf.write_text(f"directories.tokendir = {root / 'tokens'}\nobjectstore.backend = file\nlog.level = ERROR\n")
    old = os.environ.get("SOFTHSM2_CONF")
    os.environ["SOFTHSM2_CONF"] = str(conf)
    subprocess.run(
        [UTIL, "--init-token", "--free", "--label", TOKEN, "--pin", PIN, "--so-pin", SO_PIN],
        check=True,
        capture_output=True,
    )
    key = ct.generate_key("oct")
    assert import_oct_key(key, MODULE, token_label=TOKEN, pin=PIN) == key["kid"]
    pin_file = root / "pin"
    pin_file.write_text(PIN + "\n")
    yield {"conf": str(conf), "key": key, "root": root, "pin_file": str(pin_file)}
    if old is None:
        os.environ.pop("SOFTHSM2_CONF", None)
    else:
        os.environ["SOFTHSM2_CONF"] = old


@pytest.fixture
def no_keys(monkeypatch, tmp_path):
    """No JWK from the environment or a configuration file, and an empty
    provider registry (restored afterwards: the registry is process-global)."""
    for var in ("CRYPTOTENSORS_KEYS", "CRYPTOTENSORS_PKCS11_MODULE", "CRYPTOTENSORS_PKCS11_PIN"):
        monkeypatch.delenv(var, raising=False)
    (tmp_path / "config").mkdir()
    monkeypatch.setenv("CRYPTOTENSORS_CONFIG_DIR", str(tmp_path / "config"))
    monkeypatch.setenv("XDG_CONFIG_HOME", str(tmp_path / "config"))
    monkeypatch.setattr(_providers, "_registered", [])
    monkeypatch.setattr(_providers, "_discovered", [])


@pytest.fixture
def model(hsm, tmp_path):
    tensors = {"w": np.arange(48, dtype=np.float32).reshape(6, 8), "b": np.linspace(-1, 1, 5)}
    path = tmp_path / "m.safetensors"
    cn.save_file(tensors, path, encrypt_for=hsm["key"])
    return path, tensors


def provider(**kw):
    return Pkcs11Provider(MODULE, token_label=TOKEN, pin=PIN, **kw)


def assert_same(got, want):
    assert sorted(got) == sorted(want)
    for name in want:
        np.testing.assert_array_equal(got[name], want[name])


# -- the key on the token -----------------------------------------------------


def test_the_key_is_sensitive_and_not_extractable(hsm):
    from pkcs11 import Attribute, KeyType, ObjectClass

    kid = hsm["key"]["kid"]
    with open_session(MODULE, TOKEN, PIN) as session:
        key = session.get_key(ObjectClass.SECRET_KEY, KeyType.AES, label=kid)
        assert key[Attribute.ID] == kid.encode()
        assert key[Attribute.SENSITIVE] is True
        assert key[Attribute.EXTRACTABLE] is False
        assert key[Attribute.PRIVATE] is True
        assert key[Attribute.ENCRYPT] is False and key[Attribute.WRAP] is False
        with pytest.raises(pkcs11.AttributeSensitive):
            key[Attribute.VALUE]
    # Private: without a login the token does not even show it.
    with open_session(MODULE, TOKEN) as session:
        assert list(session.get_objects({Attribute.LABEL: kid})) == []


def test_a_key_born_on_the_token_encrypts_and_opens_files(hsm, tmp_path, no_keys):
    """generate_key makes the key on the token (never outside, never extractable);
    encrypt_for= a Pkcs11Recipient wraps the file's data key on the token, and
    only the token opens the file."""
    from pkcs11 import Attribute, KeyType, ObjectClass

    kid = generate_key("born-on-token", MODULE, token_label=TOKEN, pin=PIN)
    with open_session(MODULE, TOKEN, PIN) as session:
        key = session.get_key(ObjectClass.SECRET_KEY, KeyType.AES, label=kid)
        assert key[Attribute.SENSITIVE] is True and key[Attribute.EXTRACTABLE] is False
        assert key[Attribute.ALWAYS_SENSITIVE] is True and key[Attribute.NEVER_EXTRACTABLE] is True
        with pytest.raises(pkcs11.AttributeSensitive):
            key[Attribute.VALUE]
    with pytest.raises(ct.SafetensorError, match="already holds"):
        generate_key(kid, MODULE, token_label=TOKEN, pin=PIN)

    p = provider()
    tensors = {"w": np.arange(12, dtype=np.float32).reshape(3, 4)}
    path = tmp_path / "hsm.safetensors"
    other = ct.generate_key("oct")
    cn.save_file(tensors, path, encrypt_for=[p.recipient(kid), other])
    info = ct.inspect(str(path))
    assert sorted(r["kid"] for r in info["recipients"]) == sorted([kid, other["kid"]])
    assert_same(cn.load_file(path, keys=other), tensors)  # the JWK recipient opens it too
    with pytest.raises(ct.KeyNotFoundError):
        cn.load_file(path)  # nothing but the token could open it, and it is not registered
    ct.register_key_provider(p)
    assert_same(cn.load_file(path), tensors)
    # The recipient alone, with no JWK at all.
    only = tmp_path / "only.safetensors"
    cn.save_file(tensors, only, encrypt_for=p.recipient(kid))
    assert_same(cn.load_file(only), tensors)
    # A key imported decrypt-only cannot wrap; an unknown label is refused.
    with pytest.raises(ct.SafetensorError, match="may only decrypt"):
        cn.save_file(tensors, tmp_path / "x.safetensors", encrypt_for=p.recipient(hsm["key"]["kid"]))
    with pytest.raises(ct.SafetensorError, match="0 AES keys"):
        cn.save_file(tensors, tmp_path / "y.safetensors", encrypt_for=p.recipient("no-such-key"))
    assert not (tmp_path / "x.safetensors").exists() and not (tmp_path / "y.safetensors").exists()
    assert PIN not in repr(p.recipient(kid))


def test_external_stanzas_are_checked_before_they_are_written(tmp_path):
    """A wrapper returning a malformed stanza, or one for another data key
    shape, is refused; nothing is written."""

    class Bad:
        def __init__(self, stanza):
            self.stanza = stanza

        def wrap(self, data_key):
            return self.stanza

    good = {"kid": "k", "alg": "A256GCMKW", "iv": "A" * 16, "tag": "A" * 22, "encrypted_key": "A" * 43}
    for broken in (
        {**good, "iv": "A" * 8},
        {**good, "alg": "dir"},
        {**good, "kid": ""},
        {**good, "enc": "A" * 43},
        {**good, "extra": "x"},
        {k: v for k, v in good.items() if k != "tag"},
    ):
        with pytest.raises(ct.SafetensorError):
            cn.save_file({"w": np.ones(3)}, tmp_path / "b.safetensors", encrypt_for=Bad(broken))
        assert not (tmp_path / "b.safetensors").exists()
    jwk = ct.generate_key("oct")
    with pytest.raises(ct.SafetensorError, match="two recipients"):
        cn.save_file({"w": np.ones(3)}, tmp_path / "b.safetensors", encrypt_for=[jwk, Bad({**good, "kid": jwk["kid"]})])


def test_import_refuses_duplicates_and_non_oct_keys(hsm):
    with pytest.raises(ct.SafetensorError, match="already holds"):
        import_oct_key(hsm["key"], MODULE, token_label=TOKEN, pin=PIN)
    with pytest.raises(ct.SafetensorError, match="oct"):
        import_oct_key(ct.generate_key("x25519"), MODULE, token_label=TOKEN, pin=PIN)
    # Without a kid, the label is the RFC 7638 thumbprint, the kid files name.
    jwk = ct.generate_key("oct")
    bare = {k: v for k, v in jwk.items() if k != "kid"}
    assert import_oct_key(bare, MODULE, token_label=TOKEN, pin=PIN) == jwk["kid"]


# -- unwrapping -----------------------------------------------------------------


def test_unwrap_on_the_token_returns_the_data_key(hsm, model):
    path, _ = model
    (stanza,) = ct.inspect(path)["recipients"]
    want = AESGCM(b64d(hsm["key"]["k"])).decrypt(
        b64d(stanza["iv"]), b64d(stanza["encrypted_key"]) + b64d(stanza["tag"]), None
    )
    p = provider()
    assert p.unwrap(stanza) == want
    # Not its stanzas: another kid, another algorithm, malformed fields.
    assert p.unwrap({**stanza, "kid": "somebody-else"}) is None
    assert p.unwrap({**stanza, "alg": "HPKE-Base-X25519-SHA256-ChaCha20Poly1305"}) is None
    assert p.unwrap({**stanza, "iv": "!!"}) is None
    assert p.unwrap({**stanza, "iv": "A" * 22}) is None  # 16 bytes: not a 12-byte GCM IV
    assert p.unwrap({**stanza, "tag": stanza["tag"][:-4]}) is None
    # A tampered wrapped key or tag fails GCM on the token: None, not bytes.
    ek = bytearray(b64d(stanza["encrypted_key"]))
    ek[5] ^= 1
    assert p.unwrap({**stanza, "encrypted_key": base64.urlsafe_b64encode(bytes(ek)).rstrip(b"=").decode()}) is None
    tag = bytearray(b64d(stanza["tag"]))
    tag[0] ^= 0x80
    assert p.unwrap({**stanza, "tag": base64.urlsafe_b64encode(bytes(tag)).rstrip(b"=").decode()}) is None
    # And the session still works after those failures.
    assert p.unwrap(stanza) == want
    # key_label: one key tried for every A256GCMKW stanza, whatever its kid.
    assert provider(key_label=hsm["key"]["kid"]).unwrap({**stanza, "kid": "renamed"}) == want
    assert provider(key_label="no-such-label").unwrap(stanza) is None
    p.close()


def test_load_in_process_through_the_provider_only(hsm, model, no_keys):
    path, tensors = model
    with pytest.raises(ct.KeyNotFoundError):  # control: nothing else opens it
        cn.load_file(path)
    p = provider()
    ct.register_key_provider(p)
    assert_same(cn.load_file(path), tensors)
    assert_same(cn.load(path.read_bytes()), tensors)
    with ct.safe_open(path, "np") as f:
        np.testing.assert_array_equal(f.get_tensor("w"), tensors["w"])
    # Shared by threads: one session, under the provider's lock.
    errors = []

    def load():
        try:
            for _ in range(3):
                assert_same(cn.load_file(path), tensors)
        except BaseException as e:  # noqa: B036
            errors.append(e)

    threads = [threading.Thread(target=load) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert errors == []


@pytest.mark.skipif(not hasattr(os, "fork"), reason="needs fork")
def test_a_forked_child_gets_its_own_session(hsm, model):
    path, _ = model
    (stanza,) = ct.inspect(path)["recipients"]
    p = provider()
    want = p.unwrap(stanza)
    assert want is not None
    r, w = os.pipe()
    pid = os.fork()
    if pid == 0:  # pragma: no cover - the child
        try:
            os.close(r)
            os.write(w, p.unwrap(stanza) or b"none")
        finally:
            os._exit(0)
    os.close(w)
    with os.fdopen(r, "rb") as f:
        got = f.read()
    os.waitpid(pid, 0)
    assert got == want
    assert p.unwrap(stanza) == want  # the parent's session is untouched


def test_other_keys_do_not_open(hsm, tmp_path, no_keys):
    # A file for a key the token does not hold.
    other = tmp_path / "other.safetensors"
    cn.save_file({"w": np.ones(3)}, other, encrypt_for=ct.generate_key("oct"))
    # A key on the token under the right kid but with other bytes: GCM fails.
    impostor = ct.generate_key("oct")
    wrong = dict(impostor, k=ct.generate_key("oct")["k"])
    import_oct_key(wrong, MODULE, token_label=TOKEN, pin=PIN)
    lookalike = tmp_path / "lookalike.safetensors"
    cn.save_file({"w": np.ones(3)}, lookalike, encrypt_for=impostor)
    ct.register_key_provider(provider())
    with pytest.raises(ct.KeyNotFoundError):
        cn.load_file(other)
    with pytest.raises(ct.KeyNotFoundError):
        cn.load_file(lookalike)
    (stanza,) = ct.inspect(lookalike)["recipients"]
    assert provider().unwrap(stanza) is None


def test_a_tampered_wrapped_key_gives_an_error_not_data(hsm, model, tmp_path, no_keys):
    path, _ = model
    data = bytearray(path.read_bytes())
    (stanza,) = ct.inspect(path)["recipients"]
    ek = stanza["encrypted_key"]
    at = bytes(data).index(ek.encode())
    i = at + len(ek) // 2
    data[i] = ord("A") if data[i] != ord("A") else ord("B")  # same length, still base64url
    bad = tmp_path / "bad.safetensors"
    bad.write_bytes(bytes(data))
    assert ct.inspect(bad)["recipients"][0]["encrypted_key"] != ek
    ct.register_key_provider(provider())
    with pytest.raises(ct.SafetensorError):
        cn.load_file(bad)
    with pytest.raises(ct.SafetensorError):
        cn.load(bytes(data))


# -- configuration from the environment ----------------------------------------------


def test_from_env(monkeypatch, hsm):
    for var in ("CRYPTOTENSORS_PKCS11_MODULE", "CRYPTOTENSORS_PKCS11_PIN", "CRYPTOTENSORS_PKCS11_KEY_LABEL"):
        monkeypatch.delenv(var, raising=False)
    assert from_env() is None
    monkeypatch.setenv("CRYPTOTENSORS_PKCS11_MODULE", MODULE)
    monkeypatch.setenv("CRYPTOTENSORS_PKCS11_TOKEN", TOKEN)
    monkeypatch.setenv("CRYPTOTENSORS_PKCS11_PIN_FILE", hsm["pin_file"])
    p = from_env()
    assert isinstance(p, Pkcs11Provider) and p.token_label == TOKEN and p.module == MODULE
    assert p._Pkcs11Provider__pin == PIN  # read from the file, newline stripped
    monkeypatch.setenv("CRYPTOTENSORS_PKCS11_PIN", "direct")
    assert from_env()._Pkcs11Provider__pin == "direct"
    monkeypatch.setenv("CRYPTOTENSORS_PKCS11_SLOT", "not-a-number")
    with pytest.raises(ct.SafetensorError, match="SLOT"):
        from_env()


@NEEDS_ENTRY_POINT
def test_entry_point_discovery(monkeypatch, hsm):
    monkeypatch.setenv("CRYPTOTENSORS_PKCS11_MODULE", MODULE)
    monkeypatch.setenv("CRYPTOTENSORS_PKCS11_TOKEN", TOKEN)
    monkeypatch.setenv("CRYPTOTENSORS_PKCS11_PIN", PIN)
    found = [p for p in _providers._discover() if isinstance(p, Pkcs11Provider)]
    assert len(found) == 1 and found[0].token_label == TOKEN
    monkeypatch.delenv("CRYPTOTENSORS_PKCS11_MODULE")
    assert not [p for p in _providers._discover() if isinstance(p, Pkcs11Provider)]


CHILD = textwrap.dedent(
    """
    import json, sys
    import numpy as np
    import cryptotensors.numpy as cn
    import cryptotensors as ct
    from cryptotensors import _providers
    if sys.argv[2:] == ["register"]:
        from cryptotensors.pkcs11 import from_env
        ct.register_key_provider(from_env())
    got = cn.load_file(sys.argv[1])
    names = [type(p).__name__ for p in _providers.providers()]
    json.dump({"names": names, "tensors": {k: v.tolist() for k, v in got.items()}}, sys.stdout)
    """
)


def run_child(hsm, path, tmp_path, *args, **env):
    base = {k: v for k, v in os.environ.items() if not k.startswith("CRYPTOTENSORS_")}
    (tmp_path / "child-config").mkdir(exist_ok=True)
    base.update(
        SOFTHSM2_CONF=hsm["conf"],
        CRYPTOTENSORS_CONFIG_DIR=str(tmp_path / "child-config"),
        XDG_CONFIG_HOME=str(tmp_path / "child-config"),
    )
    base.update(env)
    return subprocess.run(
        [sys.executable, "-c", CHILD, str(path), *args], env=base, capture_output=True, text=True, timeout=120
    )


@NEEDS_ENTRY_POINT
def test_a_fresh_process_opens_with_only_the_environment(hsm, model, tmp_path):
    path, tensors = model
    control = run_child(hsm, path, tmp_path)
    assert control.returncode != 0 and "KeyNotFoundError" in control.stderr, control.stderr[-2000:]
    env = dict(
        CRYPTOTENSORS_PKCS11_MODULE=MODULE,
        CRYPTOTENSORS_PKCS11_TOKEN=TOKEN,
        CRYPTOTENSORS_PKCS11_PIN_FILE=hsm["pin_file"],
    )
    done = run_child(hsm, path, tmp_path, **env)
    assert done.returncode == 0, done.stderr[-2000:]
    out = json.loads(done.stdout)
    assert out["names"] == ["Pkcs11Provider"]
    assert_same({k: np.array(v, dtype=tensors[k].dtype) for k, v in out["tensors"].items()}, tensors)


def cli_environments(hsm, tmp_path):
    """(run, base, token): run(args, env) runs the command line; `base` is an
    environment with no key and no token configured, `token` configures the test token."""
    cli = [os.path.join(os.path.dirname(sys.executable), "cryptotensors")]
    base = {k: v for k, v in os.environ.items() if not k.startswith("CRYPTOTENSORS_")}
    (tmp_path / "cfg").mkdir()
    base.update(SOFTHSM2_CONF=hsm["conf"], CRYPTOTENSORS_CONFIG_DIR=str(tmp_path / "cfg"), XDG_CONFIG_HOME=str(tmp_path / "cfg"))
    token = dict(base, CRYPTOTENSORS_PKCS11_MODULE=MODULE, CRYPTOTENSORS_PKCS11_TOKEN=TOKEN,
                 CRYPTOTENSORS_PKCS11_PIN_FILE=hsm["pin_file"])

    def run(args, env):
        return subprocess.run(cli + [str(a) for a in args], env=env, capture_output=True, text=True, timeout=120)

    return run, base, token


@NEEDS_ENTRY_POINT
def test_command_line_encrypts_for_a_token_key_and_decrypts_with_it(hsm, tmp_path):
    """`cryptotensors encrypt -r pkcs11:LABEL` and `decrypt` with no key file:
    the token wraps and unwraps; without the token configured, exit code 4."""
    label = "cli-token-key"
    generate_key(label, MODULE, token_label=TOKEN, pin=PIN)
    src = tmp_path / "plain.safetensors"
    tensors = {"w": np.arange(20, dtype=np.float32).reshape(4, 5)}
    cn.save_file(tensors, src)
    run, base, token = cli_environments(hsm, tmp_path)
    enc, out = tmp_path / "enc.safetensors", tmp_path / "out.safetensors"
    r = run(["encrypt", src, "-o", enc, "-r", f"pkcs11:{label}", "-q"], base)
    assert r.returncode == 4 and "CRYPTOTENSORS_PKCS11_MODULE" in r.stderr and not enc.exists(), r.stderr
    r = run(["encrypt", src, "-o", enc, "-r", f"pkcs11:{label}", "-q"], token)
    assert r.returncode == 0, r.stderr
    assert [x["kid"] for x in ct.inspect(str(enc))["recipients"]] == [label]
    r = run(["decrypt", enc, "-o", out, "-q"], base)
    assert r.returncode == 4 and not out.exists(), r.stderr
    r = run(["decrypt", enc, "-o", out, "-q"], token)
    assert r.returncode == 0, r.stderr
    assert_same(cn.load_file(out), tensors)
    assert PIN not in r.stderr + r.stdout


@NEEDS_ENTRY_POINT
@pytest.mark.parametrize("verb", ["rewrap", "rekey"])
def test_command_line_adds_a_token_key_as_a_recipient(hsm, tmp_path, verb):
    """`cryptotensors rewrap|rekey F -k K --add-recipient pkcs11:LABEL`: the
    token wraps the data key (rekey: the fresh one) for the key LABEL, and a
    decrypt through the token alone opens the result; without the token
    configured, exit code 4 and the file as it was."""
    label = f"cli-added-{verb}"
    generate_key(label, MODULE, token_label=TOKEN, pin=PIN)
    key = ct.generate_key("oct")
    key_file = tmp_path / "k.jwk"
    key_file.write_text(json.dumps(key))
    tensors = {"w": np.arange(30, dtype=np.float32).reshape(5, 6)}
    enc, out = tmp_path / "enc.safetensors", tmp_path / "out.safetensors"
    cn.save_file(tensors, enc, encrypt_for=key)
    before = enc.read_bytes()
    run, base, token = cli_environments(hsm, tmp_path)
    r = run([verb, enc, "-k", key_file, "--add-recipient", f"pkcs11:{label}", "-q"], base)
    assert r.returncode == 4 and f"--add-recipient pkcs11:{label}: set CRYPTOTENSORS_PKCS11_MODULE" in r.stderr, r.stderr
    assert enc.read_bytes() == before
    r = run([verb, enc, "-k", key_file, "--add-recipient", "pkcs11:no-such-label", "-q"], token)
    # the token's own failure, as the CLI words any library error: one line, exit code 1
    assert r.returncode == 1 and "no-such-label" in r.stderr and len(r.stderr.splitlines()) == 1, r.stderr
    assert enc.read_bytes() == before
    r = run([verb, enc, "-k", key_file, "--add-recipient", f"pkcs11:{label}", "-q"], token)
    assert r.returncode == 0, r.stderr
    assert [x["kid"] for x in ct.inspect(str(enc))["recipients"]] == [key["kid"], label]
    r = run([verb, enc, "-k", key_file, "--add-recipient", f"pkcs11:{label}", "-q"], token)
    assert r.returncode == 2 and "already a recipient" in r.stderr and "Traceback" not in r.stderr, r.stderr
    r = run(["decrypt", enc, "-o", out, "-q"], token)
    assert r.returncode == 0, r.stderr
    assert_same(cn.load_file(out), tensors)
    assert PIN not in r.stderr + r.stdout


# -- the PIN stays out of sight -------------------------------------------------------


def test_the_pin_is_not_shown(hsm, model, tmp_path, no_keys):
    p = provider()
    assert PIN not in repr(p) and PIN not in str(p) and "<set>" in repr(p)
    with pytest.raises(TypeError):
        import pickle

        pickle.dumps(p)
    # Errors: a token that is not there, a module that is not there.
    path, _ = model
    (stanza,) = ct.inspect(path)["recipients"]
    for bad in (
        Pkcs11Provider(MODULE, token_label="no-such-token", pin=PIN),
        Pkcs11Provider(str(tmp_path / "missing.so"), token_label=TOKEN, pin=PIN),
    ):
        with pytest.raises(ct.SafetensorError) as info:
            bad.unwrap(stanza)
        text = "".join(traceback.format_exception(info.type, info.value, info.tb))
        assert PIN not in text


def test_a_wrong_pin_says_so_without_the_pin(hsm, model, tmp_path):
    # In a fresh process: PKCS#11 login state is per process, and this one
    # may hold a logged-in session already (a second login just joins it).
    path, _ = model
    wrong = "wrong-pin-9f3a1c"
    done = run_child(
        hsm,
        path,
        tmp_path,
        "register",
        CRYPTOTENSORS_PKCS11_MODULE=MODULE,
        CRYPTOTENSORS_PKCS11_TOKEN=TOKEN,
        CRYPTOTENSORS_PKCS11_PIN=wrong,
    )
    assert done.returncode != 0
    assert "PinIncorrect" in done.stderr, done.stderr[-2000:]
    assert wrong not in done.stderr and wrong not in done.stdout and PIN not in done.stderr
