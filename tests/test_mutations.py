"""Slow: every mutation of tests/mutations.py, planted in a copy of the code, fails at least one of
the default-suite tests named for it (no golden files involved)."""

from __future__ import annotations

import pytest
from mutations import MUTATIONS, run_mutation


@pytest.mark.slow
@pytest.mark.parametrize("name", sorted(MUTATIONS))
def test_mutation_fails_its_named_tests(tmp_path, data_dir, name):
    found = run_mutation(name, tmp_path)
    assert "<pytest>" not in found, f"the tests did not run in the planted copy: {found.get('<pytest>')}"
    assert found, f"planted {name!r} in {MUTATIONS[name].file}: none of {MUTATIONS[name].tests} failed"
