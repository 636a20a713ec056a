"""Deterministic, Llama-shaped tensor sets for the benchmarks.

The layout follows a Hugging Face Llama checkpoint (untied lm_head, grouped
query attention, SwiGLU MLP, RMSNorm weights); the width is picked from a few
real Llama-family shapes and the layer count is chosen so the payload lands
near the requested size.

Values are N(0, 0.02) (norm weights 1 + N(0, 0.02)), taken from one seeded
pool at per-tensor seeded offsets: deterministic and close to real weight
statistics, yet building 1 GiB costs about one memcpy. bf16 tensors are
numpy ``uint16`` arrays holding the bf16 bit patterns (numpy has no bf16);
``make_torch`` views the same buffers as ``torch.bfloat16`` without copying.

Only numpy is needed; torch is imported lazily by ``make_torch``. This file
runs under both the test venv and the reference venv.
"""

from __future__ import annotations

import argparse
import dataclasses

import numpy as np

GIB = 1 << 30
DTYPES = {"bf16": 2, "f32": 4}
SEED = 20240601
_POOL = 4_194_301  # prime, so tensors of power-of-two sizes don't line up with it


@dataclasses.dataclass(frozen=True)
class LlamaConfig:
    vocab: int
    hidden: int
    intermediate: int
    heads: int
    kv_heads: int
    layers: int

    @property
    def head_dim(self) -> int:
        return self.hidden // self.heads


# (vocab, hidden, intermediate, heads, kv_heads), widest first.
_PRESETS = [
    (32000, 4096, 11008, 32, 8),  # Llama-2-7B widths, GQA as in Llama-3
    (32000, 2048, 5632, 32, 4),  # TinyLlama-1.1B
    (32000, 1024, 2816, 16, 4),
    (32000, 512, 1408, 8, 2),
    (8000, 256, 704, 4, 1),
]


def tensor_specs(cfg: LlamaConfig) -> list[tuple[str, tuple[int, ...]]]:
    """(name, shape) in checkpoint order."""
    h, i, kv = cfg.hidden, cfg.intermediate, cfg.kv_heads * cfg.head_dim
    specs: list[tuple[str, tuple[int, ...]]] = [("model.embed_tokens.weight", (cfg.vocab, h))]
    for n in range(cfg.layers):
        p = f"model.layers.{n}."
        specs += [
            (p + "input_layernorm.weight", (h,)),
            (p + "self_attn.q_proj.weight", (h, h)),
            (p + "self_attn.k_proj.weight", (kv, h)),
            (p + "self_attn.v_proj.weight", (kv, h)),
            (p + "self_attn.o_proj.weight", (h, h)),
            (p + "post_attention_layernorm.weight", (h,)),
            (p + "mlp.gate_proj.weight", (i, h)),
            (p + "mlp.up_proj.weight", (i, h)),
            (p + "mlp.down_proj.weight", (h, i)),
        ]
    specs += [("model.norm.weight", (h,)), ("lm_head.weight", (cfg.vocab, h))]
    return specs


def _numel(shape: tuple[int, ...]) -> int:
    n = 1
    for d in shape:
        n *= d
    return n


def param_count(cfg: LlamaConfig) -> int:
    return sum(_numel(s) for _, s in tensor_specs(cfg))


def payload_bytes(cfg: LlamaConfig, dtype: str) -> int:
    return param_count(cfg) * DTYPES[dtype]


def choose_config(size_gib: float, dtype: str) -> LlamaConfig:
    """Widest preset that reaches the target within 10% with at least 4 layers
    and embedding + lm_head at most half the payload; else the narrowest."""
    target = size_gib * GIB / DTYPES[dtype]
    for vocab, h, i, heads, kv in _PRESETS:
        base = LlamaConfig(vocab, h, i, heads, kv, layers=0)
        fixed = param_count(base)
        per_layer = param_count(dataclasses.replace(base, layers=1)) - fixed
        layers = max(1, round((target - fixed) / per_layer))
        total = fixed + layers * per_layer
        fits = fixed <= 0.5 * target and layers >= 4 and abs(total / target - 1) <= 0.1
        if fits or (vocab, h) == _PRESETS[-1][:2]:
            return dataclasses.replace(base, layers=layers)
    raise AssertionError("unreachable")


def largest_tensor(cfg: LlamaConfig) -> str:
    """Name of the tensor used for the row-slice benchmark."""
    return max(tensor_specs(cfg), key=lambda s: _numel(s[1]))[0]


def _bf16_bits(x: np.ndarray) -> np.ndarray:
    """float32 -> bf16 bit patterns (uint16), round to nearest even."""
    u = x.astype(np.float32).view(np.uint32)
    return ((u + 0x7FFF + ((u >> 16) & 1)) >> 16).astype(np.uint16)


def _pool(dtype: str, seed: int) -> np.ndarray:
    vals = np.random.default_rng(seed).standard_normal(_POOL, dtype=np.float32) * 0.02
    vals = _bf16_bits(vals) if dtype == "bf16" else vals
    return np.concatenate([vals, vals])  # any window of _POOL items is contiguous


def np_dtype(dtype: str) -> type:
    return np.uint16 if dtype == "bf16" else np.float32


def make_numpy(cfg: LlamaConfig, dtype: str, seed: int = SEED, names=None) -> dict[str, np.ndarray]:
    """The tensor dict as numpy arrays (bf16 as uint16 bit patterns).

    ``names`` restricts the result to those tensors (same values as in the
    full set), for cheap verification of loaded data.
    """
    pool = _pool(dtype, seed)
    rng = np.random.default_rng(seed + 1)
    out: dict[str, np.ndarray] = {}
    for name, shape in tensor_specs(cfg):
        off = int(rng.integers(_POOL))  # drawn for every tensor: stable per name
        if names is not None and name not in names:
            continue
        n = _numel(shape)
        arr = np.empty(n, dtype=np_dtype(dtype))
        if name.endswith("norm.weight"):
            noise = pool[off : off + n]
            if dtype == "bf16":
                arr[:] = _bf16_bits((noise.astype(np.uint32) << 16).view(np.float32) + 1.0)
            else:
                arr[:] = noise + np.float32(1.0)
        else:
            pos = 0
            while pos < n:
                take = min(_POOL, n - pos)
                arr[pos : pos + take] = pool[off : off + take]
                pos += take
                off = (off + 7919) % _POOL  # avoid exact periodicity
        out[name] = arr.reshape(shape)
    return out


def make_torch(cfg: LlamaConfig, dtype: str, seed: int = SEED, names=None) -> dict:
    """Same data as ``make_numpy`` as torch tensors sharing its buffers."""
    import torch

    tdtype = torch.bfloat16 if dtype == "bf16" else torch.float32
    return {k: torch.from_numpy(v).view(tdtype) for k, v in make_numpy(cfg, dtype, seed, names).items()}


def describe(cfg: LlamaConfig, dtype: str) -> str:
    b = payload_bytes(cfg, dtype)
    return (
        f"Llama-shaped {dtype}: vocab={cfg.vocab} hidden={cfg.hidden} "
        f"intermediate={cfg.intermediate} heads={cfg.heads}/{cfg.kv_heads}kv "
        f"layers={cfg.layers}; {len(tensor_specs(cfg))} tensors, "
        f"{param_count(cfg) / 1e6:.1f}M params, {b / GIB:.3f} GiB"
    )


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--size-gib", type=float, default=1.0)
    ap.add_argument("--dtype", choices=sorted(DTYPES), default="bf16")
    args = ap.parse_args()
    cfg = choose_config(args.size_gib, args.dtype)
    print(describe(cfg, args.dtype))


if __name__ == "__main__":
    main()
