"""One answer at any partition count: the same session on 1..5 partitions, split any way, reports in any order.

The session is an adversarial stream (streams.py: crashes that bankrupt
positions, ADL with an empty fund, a hostile engine's answers, fund domains
that move) reduced once on the embedded path (one partition, the fund stage
in process). Then the same events go through k partitions in one process
(replay.partitioned), each account to a random partition, the reports of each
barrier taken in a random order. Every run must give the same commands and
cancels (ids, accounts, quantities, prices), the same alerts, positions,
wallets and fund balances, and the same verdict on every event.

A failure prints its seed; ``RINGFENCE_SEED=N pytest tests/property/test_fund_stage.py``
replays it.
"""

import os
import random

from hypothesis import given, settings
from hypothesis import strategies as st

from ringfence.projections.outputs import AdlCommand
from ringfence.replay.partitioned import differences, outcome, run_embedded, run_partitioned
from tests.property.streams import adversarial_stream

def check(seed: int, count: int, runs: int = 4) -> dict:
    events = [event for event, _ in adversarial_stream(seed, count)]
    embedded = outcome(run_embedded(events))
    rng = random.Random(seed)
    accounts = sorted({e.account for e in events if isinstance(getattr(e, "account", None), str)})
    for run in range(runs):
        k = 1 + run % 5 if runs >= 5 else rng.randint(1, 5)
        assignment = {account: rng.randrange(k) for account in accounts}
        order = random.Random(rng.getrandbits(64))
        parts = run_partitioned(events, k, split=assignment.__getitem__,
                                report_order=lambda reports: order.sample(reports, len(reports)))  # fmt: skip
        found = differences(embedded, outcome(parts))
        assert not found, f"RINGFENCE_SEED={seed} RINGFENCE_COUNT={count}: on {k} partitions: {found}"
    return embedded


@settings(max_examples=25, deadline=None)
@given(seed=st.integers(0, 2**32 - 1), count=st.integers(100, 900))
def test_the_answers_do_not_depend_on_the_partitions_or_the_order_of_reports(seed, count):
    check(seed, count)


def test_a_long_adl_heavy_session_on_every_partition_count_or_the_given_seed():
    """RINGFENCE_SEED=N replays a seed a failure printed (count: RINGFENCE_COUNT)."""
    seed, count = int(os.environ.get("RINGFENCE_SEED", 20261205)), int(os.environ.get("RINGFENCE_COUNT", 4000))
    embedded = check(seed, count, runs=5)
    kinds = [answer[0] for answer in embedded["commands"]]
    # the session exercises what the stage decides: ADL, its cancels, and at least two funds
    assert kinds.count(AdlCommand.__name__) >= 3, kinds.count(AdlCommand.__name__)
    assert len(embedded["funds"]) >= 2, embedded["funds"]
    assert any(v == {("deadletter", "fund_domain_change_with_positions")} for v in embedded["verdicts"].values())
