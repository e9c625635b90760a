"""A short soak (bench/soak.py with small numbers): nothing lost, doubled or leaked under mixed load.

3,000 requests at concurrency 16 from a separate load-generator process against
the portal in its own process: no 5xx, every ticket and reply exactly once in
Chatwoot, every reply and sign-in mail exactly once, open files and threads back
to the warm-up baseline (within a small margin: the Chatwoot connection pool and
its executor are bounded but fill lazily). RSS growth is only printed.
"""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "bench"))

import soak  # noqa: E402


def test_short_soak_loses_doubles_and_leaks_nothing(capsys):
    # The Chatwoot client's executor starts its (at most 16) threads lazily, as
    # concurrency peaks: a few more than after the warm-up is growth to a bound,
    # not a leak (make soak, after a longer warm-up, asks for the baseline exactly).
    figures = soak.run_soak(requests=3000, concurrency=16, seconds=120, warmup=600,
                            fd_margin=4, thread_margin=6, log=lambda line: None)
    with capsys.disabled():
        soak.report(figures)
    assert figures["requests"] >= 3000
    assert figures["five_xx"] == 0
    assert figures["unexpected"] == []
    assert figures["created"] > 0 and figures["replies"] > 0 and figures["webhook_replies"] > 0
    # Everything but the memory goal, which a busy machine can miss: printed above.
    missed = [failure for failure in figures["failures"] if not failure.startswith("RSS grew")]
    assert missed == []
    assert figures["end"]["fds"] <= figures["baseline"]["fds"] + 4
    assert figures["end"]["threads"] <= figures["baseline"]["threads"] + 2
    assert figures["reply_mails"] == figures["webhook_replies"]
    assert figures["signin_mails"] == figures["signins"]
