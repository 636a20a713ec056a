"""Shared fixtures for the safetensors-compatibility suite.

The comparison helpers live in ``_compat.py`` and the hypothesis strategies in
``_strategies.py``; this file only makes them importable regardless of the
pytest import mode and provides the scratch-directory fixtures.
"""

import itertools
import os
import sys

import pytest

_HERE = os.path.dirname(os.path.abspath(__file__))
if _HERE not in sys.path:
    sys.path.insert(0, _HERE)


@pytest.fixture(scope="session")
def scratch(tmp_path_factory):
    """A session-wide directory plus a unique-name generator.

    Hypothesis runs many examples inside one test call, so function-scoped
    ``tmp_path`` cannot be used there; every example gets a fresh file name
    from this fixture instead (files are never overwritten, which keeps
    still-alive mmaps of earlier examples untouched).
    """
    root = tmp_path_factory.mktemp("compat")
    counter = itertools.count()

    class Scratch:
        dir = root

        @staticmethod
        def path(suffix=".safetensors"):
            return str(root / f"f{next(counter)}{suffix}")

        @staticmethod
        def write(data):
            p = Scratch.path()
            with open(p, "wb") as fh:
                fh.write(data)
            return p

    return Scratch
