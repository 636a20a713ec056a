"""Access policies: stored in the header, covered by MAC and signature,
evaluated before any key is unwrapped. One test per example policy."""

import json
import os
import socket
import struct

import numpy as np
import pytest

import cryptotensors as ct
import cryptotensors.numpy as cn

EXAMPLES = os.path.join(os.path.dirname(__file__), "..", "examples", "policies")
KEY = ct.generate_key("oct")


def example(name):
    with open(os.path.join(EXAMPLES, name + ".rego")) as f:
        return f.read()


def save(tmp_path, policy, **kw):
    path = tmp_path / "m.safetensors"
    cn.save_file({"w": np.arange(8, dtype=np.float32)}, path, encrypt_for=KEY, policy=policy, **kw)
    return path


def test_expiry(tmp_path):
    path = save(tmp_path, example("expiry"))
    assert cn.load_file(path, keys=KEY)["w"][7] == 7  # before 2028
    expired = example("expiry").replace("2028-01-01T00:00:00Z", "2020-01-01T00:00:00Z")
    path = save(tmp_path, expired)
    with pytest.raises(ct.PolicyDeniedError, match="expired"):
        cn.load_file(path, keys=KEY)


def test_allowed_hosts(tmp_path):
    path = save(tmp_path, example("allowed_hosts"))
    with pytest.raises(ct.PolicyDeniedError, match=socket.gethostname()):
        cn.load_file(path, keys=KEY)
    here = example("allowed_hosts").replace('"inference-02"', json.dumps(socket.gethostname()))
    cn.load_file(save(tmp_path, here), keys=KEY)


def test_gpu_only(tmp_path):
    path = save(tmp_path, example("gpu_only"))
    with pytest.raises(ct.PolicyDeniedError, match="only onto a GPU"):
        cn.load_file(path, keys=KEY)
    with pytest.raises(ct.PolicyDeniedError):
        with ct.safe_open(path, "pt", keys=KEY):
            pass


def test_tee_claims_required(tmp_path):
    path = save(tmp_path, example("tee_required"))
    with pytest.raises(ct.PolicyDeniedError, match="TEE"):
        cn.load_file(path, keys=KEY)
    with pytest.raises(ct.PolicyDeniedError):
        cn.load_file(path, keys=KEY, policy_input={"tee": {"type": "sev-snp", "verified": False}})
    got = cn.load_file(path, keys=KEY, policy_input={"tee": {"type": "sev-snp", "verified": True}})
    assert got["w"][1] == 1
    got = cn.load(path.read_bytes(), keys=KEY, policy_input={"tee": {"type": "tdx", "verified": True}})
    assert got["w"][2] == 2


def test_policy_runs_before_any_key_is_unwrapped(tmp_path):
    path = save(tmp_path, example("gpu_only"))
    # With no key at all, the denial comes first: the policy is evaluated
    # before the recipients are even looked at.
    with pytest.raises(ct.PolicyDeniedError):
        cn.load_file(path)


def strip_policy(path):
    """What an attacker who can write the file does: remove the policy."""
    data = path.read_bytes()
    (n,) = struct.unpack("<Q", data[:8])
    header = json.loads(data[8 : 8 + n])
    env = json.loads(header["__metadata__"]["__cryptotensors__"])
    del env["policy"]
    header["__metadata__"]["__cryptotensors__"] = json.dumps(env)
    text = json.dumps(header).encode()
    text += b" " * (-len(text) % 8)
    path.write_bytes(struct.pack("<Q", len(text)) + text + data[8 + n :])


def test_policy_is_covered_by_the_mac_and_signature(tmp_path):
    path = save(tmp_path, example("gpu_only"))
    strip_policy(path)
    with pytest.raises(ct.IntegrityError):  # the header MAC
        cn.load_file(path, keys=KEY)
    signer = ct.generate_key("Ed25519")
    path = save(tmp_path, example("gpu_only"), sign_with=signer)
    strip_policy(path)
    with pytest.raises(ct.SignatureError):
        cn.load_file(path, keys=KEY, trusted_signers=ct.public_key(signer))


def test_policy_input_document(tmp_path):
    echo = """package cryptotensors
import rego.v1
default allow := false
allow if {
    input.framework == "np"
    input.device == "cpu"
    input.loader == "safe_open"
    input.tensors == ["*"]
    input.claims.team == "ml"
    is_string(input.host.hostname)
    input.time_ns > 0
}
"""
    cn.load_file(save(tmp_path, echo), keys=KEY, policy_input={"team": "ml"})


def test_bad_policies_are_refused_at_save(tmp_path):
    with pytest.raises(ct.SafetensorError, match="package cryptotensors"):
        save(tmp_path, "package other\nallow := true")
    with pytest.raises(ct.SafetensorError):
        save(tmp_path, "package cryptotensors\nallow := ")
    with pytest.raises(ct.SafetensorError, match="encrypt_for"):
        cn.save({"w": np.ones(1)}, policy=example("expiry"))


def test_rewrap_changes_the_policy(tmp_path):
    path = save(tmp_path, example("expiry"))
    ct.rewrap(path, keys=KEY, policy=example("gpu_only"))
    assert "GPU" in ct.inspect(path)["policy"]
    # A rewrap is verified as a load is, and it is no GPU load: denied.
    with pytest.raises(ct.PolicyDeniedError, match="only onto a GPU"):
        ct.rewrap(path, keys=KEY, policy=example("expiry"))
    path = save(tmp_path, example("expiry"))
    cn.load_file(path, keys=KEY)
    ct.rewrap(path, keys=KEY, remove_policy=True)
    assert ct.inspect(path)["policy"] is None
