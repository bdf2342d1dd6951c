"""What a person watches during `tabserve train`, on a real (terminal) console and a real training."""

from __future__ import annotations

import io
import re
from pathlib import Path

from rich.console import Console

from tests.conftest import GERMAN, quick_config


def test_each_bar_ends_where_its_member_stopped(tmp_path: Path) -> None:
    """The live bar's total is best epoch + patience (not the epoch cap), so every bar ends full, at
    the epoch its member stopped, showing the best epoch metrics.json records."""
    from training.progress import train_with_progress

    screen = io.StringIO()
    console = Console(file=screen, force_terminal=True, width=220, color_system=None)
    # screen auto: german also trains a network on its screened columns, with bars of its own; seed 1:
    # members are counted by their fold, not by their seed (1000, 1001, …)
    cfg = quick_config(
        GERMAN, "creditability", tmp_path, name="credit", epochs=60, patience=4, ensemble=3, screen="auto", seed=1
    )
    result = train_with_progress(cfg, console)
    frames = re.sub(r"\x1b\[[0-9;?]*[A-Za-z]", "", screen.getvalue())
    bar = re.compile(
        r"member (\d)/3(, screened columns)? .*? epoch +(\d+)/(\d+) +val loss [\d.]+ +val AUC [\d.]+ +best epoch (\d+) \("
    )
    last = {
        (member, bool(screened)): (done, total, best) for member, screened, done, total, best in bar.findall(frames)
    }
    assert len(last) == 6, frames[-3000:]
    assert result.bundle is not None
    chosen = next(row["candidate"] for row in result.bundle.metrics["leaderboard"] if row["chosen"])
    for i, row in enumerate(result.bundle.metrics["members"]):  # the chosen candidate's members
        done, total, best = last[(str(i + 1), chosen == "network, screened columns")]
        assert int(done) == int(total) == row["epochs"] < cfg.epochs  # ended full, far from the cap
        assert int(best) == row["best_epoch"]
    assert "member 1: best epoch" in frames and "summary (test split)" in frames
