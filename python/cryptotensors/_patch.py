"""Transparent mode: unchanged code that loads through the real `safetensors`
package reads cryptotensors files.

`patch()` replaces the loaders of `safetensors` with cryptotensors' own:
`safetensors.safe_open`, `safetensors.torch.load_file` and `.load`,
`safetensors.numpy.load_file` and `.load`. It also rebinds the references that
other modules took at import time (`from safetensors import safe_open` in
transformers, accelerate, vLLM, huggingface_hub, ...): every module attribute
that *is* one of those originals now names the replacement. Modules imported
later get the replacements from the patched `safetensors` modules, and
`safetensors` modules imported later are patched by an import hook as soon as
they have run, before anyone can import names from them. So patch() never
imports safetensors or torch itself.

Everything else of `safetensors` stays its own (`save_file`, `serialize`,
`SafetensorError`, `safetensors.torch._TYPES`, the helpers of
`safetensors.torch`); its own `load_model` and the loaders of its other
framework modules call the patched names, so they read cryptotensors files too.

Plain files load exactly as before (the same values; zero-copy views of
torch's file map with the "mmap" backend); encrypted ones decrypt with the keys
of the provider chain (CRYPTOTENSORS_KEYS, the configuration file, key
providers), which spawned worker processes inherit.

The replacements are this module's `safe_open` (a subclass of
cryptotensors.safe_open) and thin functions that call cryptotensors.torch /
cryptotensors.numpy: distinct objects, so that unpatch() can tell a reference
that patch() installed from one that code took from cryptotensors on purpose,
and importable by name, so that they pickle.

`unpatch()` puts every original back: in the `safetensors` modules and in every
module that holds a replacement, references taken while patched included.
Both are idempotent and serialized by a lock.

Activation without code changes: CRYPTOTENSORS_PATCH=1 (or true, yes, on)
makes importing cryptotensors call patch(), and the one-line start-up file
PTH_NAME in site-packages (PTH_LINE) imports cryptotensors at interpreter
start-up when the variable is set; otherwise that line costs one look-up in
os.environ.

Caveat: our errors derive from cryptotensors.SafetensorError, not from
safetensors.SafetensorError, so `except safetensors.SafetensorError` around a
patched call does not catch them.
"""

from __future__ import annotations

import contextlib
import os
import sys
import threading
import types
from typing import Any, Dict, List, Optional, Tuple

from . import _open
from ._importhook import AfterImport

ENV = "CRYPTOTENSORS_PATCH"

# The start-up .pth file that the wheel installs into site-packages, and its
# one line. site executes .pth lines that begin with "import"; this one imports
# cryptotensors (which then reads the variable itself, see _env_enabled) only
# when the variable is present at all. The name sorts after "cryptotensors.pth"
# and "__editable__.*.pth", which editable installs use to put the package on
# sys.path, so that the import finds the package there too.
PTH_NAME = "cryptotensors_patch.pth"
PTH_LINE = "import os; 'CRYPTOTENSORS_PATCH' in os.environ and __import__('cryptotensors')\n"


# -- the replacements --------------------------------------------------------------------------


_require_lock = threading.Lock()
_require_depth = 0


@contextlib.contextmanager
def requiring_encryption():
    """While this is active, in any thread, every open through the
    replacements below refuses a file that is not encrypted (IntegrityError),
    whatever its caller passed: the check is made by the open that reads the
    file, so a file swapped after an earlier check cannot load. A loader
    that needs encryption (vllm_plugin's "cryptotensors" load format) runs
    its weight iteration inside it; thread pools of that iteration are
    covered because the state is per process."""
    global _require_depth
    with _require_lock:
        _require_depth += 1
    try:
        yield
    finally:
        with _require_lock:
            _require_depth -= 1


def _required(load_options: dict) -> dict:
    if _require_depth:
        load_options["require_encryption"] = True
    return load_options


class safe_open(_open.safe_open):
    __doc__ = _open.safe_open.__doc__

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **_required(kwargs))


def torch_load_file(filename, device="cpu", **load_options):
    """cryptotensors.torch.load_file, installed as safetensors.torch.load_file."""
    from .torch import load_file

    return load_file(filename, device, **_required(load_options))


def torch_load(data, **load_options):
    """cryptotensors.torch.load, installed as safetensors.torch.load."""
    from .torch import load

    return load(data, **_required(load_options))


def numpy_load_file(filename, **load_options):
    """cryptotensors.numpy.load_file, installed as safetensors.numpy.load_file."""
    from .numpy import load_file

    return load_file(filename, **_required(load_options))


def numpy_load(data, **load_options):
    """cryptotensors.numpy.load, installed as safetensors.numpy.load."""
    from .numpy import load

    return load(data, **_required(load_options))


# safetensors module -> {attribute: its replacement}
_TARGETS: Dict[str, Dict[str, Any]] = {
    "safetensors": {"safe_open": safe_open},
    "safetensors.torch": {"load_file": torch_load_file, "load": torch_load},
    "safetensors.numpy": {"load_file": numpy_load_file, "load": numpy_load},
}
_REPLACEMENTS = {id(rep) for attrs in _TARGETS.values() for rep in attrs.values()}
# Modules whose attributes are never rewritten: ours, and the native module
# that implements safetensors (its attributes are where the originals live).
_SKIP_PREFIXES = ("cryptotensors.", "safetensors._safetensors_rust")

_lock = threading.RLock()
_active = False
_finder: Optional[AfterImport] = None
# id(original) -> (original, replacement) and id(replacement) -> (replacement, original),
# for the originals found while patched (the objects are held here, so ids stay theirs).
_by_original: Dict[int, Tuple[Any, Any]] = {}
_by_replacement: Dict[int, Tuple[Any, Any]] = {}


def _env_enabled() -> bool:
    return os.environ.get(ENV, "").strip().lower() in ("1", "true", "yes", "on")


def _patch_safetensors_module(module: types.ModuleType) -> None:
    """Replaces the loaders of one safetensors module (lock held)."""
    d = module.__dict__
    for attr, rep in _TARGETS.get(module.__name__, {}).items():
        original = d.get(attr)
        if original is None or id(original) in _REPLACEMENTS:
            continue
        _by_original[id(original)] = (original, rep)
        _by_replacement[id(rep)] = (rep, original)
        d[attr] = rep


def _modules() -> List[types.ModuleType]:
    return [
        module
        for name, module in list(sys.modules.items())
        if isinstance(module, types.ModuleType) and name != "cryptotensors" and not name.startswith(_SKIP_PREFIXES)
    ]


def _rebind(table: Dict[int, Tuple[Any, Any]]) -> int:
    """Every module attribute that is a key object of `table` becomes its
    value; returns how many were rebound (lock held)."""
    count = 0
    for module in _modules():
        try:
            d = module.__dict__
            hits = [(k, v) for k, v in list(d.items()) if id(v) in table and table[id(v)][0] is v]
        except Exception:  # an exotic module object: nothing of ours to rebind
            continue
        for k, v in hits:
            if d.get(k) is v:
                d[k] = table[id(v)][1]
                count += 1
    return count


# -- the import hook ---------------------------------------------------------------------------


def _after_import(module) -> None:
    """Patches a safetensors module that has just run (see _importhook)."""
    with _lock:
        if _active:
            _patch_safetensors_module(module)


# -- the API -----------------------------------------------------------------------------------


def patch() -> None:
    """Routes safetensors' loaders through cryptotensors: replaces
    safetensors.safe_open, safetensors.torch.load_file/load and
    safetensors.numpy.load_file/load, in those modules and wherever another
    module bound them at import, and patches safetensors modules imported later.
    Idempotent; unpatch() undoes it."""
    global _active, _finder
    with _lock:
        if _finder is None:
            _finder = AfterImport(_TARGETS, _after_import)
            _finder.install()
        _active = True
        for name in _TARGETS:
            module = sys.modules.get(name)
            if isinstance(module, types.ModuleType):
                _patch_safetensors_module(module)
        if _by_original:
            _rebind(_by_original)


def unpatch() -> None:
    """Puts safetensors' own loaders back everywhere patch() put ours,
    references taken while patched included. Idempotent."""
    global _active, _finder
    with _lock:
        _active = False
        if _finder is not None:
            _finder.remove()
            _finder = None
        if _by_replacement:
            _rebind(_by_replacement)
        _by_original.clear()
        _by_replacement.clear()


def is_patched() -> bool:
    """Whether patch() is in effect."""
    return _active


def original(obj: Any) -> Any:
    """safetensors' own object behind a replacement installed now (else `obj`)."""
    hit = _by_replacement.get(id(obj))
    return hit[1] if hit is not None and hit[0] is obj else obj


if _env_enabled():
    patch()
