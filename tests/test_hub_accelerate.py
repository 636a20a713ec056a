"""Encrypted files and the other Hugging Face libraries, unchanged:

* huggingface_hub reads names, dtypes and shapes from the header alone (what
  `get_safetensors_metadata` shows on the Hub), with no key and no cryptotensors;
* accelerate's offloaded-weights loader opens the file once per tensor through
  the patched `safetensors.safe_open` (transparent mode), keys from the environment.

Nothing here binds safetensors' functions at module level (patch() would
rebind them; see test_transformers.py).
"""

import json
from pathlib import Path

import pytest

torch = pytest.importorskip("torch")
hub = pytest.importorskip("huggingface_hub")
pytest.importorskip("accelerate")
pytest.importorskip("safetensors")

import accelerate.utils.modeling  # noqa: E402
import accelerate.utils.offload  # noqa: E402
import huggingface_hub.hf_api  # noqa: E402
import safetensors  # noqa: E402
import safetensors.torch  # noqa: E402

import cryptotensors  # noqa: E402
import cryptotensors.torch  # noqa: E402
from cryptotensors import _patch  # noqa: E402


def _tensors():
    g = torch.Generator().manual_seed(7)
    return {
        "model.embed_tokens.weight": torch.randn(32, 16, generator=g),
        "model.layers.0.self_attn.q_proj.weight": torch.randn(16, 16, generator=g).to(torch.bfloat16),
        "model.layers.0.mlp.up_proj.weight": torch.randn(24, 16, generator=g).to(torch.float16),
        "model.layers.0.input_layernorm.weight": torch.ones(16),
        "position_ids": torch.arange(10),
        "scalar": torch.tensor(2.5),
        "empty": torch.zeros(0, 4),
        "mask": torch.tensor([True, False]),
    }


SHARDS = {
    "model-00001-of-00002.safetensors": ["model.embed_tokens.weight", "position_ids", "scalar", "empty"],
    "model-00002-of-00002.safetensors": [
        "model.layers.0.self_attn.q_proj.weight", "model.layers.0.mlp.up_proj.weight",
        "model.layers.0.input_layernorm.weight", "mask",
    ],
}


def _save_dir(root: Path, save_file, **options) -> Path:
    tensors = _tensors()
    root.mkdir()
    weight_map, total = {}, 0
    for shard, names in SHARDS.items():
        save_file({n: tensors[n] for n in names}, str(root / shard), metadata={"format": "pt"}, **options)
        for n in names:
            weight_map[n] = shard
            total += tensors[n].numel() * tensors[n].element_size()
    index = {"metadata": {"total_size": total}, "weight_map": weight_map}
    (root / "model.safetensors.index.json").write_text(json.dumps(index))
    return root


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    root = tmp_path_factory.mktemp("hub-accelerate")
    customer = cryptotensors.generate_key("X25519")
    publisher = cryptotensors.generate_key("Ed25519")
    plain = _save_dir(root / "plain", safetensors.torch.save_file)  # the stock writer
    enc = _save_dir(
        root / "enc", cryptotensors.torch.save_file,
        encrypt_for=[cryptotensors.public_key(customer)], sign_with=publisher,
    )
    keys = root / "keys.jwks"
    keys.write_text(json.dumps({"keys": [customer]}))
    signers = root / "signers.jwks"
    signers.write_text(json.dumps({"keys": [cryptotensors.public_key(publisher)]}))
    return type("Files", (), dict(root=root, plain=plain, enc=enc, keys=keys, signers=signers, customer=customer))


@pytest.fixture
def no_keys(monkeypatch, tmp_path):
    """No key anywhere: not in the environment, not in a configuration file."""
    for name in ("CRYPTOTENSORS_KEYS", "CRYPTOTENSORS_TRUSTED_SIGNERS"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("CRYPTOTENSORS_CONFIG_DIR", str(tmp_path / "no-config"))


@pytest.fixture
def patched(no_keys):
    if _patch.is_patched():
        pytest.skip("transparent mode is on for the whole session (CRYPTOTENSORS_PATCH)")
    cryptotensors.patch()
    try:
        yield
    finally:
        cryptotensors.unpatch()


def _described(meta):
    """A SafetensorsFileMetadata as {name: (dtype, shape)}."""
    return {name: (info.dtype, list(info.shape)) for name, info in meta.tensors.items()}


# -- huggingface_hub: header only ------------------------------------------------------------


def test_hub_parses_encrypted_headers_without_a_key(files, no_keys):
    tensors = _tensors()
    expected_dtypes = {torch.float32: "F32", torch.bfloat16: "BF16", torch.float16: "F16", torch.int64: "I64", torch.bool: "BOOL"}
    for shard, names in SHARDS.items():
        plain = hub.parse_local_safetensors_file_metadata(files.plain / shard)
        enc = hub.parse_local_safetensors_file_metadata(files.enc / shard)
        assert _described(enc) == _described(plain)
        assert _described(enc) == {n: (expected_dtypes[tensors[n].dtype], list(tensors[n].shape)) for n in names}
        assert enc.parameter_count == plain.parameter_count
        assert enc.metadata["format"] == "pt"
        assert "__cryptotensors__" in enc.metadata  # what tells a header-only reader the file is encrypted

        # the helpers behind HfApi.get_safetensors_metadata / parse_safetensors_file_metadata,
        # fed the bytes the Hub would serve (a range request for the header)
        raw = (files.enc / shard).read_bytes()
        size = huggingface_hub.hf_api._get_safetensors_metadata_size(raw[:8], shard, "local")
        assert size <= hub.constants.SAFETENSORS_MAX_HEADER_LENGTH
        parsed = huggingface_hub.hf_api._parse_safetensors_header(raw[8 : 8 + size], shard, "local")
        assert _described(parsed) == _described(plain)

    repo_plain = hub.get_local_safetensors_metadata(files.plain)
    repo_enc = hub.get_local_safetensors_metadata(files.enc)
    assert repo_enc.sharded and repo_enc.weight_map == repo_plain.weight_map
    assert repo_enc.parameter_count == repo_plain.parameter_count
    assert {f: _described(m) for f, m in repo_enc.files_metadata.items()} == {
        f: _described(m) for f, m in repo_plain.files_metadata.items()
    }


# -- accelerate: one safe_open per tensor ----------------------------------------------------


def _index(directory: Path, dtypes=None):
    index = json.loads((directory / "model.safetensors.index.json").read_text())["weight_map"]
    out = {name: {"safetensors_file": str(directory / shard), "weight_name": name} for name, shard in index.items()}
    for name, dtype in (dtypes or {}).items():
        out[name]["dtype"] = dtype
    return out


def test_accelerate_offloaded_weights_loader(files, patched, monkeypatch):
    Loader = accelerate.utils.offload.OffloadedWeightsLoader
    assert accelerate.utils.offload.safe_open is safetensors.safe_open  # rebound by patch()
    assert issubclass(safetensors.safe_open, cryptotensors.safe_open)
    monkeypatch.setenv("CRYPTOTENSORS_KEYS", str(files.keys))
    monkeypatch.setenv("CRYPTOTENSORS_TRUSTED_SIGNERS", str(files.signers))

    opened = []
    init = safetensors.safe_open.__init__

    def counting(self, filename, *args, **kwargs):
        opened.append(filename)
        init(self, filename, *args, **kwargs)

    monkeypatch.setattr(safetensors.safe_open, "__init__", counting)
    tensors = _tensors()
    for directory in (files.enc, files.plain):
        if directory == files.plain:  # a trusted signer refuses unsigned files, plain ones included
            monkeypatch.delenv("CRYPTOTENSORS_TRUSTED_SIGNERS")
        opened.clear()
        loader = Loader(index=_index(directory, {"model.layers.0.input_layernorm.weight": "float16"}))
        assert sorted(loader) == sorted(tensors)
        for name in loader:
            got = loader[name]
            want = tensors[name]
            if name == "model.layers.0.input_layernorm.weight":
                want = want.to(torch.float16)
            assert got.dtype == want.dtype and got.shape == want.shape and torch.equal(got, want), name
        assert len(opened) == len(tensors)  # once per tensor, as accelerate does
        assert {Path(p).parent for p in opened} == {directory}

    # accelerate's whole-file loader: metadata()["format"] check, then load_file (also per device)
    monkeypatch.setenv("CRYPTOTENSORS_TRUSTED_SIGNERS", str(files.signers))
    for shard, names in SHARDS.items():
        for device_map in (None, {"": "cpu"}):
            got = accelerate.utils.modeling.load_state_dict(str(files.enc / shard), device_map=device_map)
            assert got.keys() == set(names)
            for n in names:
                assert torch.equal(got[n], tensors[n]), n


def test_accelerate_surfaces_our_errors(files, patched, monkeypatch):
    """accelerate catches only TypeError around safe_open: a missing key or an
    untrusted signer reaches the caller as our error, never as ciphertext."""
    Loader = accelerate.utils.offload.OffloadedWeightsLoader
    name = "model.embed_tokens.weight"
    loader = Loader(index=_index(files.enc))
    with pytest.raises(cryptotensors.KeyNotFoundError, match="No key given can decrypt this file"):
        loader[name]
    monkeypatch.setenv("CRYPTOTENSORS_KEYS", str(files.keys))
    other = cryptotensors.public_key(cryptotensors.generate_key("Ed25519"))
    monkeypatch.setenv("CRYPTOTENSORS_TRUSTED_SIGNERS", json.dumps(other))
    with pytest.raises(cryptotensors.SignatureError):
        loader[name]
    monkeypatch.delenv("CRYPTOTENSORS_TRUSTED_SIGNERS")
    assert torch.equal(loader[name], _tensors()[name])
