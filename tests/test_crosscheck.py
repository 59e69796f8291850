"""Crosscheck itself can fail: on results from other framework versions, and on frameworks that
train the same model differently. Written to a temporary folder, so the real results are untouched."""

import numpy as np
import pytest

from tests import crosscheck, harness


@pytest.fixture
def results(tmp_path, monkeypatch):
    monkeypatch.setattr(harness, "RESULTS", tmp_path)

    def write(name, shift=0.0, version=None):
        trained = {"loss": np.array([2.0, 1.5]), "param:W": np.ones((2, 3)) + shift}
        versions = {name: version or crosscheck.pinned(name)}
        for kind, (key, _) in crosscheck.TRAINING_RUNS.items():  # every run crosscheck compares
            harness.write_results(name, {key: trained}, kind=kind, versions=versions)

    return write


def test_results_from_another_framework_version_are_refused(results):
    results("torch", version="0.0.1")
    _, problems = crosscheck.load(["torch"], "training-lm")
    assert problems and "not the tested" in problems[0] and crosscheck.pinned("torch") in problems[0]


def test_a_local_version_label_is_the_same_release(results):
    results("torch", version=crosscheck.pinned("torch") + "+cpu")  # what PyTorch's CPU wheel reports
    loaded, problems = crosscheck.load(["torch"], "training-lm")
    assert problems == [] and "torch" in loaded


@pytest.mark.parametrize(("pair", "shift", "fails"), [
    (("torch", "jax"), 1e-6, False), (("torch", "jax"), 1e-3, True),          # epsilon placed alike: 1e-4
    (("torch", "mxnet"), 5e-4, False), (("torch", "mxnet"), 2e-3, True),      # placed unlike: 1e-3
])
def test_frameworks_that_train_differently_fail(results, pair, shift, fails):
    results(pair[0])
    results(pair[1], shift=shift)
    assert bool(crosscheck.training(list(pair))) == fails
