"""vLLM plugin: vLLM loads cryptotensors models with no changes to vLLM.

`register()` is the `vllm.general_plugins` entry point (see pyproject.toml),
which vLLM calls in every process it starts: the front end, the engine core
and each worker, spawned or forked. It:

1. calls `cryptotensors.patch()`, so vLLM's own safetensors path (the
   `safe_open`, `load_file` and `load` that
   `vllm.model_executor.model_loader.weight_utils` imported from
   `safetensors.torch`) reads encrypted files. Keys come from the provider
   chain of that process: CRYPTOTENSORS_KEYS, the configuration file and key
   providers, which spawned workers inherit or load themselves. Load formats
   "auto", "hf", "safetensors" and "mistral" (with any
   `safetensors_load_strategy`, and `enable_multithread_load`) decrypt
   transparently; plain files load exactly as before.
2. registers the load format "cryptotensors" (`--load-format cryptotensors`):
   vLLM's safetensors loader (`DefaultModelLoader` with load format
   "safetensors": `*.safetensors` files only, never a `.bin`/`.pt` fallback)
   with the patch guaranteed on. With CRYPTOTENSORS_REQUIRE_ENCRYPTION=1 it
   also refuses, before reading any tensor, every weight file that is not
   encrypted, so a model swapped for a plain one does not load silently;
   and every open its weight iteration makes (safe_open, load_file, or
   load of the bytes, in any thread) requires encryption itself, so a shard
   replaced by a plain one after that check fails its own open
   (IntegrityError) instead of loading.
3. guards the loaders that read files themselves and so cannot decrypt or
   verify: fastsafetensors, runai_streamer (and runai_streamer_sharded) and
   instanttensor. Their iterators (`*_weights_iterator` in weight_utils,
   wherever vLLM bound them) are wrapped: given a cryptotensors-protected
   file (encrypted, or signed) they raise SafetensorError naming the file and
   the load formats to use instead, before their library is imported or any
   byte of tensor data is read. Plain files pass through unchanged. The
   check reads the header only (`_core.protection`).

Steps 2 and 3 need vLLM's model-loader package, which is slow to import, so
when it is not imported yet register() installs a one-shot import hook and
does them right after that package has been imported. register() never
imports vLLM or torch itself, is idempotent, and never raises: if something
does not fit (another vLLM version), it logs a warning and vLLM runs on.
"""

from __future__ import annotations

import functools
import inspect as _inspect
import logging
import os
import sys
import threading
import types
from typing import Any, Callable, Dict, Iterable, List, Optional

from ._importhook import AfterImport

LOAD_FORMAT = "cryptotensors"
REQUIRE_ENV = "CRYPTOTENSORS_REQUIRE_ENCRYPTION"
MODEL_LOADER = "vllm.model_executor.model_loader"

# weight_utils' iterators that read files themselves -> the load format that uses them
DIRECT_READERS: Dict[str, str] = {
    "fastsafetensors_weights_iterator": "fastsafetensors",
    "runai_safetensors_weights_iterator": "runai_streamer",
    "instanttensor_weights_iterator": "instanttensor",
}

logger = logging.getLogger("cryptotensors.vllm")

_lock = threading.RLock()
_finder: Optional[AfterImport] = None
_loader_cls: Optional[type] = None


def require_encryption() -> bool:
    """Whether CRYPTOTENSORS_REQUIRE_ENCRYPTION asks the "cryptotensors" load
    format to refuse weight files that are not encrypted."""
    return os.environ.get(REQUIRE_ENV, "").strip().lower() in ("1", "true", "yes", "on")


def protection(path: Any) -> Optional[str]:
    """"encrypted" or "signed" for a cryptotensors-protected file, from its
    header alone (the core's header parser, `_core.protection`); None for a
    plain safetensors file and for anything whose header cannot be read (a
    remote URI, a missing or foreign file): the caller's own loader reports
    those as it always did. A damaged or unknown envelope, and a
    cryptotensors 0.2.3 file, count as protected: such a file never loads
    through cryptotensors, and a direct reader must not load it either."""
    from . import _core

    try:
        return _core.protection(os.fspath(path))
    except Exception:
        return None


def _paths(files: Any) -> List[Any]:
    if isinstance(files, (str, bytes, os.PathLike)):
        return [files]
    try:
        return list(files)
    except TypeError:
        return []


def check_direct_reader(files: Iterable[Any], load_format: str) -> None:
    """Raises SafetensorError if a loader that reads `files` itself (vLLM's
    `load_format`) would get a cryptotensors-protected one."""
    from . import SafetensorError

    for path in _paths(files):
        kind = protection(path)
        if kind is None:
            continue
        cannot = "decrypt it" if kind == "encrypted" else "verify its signature and integrity"
        raise SafetensorError(
            f"{os.fspath(path)} is {kind} by cryptotensors; vLLM's load format '{load_format}' reads "
            f"files directly and cannot {cannot}; use --load-format safetensors or {LOAD_FORMAT}"
        )


def check_encrypted(files: Iterable[Any]) -> None:
    """Raises SafetensorError for the first of `files` that is not encrypted."""
    from . import SafetensorError

    for path in _paths(files):
        if protection(path) != "encrypted":
            raise SafetensorError(
                f"{os.fspath(path)} is not encrypted, but load format '{LOAD_FORMAT}' requires "
                f"encryption ({REQUIRE_ENV} is set)"
            )


def encrypted_only(weights: Iterable[Any]) -> Iterable[Any]:
    """Iterates `weights` with every open through the patched safetensors
    loaders requiring encryption (see _patch.requiring_encryption). Like the
    iterators it wraps, it does nothing until first iterated, and the
    requirement lasts until it is exhausted or closed."""
    from ._patch import requiring_encryption

    with requiring_encryption():
        yield from weights


# -- guarding the direct readers ---------------------------------------------------------------


def _guard(fn: Callable, load_format: str) -> Callable:
    """A generator function that checks the files, then yields from `fn`.
    Like `fn`, it does nothing until first iterated."""
    try:
        sig: Optional[_inspect.Signature] = _inspect.signature(fn)
    except (TypeError, ValueError):
        sig = None

    @functools.wraps(fn)
    def guarded(*args, **kwargs):
        files: Any = None
        if sig is not None:
            try:
                files = sig.bind_partial(*args, **kwargs).arguments.get("hf_weights_files")
            except TypeError:
                files = None
        if files is None:
            files = args[0] if args else kwargs.get("hf_weights_files", ())
        check_direct_reader(files, load_format)
        yield from fn(*args, **kwargs)

    guarded.__cryptotensors_guarded__ = fn  # type: ignore[attr-defined]
    return guarded


def _rebind(table: Dict[int, tuple]) -> None:
    """Every module attribute that is a key object of `table` becomes its
    replacement (modules that did `from weight_utils import ...`)."""
    for name, module in list(sys.modules.items()):
        if not isinstance(module, types.ModuleType) or name.startswith("cryptotensors"):
            continue
        try:
            d = module.__dict__
            hits = [(k, v) for k, v in list(d.items()) if id(v) in table and table[id(v)][0] is v]
        except Exception:
            continue
        for k, v in hits:
            if d.get(k) is v:
                d[k] = table[id(v)][1]


def _guard_direct_readers(weight_utils: types.ModuleType) -> List[str]:
    table: Dict[int, tuple] = {}
    guarded = []
    for name, load_format in DIRECT_READERS.items():
        fn = weight_utils.__dict__.get(name)
        if fn is None:
            continue
        guarded.append(name)
        if getattr(fn, "__cryptotensors_guarded__", None) is not None:
            continue
        table[id(fn)] = (fn, _guard(fn, load_format))
    if table:
        _rebind(table)
    return guarded


# -- the "cryptotensors" load format -----------------------------------------------------------


def _as_safetensors(load_config: Any) -> Any:
    """A copy of vLLM's LoadConfig with load format "safetensors"."""
    import copy
    import dataclasses

    try:
        return dataclasses.replace(load_config, load_format="safetensors")
    except Exception:
        clone = copy.copy(load_config)
        object.__setattr__(clone, "load_format", "safetensors")
        return clone


def loader_class() -> type:
    """The model loader of load format "cryptotensors" (imports vLLM)."""
    global _loader_cls
    with _lock:
        if _loader_cls is not None:
            return _loader_cls
        from vllm.model_executor.model_loader.default_loader import DefaultModelLoader

        class CryptotensorsModelLoader(DefaultModelLoader):
            """vLLM's safetensors loader, reading through cryptotensors.

            Loads `*.safetensors` files like load format "safetensors" (its
            `load_config` is a copy with that load format: vLLM's loader knows
            no other), with cryptotensors.patch() on, so encrypted files
            decrypt with the keys of this process. With
            CRYPTOTENSORS_REQUIRE_ENCRYPTION set it refuses weight files that
            are not encrypted, before reading any of them."""

            def __init__(self, load_config):
                from . import patch

                patch()
                super().__init__(_as_safetensors(load_config))
                self.requested_load_format = getattr(load_config, "load_format", LOAD_FORMAT)

            def _prepare_weights(self, *args, **kwargs):
                prepared = super()._prepare_weights(*args, **kwargs)
                if require_encryption():
                    check_encrypted(prepared[1])
                return prepared

            def _get_weights_iterator(self, *args, **kwargs):
                weights = super()._get_weights_iterator(*args, **kwargs)
                return encrypted_only(weights) if require_encryption() else weights

        CryptotensorsModelLoader.__module__ = __name__
        CryptotensorsModelLoader.__qualname__ = "CryptotensorsModelLoader"
        globals()["CryptotensorsModelLoader"] = CryptotensorsModelLoader
        _loader_cls = CryptotensorsModelLoader
        return _loader_cls


def _install(model_loader: types.ModuleType) -> None:
    """Steps 2 and 3, once vLLM's model-loader package is imported. Each step
    that fails logs a warning."""
    try:
        from vllm.model_executor.model_loader import weight_utils

        guarded = _guard_direct_readers(weight_utils)
        missing = sorted(set(DIRECT_READERS) - set(guarded))
        if missing:
            logger.debug("cryptotensors: this vLLM has no %s", ", ".join(missing))
    except Exception as e:
        logger.warning(
            "cryptotensors: could not guard vLLM's direct-read loaders (fastsafetensors, runai_streamer, "
            "instanttensor); do not use them with encrypted files: %r", e
        )
    try:
        cls = loader_class()
        table = getattr(model_loader, "_LOAD_FORMAT_TO_MODEL_LOADER", None)
        if not (isinstance(table, dict) and table.get(LOAD_FORMAT) is cls):
            model_loader.register_model_loader(LOAD_FORMAT)(cls)
    except Exception as e:
        logger.warning(
            "cryptotensors: could not register vLLM load format '%s' (load format 'safetensors' still "
            "decrypts): %r", LOAD_FORMAT, e
        )


# -- the one-shot import hook ------------------------------------------------------------------


def _on_model_loader(module) -> None:
    _remove_finder()
    _install(module)


def _remove_finder() -> None:
    global _finder
    with _lock:
        if _finder is not None:
            _finder.remove()
            _finder = None


def _when_model_loader_imported() -> None:
    global _finder
    with _lock:
        module = sys.modules.get(MODEL_LOADER)
        if module is not None:
            if hasattr(module, "register_model_loader"):
                _install(module)
            else:
                logger.warning(
                    "cryptotensors: %s is being imported or has no register_model_loader; load format '%s' "
                    "is not registered and the direct-read loaders are not guarded", MODEL_LOADER, LOAD_FORMAT
                )
            return
        if _finder is None:
            _finder = AfterImport([MODEL_LOADER], _on_model_loader)
            _finder.install()


# -- the entry point ---------------------------------------------------------------------------


def register() -> None:
    """The `vllm.general_plugins` entry point: see the module docstring.
    Cheap, idempotent, and it never raises."""
    try:
        from . import patch

        patch()
    except Exception as e:
        logger.warning("cryptotensors: could not patch safetensors; vLLM cannot read encrypted files: %r", e)
    try:
        _when_model_loader_imported()
    except Exception as e:
        logger.warning("cryptotensors: could not hook vLLM's model loader: %r", e)
