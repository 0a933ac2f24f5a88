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


def test_every_planted_edit_still_finds_its_line():
    """Fast: each mutation and planted regression names text present exactly once in its file, so a
    move of the code (core.scoring, harness.steps) fails here, not only in the slow runs that plant them."""
    from test_planted_regressions import PLANTED, REPO

    edits = {**{n: (m.file, m.old) for n, m in MUTATIONS.items()}, **{n: (f, old) for n, (f, old, _) in PLANTED.items()}}
    stale = {n: f for n, (f, old) in edits.items() if (REPO / f).read_text().count(old) != 1}
    assert not stale, f"planted edits whose text is gone or repeated (update tests/mutations.py or PLANTED): {stale}"
