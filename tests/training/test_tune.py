"""`--tune`: a trial the time limit cuts off is counted as such, not as pruned (real search, german credit)."""

from __future__ import annotations

import time
from dataclasses import replace
from pathlib import Path

from tests.conftest import GERMAN, quick_config


def test_a_trial_cut_off_by_the_deadline_is_not_counted_as_pruned(tmp_path: Path) -> None:
    from training.pipeline import fit_ensemble, prepare_data, tune_candidate

    cfg = quick_config(GERMAN, "creditability", tmp_path, refit=False)
    prep = prepare_data(cfg, say=lambda _: None)
    candidates, _, _ = fit_ensemble(prep, cfg)
    # trials of 400 epochs without early stopping cannot finish a fold in the second the search has
    slow = replace(cfg, epochs=400, patience=400)
    said: list[str] = []
    found, tuning = tune_candidate(prep, slow, candidates[0], time.perf_counter() + 1.0, said.append)
    assert found is None
    assert (tuning["trials"], tuning["finished"], tuning["pruned"], tuning["stopped_at_deadline"]) == (1, 0, 0, 1)
    assert sum("stopped at the deadline after 0 fold(s)" in line for line in said) == 1
    assert not any("pruned" in line for line in said)


def test_a_search_time_spent_before_the_search_starts_says_so(tmp_path: Path) -> None:
    """It said `searching for -1 s more` and ran no trial without a word."""
    from training.pipeline import fit_ensemble, prepare_data, tune_candidate

    cfg = quick_config(GERMAN, "creditability", tmp_path, refit=False, tune="2s")
    prep = prepare_data(cfg, say=lambda _: None)
    candidates, _, _ = fit_ensemble(prep, cfg)
    said: list[str] = []
    found, tuning = tune_candidate(prep, cfg, candidates[0], time.perf_counter() - 1.0, said.append)
    assert found is None and tuning["trials"] == 0
    assert said == [
        "--tune 2s was spent before the search could start (the fits before it took 3 s): no trial ran; give it more time, such as 5m"
    ]
