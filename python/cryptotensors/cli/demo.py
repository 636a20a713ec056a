"""`cryptotensors demo`: the whole story on a tiny model, offline."""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import sys
import time
from pathlib import Path
from typing import Callable, Iterator, List, Optional, Sequence, Tuple

from .. import (
    _keys,
)
from .. import inspect as inspect_file
from ._args import Command
from ._errors import EXIT_FAILURE, EXIT_OK, EXIT_USAGE, PROG, CliError, _about
from ._output import _human


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
    from . import main  # the package imports this module: main exists once a command runs

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
        from ..torch import load_file

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
        from ..numpy import save_file

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
        from ..numpy import load_file

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


def register(command: Command) -> None:
    """Adds the `demo` command."""
    p = command("demo", cmd_demo, "encrypt, sign, verify and load back a tiny model, offline, step by step")
    p.add_argument("--dir", type=Path, help="keep the outputs in this (new or empty) directory")
    p.add_argument("--no-transformers", action="store_true", help="use a numpy state dict even if transformers is installed")
