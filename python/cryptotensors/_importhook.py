"""An import hook that runs code right after a module has executed, before
anyone can import names from it: transparent mode patches safetensors modules
with it, and the vLLM plugin waits for vLLM's model loader.

Plain classes, duck-typed as importlib wants them: importlib.abc would cost
~10 ms at every start-up under the .pth line."""

from __future__ import annotations

import sys
from typing import Callable, Iterable


class _Loader:
    """Runs the real loader, gives the module its own loader back, then calls
    `then(module)`."""

    def __init__(self, loader, then: Callable):
        self._loader = loader
        self._then = then

    def create_module(self, spec):
        return self._loader.create_module(spec)

    def exec_module(self, module):
        self._loader.exec_module(module)
        if getattr(module, "__loader__", None) is self:
            module.__loader__ = self._loader
        spec = getattr(module, "__spec__", None)
        if spec is not None and spec.loader is self:
            spec.loader = self._loader
        self._then(module)

    def __getattr__(self, name):
        return getattr(self._loader, name)


class AfterImport:
    """A meta-path finder that finds the modules `names` as the rest of
    sys.meta_path would and calls `then(module)` once each has executed."""

    def __init__(self, names: Iterable[str], then: Callable):
        self._names = frozenset(names)
        self._then = then

    def find_spec(self, fullname, path, target=None):
        if fullname not in self._names:
            return None
        for finder in list(sys.meta_path):
            find = getattr(finder, "find_spec", None)
            if find is None or isinstance(finder, AfterImport):
                continue
            spec = find(fullname, path, target)
            if spec is not None:
                break
        else:
            return None
        if spec.loader is not None and hasattr(spec.loader, "exec_module"):
            spec.loader = _Loader(spec.loader, self._then)
        return spec

    def install(self) -> None:
        sys.meta_path.insert(0, self)

    def remove(self) -> None:
        try:
            sys.meta_path.remove(self)
        except ValueError:
            pass
