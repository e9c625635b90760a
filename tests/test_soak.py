"""A short soak (bench/soak.py with small numbers): nothing lost, doubled or leaked under mixed load.

3,000 requests at concurrency 16 from a separate load-generator process against
the portal in its own process: no 5xx, every ticket and reply exactly once in
Chatwoot, every reply and sign-in mail exactly once, open files and threads back
to the warm-up baseline within the bounds of the two pools that fill lazily (the
Chatwoot connections and the client's executor). RSS growth is only printed,
with its curve over the run.
"""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "bench"))

import soak  # noqa: E402
from chatwoot_client import EXECUTOR_THREADS, POOL_SIZE  # noqa: E402


def test_short_soak_loses_doubles_and_leaks_nothing(capsys):
    # Two pools fill lazily, as concurrency peaks: the Chatwoot client's executor
    # (at most 16 threads) and its keep-alive connections (at most POOL_SIZE, 32).
    # A short warm-up may not reach the peak, so growth up to those bounds is not a
    # leak; a leak of one socket or thread per request would pass them many times
    # over in 3,000 requests (make soak, after a longer warm-up, asks for more).
    figures = soak.run_soak(requests=3000, concurrency=16, seconds=120, warmup=600,
                            fd_margin=POOL_SIZE, thread_margin=EXECUTOR_THREADS, log=lambda line: None)
    with capsys.disabled():
        soak.report(figures)
    assert figures["requests"] >= 3000
    assert figures["five_xx"] == 0
    assert figures["unexpected"] == []
    assert figures["created"] > 0 and figures["replies"] > 0 and figures["webhook_replies"] > 0
    # Everything but the memory goal, which a busy machine can miss: printed above.
    missed = [failure for failure in figures["failures"] if not failure.startswith("RSS grew")]
    assert missed == []
    assert figures["end"]["fds"] <= figures["baseline"]["fds"] + POOL_SIZE
    assert figures["end"]["threads"] <= figures["baseline"]["threads"] + EXECUTOR_THREADS
    assert figures["reply_mails"] == figures["webhook_replies"]
    assert figures["signin_mails"] == figures["signins"]
    # The RSS curve: one sample as each tenth of the requests began, so a reader
    # sees whether memory levels off.
    assert [begun for begun, _ in figures["rss_curve"]] == list(range(300, 3001, 300))
    assert all(rss > 0 for _, rss in figures["rss_curve"])
