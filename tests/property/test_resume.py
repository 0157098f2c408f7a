"""Checkpoint, stop and resume (real RocksDB) gives the digest of one uninterrupted run."""

import tempfile
from pathlib import Path

from hypothesis import given, settings
from hypothesis import strategies as st

from ringfence.core.digest import compute_digest
from ringfence.events.embedded import EmbeddedLog
from ringfence.events.log_codec import encode_record
from ringfence.projections.runner import run_core
from ringfence.projections.store import StateStore
from ringfence.replay.audit import replay
from tests.property.streams import adversarial_stream


@settings(max_examples=25, deadline=None)
@given(
    seed=st.integers(0, 2**32 - 1),
    count=st.integers(30, 500),
    cuts=st.lists(st.integers(0, 500), max_size=4),
    checkpoint_every=st.integers(1, 300),
)
def test_resume_from_checkpoints_equals_one_run(seed, count, cuts, checkpoint_every):
    events = [event for event, _ in adversarial_stream(seed, count)]
    with tempfile.TemporaryDirectory() as tmp:
        log = EmbeddedLog(Path(tmp) / "log")
        for event in events:
            log.append(encode_record(event))
        log.commit()
        uninterrupted = compute_digest(replay(log))
        for cut in sorted(cuts) + [None]:  # stop at each cut, close everything, reopen and go on
            with StateStore(Path(tmp) / "state") as store:
                state, _ = run_core(log, store, until=cut, checkpoint_every=checkpoint_every)
                live = compute_digest(state)
            with StateStore(Path(tmp) / "state") as store:
                restored = store.load()
            assert compute_digest(restored) == live  # snapshot -> restore => same digest
        assert restored.offset == len(events) - 1
        assert live == uninterrupted
        log.close()


def test_duplicate_window_survives_checkpoints_and_forgets_old_ids(tmp_path, monkeypatch):
    import ringfence.core.state as core_state
    from ringfence.core import model as m

    monkeypatch.setattr(core_state, "DEDUP_GENERATION_EVENTS", 5)  # every State's dedup_span
    log = EmbeddedLog(tmp_path / "log")
    for n in range(12):
        log.append(encode_record(m.Deposit(f"d{n}", n, "a", "USDT", 1)))
    log.append(encode_record(m.Deposit("d11", 12, "a", "USDT", 1)))  # previous generation: duplicate
    log.append(encode_record(m.Deposit("d0", 13, "a", "USDT", 1)))  # two generations back: applied again
    log.commit()
    for until in (3, 7, 11, None):
        with StateStore(tmp_path / "state") as store:
            state, report = run_core(log, store, until=until, checkpoint_every=2)
    with StateStore(tmp_path / "state") as store:
        restored = store.load()
        letters = list(store.deadletters())
    assert len(letters) == 1 and b"duplicate_id" in letters[0]
    assert restored.id_generation == 2  # offsets 10..14
    assert list(restored.older_ids) == [f"a\0d{n}" for n in (5, 6, 7, 8, 9)]  # an account's ids: "account\0id"
    assert list(restored.recent_ids) == ["a\0d10", "a\0d11", "a\0d0"]
    assert compute_digest(restored) == compute_digest(state) == compute_digest(replay(log))
    assert restored.wallets[("a", "USDT")].balance == 13
