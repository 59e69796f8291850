"""Every planted bug of tests/mutants.py still applies: its old text occurs once in its file."""

import os

import pytest

from tests import mutants


@pytest.mark.skipif(mutants.RUNNING in os.environ, reason="a mutants run mutates the tree on purpose")
@pytest.mark.parametrize("mutant", mutants.MUTANTS, ids=lambda m: f"{m.backend}-{m.name}")
def test_each_mutant_applies_once(mutant):
    text = (mutants.ROOT / mutant.path).read_text()
    assert text.count(mutant.old) == 1, f"{mutant.name}: its old text occurs {text.count(mutant.old)} times"
    assert mutant.new != mutant.old
