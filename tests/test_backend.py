"""Choosing a backend: names, aliases, errors, and importing only the chosen framework."""

import os
import subprocess
import sys

import pytest

from d2lattn import _backend

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def python(code, backend=None):
    env = {**os.environ, "PYTHONPATH": ROOT}
    env.pop(_backend.ENV_VAR, None)
    if backend is not None:
        env[_backend.ENV_VAR] = backend
    return subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=300)


@pytest.mark.parametrize("alias, name", [("pytorch", "torch"), ("TF", "tensorflow"), ("flax", "jax"),
                                         (" Torch ", "torch"), ("mxnet", "mxnet")])
def test_aliases(alias, name):
    assert _backend.canonical(alias) == name


def test_unknown_backend_lists_valid_names():
    with pytest.raises(ValueError, match="unknown d2lattn backend 'caffe'.*torch, jax, tensorflow, mxnet, numpy"):
        _backend.canonical("caffe")
    run = python("import d2lattn as d2l; d2l.masked_softmax", backend="caffe")
    assert run.returncode != 0 and "ValueError: unknown d2lattn backend 'caffe'" in run.stderr


def test_selected_backend_is_the_one_used(backend_name):
    run = python("import d2lattn as d2l; print(d2l.BACKEND, d2l.masked_softmax.__module__)", backend=backend_name)
    assert run.stdout.split() == [backend_name, f"d2lattn.{backend_name}.ops"], run.stderr


def test_importing_imports_only_the_selected_framework(backend_name):
    others = sorted({m for b, modules in _backend.FRAMEWORKS.items() if b not in (backend_name, _backend.REFERENCE)
                     for m in modules})
    code = f"import sys, d2lattn as d2l; d2l.MultiHeadAttention; print([m for m in {others!r} if m in sys.modules])"
    run = python(code, backend=backend_name)
    assert run.returncode == 0, run.stderr
    assert run.stdout.strip() == "[]", f"importing the {backend_name} backend also imported {run.stdout}"


def test_explicit_import_ignores_the_variable(backend_name):
    run = python(f"from d2lattn import {backend_name} as d2l; print(d2l.BACKEND)", backend="caffe")
    assert run.stdout.strip() == backend_name, run.stderr


def test_missing_framework_says_how_to_install(backend_name):
    blocked = "; ".join(f"sys.modules[{m!r}] = None" for m in _backend.FRAMEWORKS[backend_name])
    run = python(f"import sys; {blocked}; import d2lattn as d2l; d2l.masked_softmax", backend=backend_name)
    assert run.returncode != 0
    assert f"ImportError: the d2lattn backend {backend_name!r} needs" in run.stderr, run.stderr
    assert _backend.INSTALL[backend_name] in run.stderr


def test_python_m_d2lattn_reports_backend_and_versions(backend_name):
    run = subprocess.run([sys.executable, "-m", "d2lattn"], capture_output=True, text=True, cwd=ROOT,
                         env={**os.environ, _backend.ENV_VAR: backend_name}, timeout=120)
    assert run.returncode == 0, run.stderr
    assert f"d2lattn backend: {backend_name}" in run.stdout
    assert "importable here:" in run.stdout and backend_name in run.stdout
