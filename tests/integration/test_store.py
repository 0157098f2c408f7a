"""The RocksDB store: versioned snapshots, offsets only forward, restore equals the live state."""

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
