"""python/cryptotensors/_core.pyi matches the built extension (mypy's
stubtest: every callable, parameter name, default and class), and a stub
that drifts from it is caught."""

import os
import subprocess
import sys

import pytest

pytest.importorskip("mypy.stubtest")

import cryptotensors

PACKAGE = os.path.dirname(cryptotensors.__file__)
STUB = os.path.join(PACKAGE, "_core.pyi")


def _stubtest(tmp_path, mypypath=None):
    env = dict(os.environ)
    env.pop("MYPYPATH", None)
    if mypypath:
        env["MYPYPATH"] = str(mypypath)
    return subprocess.run(
        [sys.executable, "-m", "mypy.stubtest", "cryptotensors._core"],
        capture_output=True, text=True, env=env, cwd=tmp_path, timeout=300,
    )


def test_stub_matches_the_extension(tmp_path):
    result = _stubtest(tmp_path)
    assert result.returncode == 0, result.stdout + result.stderr


def test_a_drifted_stub_is_caught(tmp_path):
    """The check above can fail: a renamed parameter in a copy of the stub
    (found first through MYPYPATH) is reported."""
    stubs = tmp_path / "stubs" / "cryptotensors"
    stubs.mkdir(parents=True)
    (stubs / "__init__.pyi").write_text("")
    text = open(STUB).read()
    assert "def key_id(jwk: str)" in text
    (stubs / "_core.pyi").write_text(text.replace("def key_id(jwk: str)", "def key_id(jwk_text: str)"))
    result = _stubtest(tmp_path, tmp_path / "stubs")
    assert result.returncode != 0
    assert "key_id" in result.stdout, result.stdout


def test_the_package_marks_itself_typed():
    assert os.path.isfile(STUB)
    assert os.path.isfile(os.path.join(PACKAGE, "py.typed"))
