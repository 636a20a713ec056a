"""torch save and load, as safetensors.torch, with encryption options.

Also the helpers that other libraries import from safetensors.torch:
storage_ptr, storage_size, _find_shared_tensors, _remove_duplicate_names, _TYPES.
"""

from __future__ import annotations

import os
from collections import defaultdict
from typing import Dict, List, Optional, Set, Tuple, Union

import torch

from ._frameworks import TORCH_LISTED, Torch, torch_bytes, torch_types
from ._frameworks import torch_dtype as _getdtype  # noqa: F401 (safetensors.torch has it too)
from ._open import safe_open
from ._serialize import TensorSpec, open_bytes, serialize, serialize_file

# safetensors.torch._TYPES, which other libraries import: the dtypes it lists,
# in its order, that this torch has.
_TYPES = {code: torch_types()[code] for code in TORCH_LISTED if code in torch_types()}
# Every torch dtype the format has a name for.
_CODES = {tdtype: code for code, tdtype in torch_types().items()}


def storage_ptr(tensor: torch.Tensor) -> int:
    """Address of the tensor's storage (0 where it has none, e.g. meta tensors)."""
    try:
        return tensor.untyped_storage().data_ptr()
    except Exception:
        try:
            return tensor.storage().data_ptr()
        except NotImplementedError:
            return 0


def _end_ptr(tensor: torch.Tensor) -> int:
    if tensor.nelement():
        return tensor.view(-1)[-1].data_ptr() + tensor.element_size()
    return tensor.data_ptr()


def storage_size(tensor: torch.Tensor) -> int:
    """Bytes of the tensor's storage."""
    try:
        return tensor.untyped_storage().nbytes()
    except AttributeError:
        try:
            return tensor.storage().size() * tensor.element_size()
        except NotImplementedError:
            return tensor.nelement() * tensor.element_size()


def _filter_shared_not_shared(tensors: List[Set[str]], state_dict: Dict[str, torch.Tensor]) -> List[Set[str]]:
    """Splits groups of one storage into groups whose byte ranges overlap."""
    out = []
    for names in tensors:
        if len(names) < 2:
            out.append(names)
            continue
        spans = sorted((state_dict[n].data_ptr(), _end_ptr(state_dict[n]), n) for n in names)
        current: Set[str] = {spans[0][2]}
        end = spans[0][1]
        for start, stop, name in spans[1:]:
            if start >= end:
                out.append(current)
                current, end = {name}, stop
            else:
                current.add(name)
                end = max(end, stop)
        out.append(current)
    return out


def _find_shared_tensors(state_dict: Dict[str, torch.Tensor]) -> List[Set[str]]:
    """Groups of names whose tensors share memory."""
    groups = defaultdict(set)
    for k, v in state_dict.items():
        if v.device != torch.device("meta") and storage_ptr(v) != 0 and storage_size(v) != 0:
            groups[(v.device, storage_ptr(v), storage_size(v))].add(k)
    return _filter_shared_not_shared(list(sorted(groups.values())), state_dict)


def _is_complete(tensor: torch.Tensor) -> bool:
    return tensor.data_ptr() == storage_ptr(tensor) and tensor.nelement() * tensor.element_size() == storage_size(tensor)


def _remove_duplicate_names(
    state_dict: Dict[str, torch.Tensor],
    *,
    preferred_names: Optional[List[str]] = None,
    discard_names: Optional[List[str]] = None,
) -> Dict[str, List[str]]:
    """Which names to drop so that no memory is saved twice.

    Every group of names sharing memory (see `_find_shared_tensors`; a name
    alone in its storage is a group too) keeps one name whose tensor covers
    the whole storage: the first, sorted, of those in `preferred_names`, else
    of those not in `discard_names`, else of all. The result maps each kept
    name to the other names of its group, sorted (groups of one name do not
    appear). A group where no tensor covers the storage is refused with a
    RuntimeError, as saving it could store much more than its tensors hold.
    """
    preferred = set(preferred_names or ())
    discard = set(discard_names or ())
    to_remove: Dict[str, List[str]] = defaultdict(list)
    for group in _find_shared_tensors(state_dict):
        complete = sorted(n for n in group if _is_complete(state_dict[n]))
        if not complete:
            raise RuntimeError(
                "Error while trying to find names to remove to save state dict, but found no suitable name to keep"
                f" for saving amongst: {group}. None is covering the entire storage.Refusing to save/load the model"
                " since you could be storing much more memory than needed. Please refer to"
                " https://huggingface.co/docs/safetensors/torch_shared_tensors for more information. Or open an"
                " issue."
            )
        keep = ([n for n in complete if n in preferred] or [n for n in complete if n not in discard] or complete)[0]
        others = [n for n in sorted(group) if n != keep]
        if others:
            to_remove[keep].extend(others)
    return to_remove


def _specs(tensors: Dict[str, torch.Tensor]) -> Tuple[list, Dict[str, TensorSpec]]:
    """Dense contiguous CPU tensors and their TensorSpecs; the tensors are
    returned so that the caller keeps them alive while serializing. Refuses
    what safetensors refuses, with the same errors."""
    if not isinstance(tensors, dict):
        raise ValueError(f"Expected a dict of [str, torch.Tensor] but received {type(tensors)}")
    sparse = []
    for k, v in tensors.items():
        if not isinstance(v, torch.Tensor):
            raise ValueError(f"Key `{k}` is invalid, expected torch.Tensor but received {type(v)}")
        if v.layout != torch.strided:
            sparse.append(k)
    if sparse:
        raise ValueError(
            f"You are trying to save a sparse tensors: `{sparse}` which this library does not support."
            " You can make it a dense tensor before saving with `.to_dense()` but be aware this might"
            " make a much larger file than needed."
        )
    shared = [names for names in _find_shared_tensors(tensors) if len(names) > 1]
    if shared:
        raise RuntimeError(
            f"Some tensors share memory, this will lead to duplicate memory on disk and potential differences when"
            f" loading them again: {shared}.\nA potential way to correctly save your model is to use `save_model`.\n"
            "More information at https://huggingface.co/docs/safetensors/torch_shared_tensors"
        )
    keep, specs = [], {}
    for name, t in tensors.items():
        if not t.is_contiguous():
            raise ValueError(
                f"You are trying to save a non contiguous tensor: `{name}` which is not allowed. It either means you"
                " are trying to save tensors which are reference of each other in which case it's recommended to save"
                " only the full tensors, and reslice at load time, or simply call `.contiguous()` on your tensor to"
                " pack it before saving."
            )
        if t.device.type != "cpu":
            t = t.to("cpu")
        _CODES[t.dtype]  # KeyError for dtypes the format lacks, as in safetensors
        if t.is_conj() or t.is_neg():  # the values, not a view's lazy conjugate or negation
            t = t.resolve_conj().resolve_neg()
        if t.requires_grad:  # .numpy() refuses tensors that require grad
            t = t.detach()
        keep.append(t)
        specs[name] = TensorSpec._of(str(t.dtype).split(".")[-1], list(t.shape), torch_bytes(t), t.data_ptr())
    return keep, specs


def save(tensors: Dict[str, torch.Tensor], metadata: Optional[Dict[str, str]] = None, **options) -> bytes:
    """Saves tensors to bytes. Options: encrypt_for, encrypted_tensors, algorithm, segment_size, sign_with."""
    keep, specs = _specs(tensors)
    out = serialize(specs, metadata=metadata, **options)
    del keep
    return out


def save_file(
    tensors: Dict[str, torch.Tensor], filename: Union[str, os.PathLike], metadata: Optional[Dict[str, str]] = None, **options
) -> None:
    """Saves tensors to a file, atomically (temporary file, then rename)."""
    keep, specs = _specs(tensors)
    serialize_file(specs, filename, metadata=metadata, **options)
    del keep


def load_file(
    filename: Union[str, os.PathLike], device: Union[str, int] = "cpu", *, backend: str = "mmap", **load_options
) -> Dict[str, torch.Tensor]:
    """Loads every tensor of a file. Options: keys, trusted_signers, require_encryption, num_threads."""
    with safe_open(filename, framework="pt", device=device, backend=backend, _every_tensor=True, **load_options) as f:
        return f.get_tensors()


def load(data: bytes, **load_options) -> Dict[str, torch.Tensor]:
    """Loads tensors from bytes; encrypted tensors are authenticated before they are returned."""
    h = open_bytes(data, framework="pt", **load_options)
    fw = Torch()
    out = {}
    for name in h.offset_keys():
        dtype, shape, nbytes, _, _ = h.info(name)
        if dtype not in torch_types():
            raise KeyError(dtype)  # as safetensors, for dtypes torch lacks
        t, dest = fw.empty(dtype, shape, nbytes)
        h.read_into(name, dest)
        out[name] = t
    return out


def save_model(
    model: torch.nn.Module, filename: str, metadata: Optional[Dict[str, str]] = None, force_contiguous: bool = True, **options
) -> None:
    """Saves a model's state dict, dropping the duplicate names of shared tensors."""
    state_dict = model.state_dict()
    to_removes = _remove_duplicate_names(state_dict)
    for kept_name, to_remove_group in to_removes.items():
        for to_remove in to_remove_group:
            if metadata is None:
                metadata = {}
            if to_remove not in metadata:
                metadata[to_remove] = kept_name
            del state_dict[to_remove]
    if force_contiguous:
        state_dict = {k: v.contiguous() for k, v in state_dict.items()}
    try:
        save_file(state_dict, filename, metadata=metadata, **options)
    except ValueError as e:
        raise ValueError(f"{e} Or use save_model(..., force_contiguous=True), read the docs for potential caveats.") from e


def load_model(
    model: torch.nn.Module,
    filename: Union[str, os.PathLike],
    strict: bool = True,
    device: Union[str, int] = "cpu",
    *,
    backend: str = "mmap",
    **load_options,
) -> Tuple[List[str], List[str]]:
    """Loads a file saved by save_model into `model`; returns (missing, unexpected)."""
    state_dict = load_file(filename, device=device, backend=backend, **load_options)
    model_state_dict = model.state_dict()
    to_removes = _remove_duplicate_names(model_state_dict, preferred_names=list(state_dict.keys()))
    missing, unexpected = model.load_state_dict(state_dict, strict=False)
    missing = set(missing)
    for to_remove_group in to_removes.values():
        for to_remove in to_remove_group:
            if to_remove not in missing:
                unexpected.append(to_remove)
            else:
                missing.remove(to_remove)
    if strict and (missing or unexpected):
        missing_keys = ", ".join(f'"{k}"' for k in sorted(missing))
        unexpected_keys = ", ".join(f'"{k}"' for k in sorted(unexpected))
        error = f"Error(s) in loading state_dict for {model.__class__.__name__}:"
        if missing:
            error += f"\n    Missing key(s) in state_dict: {missing_keys}"
        if unexpected:
            error += f"\n    Unexpected key(s) in state_dict: {unexpected_keys}"
        raise RuntimeError(error)
    return list(missing), unexpected


__all__ = ["save", "save_file", "load", "load_file", "save_model", "load_model", "storage_ptr", "storage_size"]
