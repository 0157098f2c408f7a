"""The RocksDB store: versioned snapshots, offsets only forward, restore equals the live state; the outbox."""

import json

import pytest
from rocksdict import Options, Rdict

from ringfence.core.check import InvariantError
from ringfence.core.digest import compute_digest
from ringfence.projections.store import META_VERSION, StateStore, StoreVersionError, int_to_bytes
from tests.helpers import Book


def test_a_store_of_another_format_is_refused_with_a_clear_message(tmp_path, cli):
    with StateStore(tmp_path / "state") as store:
        store.checkpoint(Book().state, [])
    db = Rdict(str(tmp_path / "state"), Options(raw_mode=True))
    db.put(META_VERSION, int_to_bytes(0))
    db.close()
    with pytest.raises(StoreVersionError, match="rebuild it by replay"):
        StateStore(tmp_path / "state")
    (tmp_path / "log").mkdir()
    rc, out, err = cli("digest", data=tmp_path, check_rc=1)
    assert err.count("\n") == 1 and "format v0" in err


def test_restore_equals_the_live_state_and_offsets_only_move_forward(tmp_path):
    book = Book()
    book.market()
    book.deposit("alice", "1000")
    book.fill("alice", "buy", "0.1", "60000", fee="1")
    book.mark("61000")
    with StateStore(tmp_path) as store:
        store.checkpoint(book.state, [])
        restored = store.load()
        assert compute_digest(restored) == compute_digest(book.state)
        restored.offset -= 1
        with pytest.raises(InvariantError):
            store.checkpoint(restored, [])


class ListSink:
    """A log that keeps what was committed; ``fail`` makes the next commit raise (a broker that refuses)."""

    def __init__(self):
        self.buffered, self.committed, self.fail = [], [], False

    def append(self, payload: bytes) -> None:
        self.buffered.append(bytes(payload))

    def commit(self) -> None:
        if self.fail:
            self.buffered.clear()
            raise ConnectionError("broker refused the batch")
        self.committed += self.buffered
        self.buffered.clear()


def test_the_outbox_publishes_every_output_kind_once_and_again_after_a_failed_commit(tmp_path):
    from ringfence.events.log_codec import encode_record
    from ringfence.events.embedded import EmbeddedLog
    from ringfence.projections.outbox import publish_pending
    from ringfence.projections.runner import run_core

    book, events = Book(), []
    apply = book.apply
    book.apply = lambda event: (events.append(event), apply(event))[1]
    book.market()
    book.deposit("alice", "100")
    book.leverage("alice", 100)
    book.fill("alice", "buy", "0.1", "60000")
    book.withdraw("bob", "5")
    book.mark("59500")
    with EmbeddedLog(tmp_path / "log") as log, StateStore(tmp_path / "state") as store:
        for event in events:
            log.append(encode_record(event))
        log.append(b"\xc1 not msgpack")
        log.commit()
        sinks = {kind: ListSink() for kind in ("commands", "rejections", "deadletters", "alerts")}
        sinks["deadletters"].fail = True
        run_core(log, store)
        with pytest.raises(ConnectionError):
            publish_pending(store, sinks)
        sinks["deadletters"].fail = False
        # kinds before the failure kept their marks; the dead letter goes again, then nothing
        assert publish_pending(store, sinks) == 1
        assert publish_pending(store, sinks) == 0
    assert [json.loads(c)["type"] for c in sinks["commands"].committed] == ["liquidate"]
    assert [json.loads(r)["reason"] for r in sinks["rejections"].committed] == ["insufficient_balance"]
    assert [json.loads(x)["offset"] for x in sinks["deadletters"].committed] == [6]
    assert sinks["alerts"].committed == []
