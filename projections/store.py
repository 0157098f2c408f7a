"""The core's durable state in RocksDB (rocksdict, raw mode).

A checkpoint writes what changed since the last one, the outputs of the
events in between, and the applied offset in one write batch, so the store
always reflects exactly one log prefix. It is a cache: deleting the directory
and running again rebuilds it by replay.

Keys (named prefixes; offsets as fixed-width big-endian so RocksDB order is
numeric order):

    meta:version           snapshot format (int)
    meta:offset            last applied offset (signed 8 bytes)
    p:<acct>\\0<mkt>\\0<side>  position  [size, cost, margin, shortfall]
    w:<acct>\\0<asset>       wallet balance
    l:<acct>\\0<mkt>\\0<side>  leverage setting
    u:<acct>\\0<mkt>\\0<side>  auto-add margin on (absent: off)
    m:<market>             [config, mark, mark_ts]
    b:books                the insurance, fee income, clearing and net deposit books
    b:funds                every insurance-fund domain and its asset
    i:<generation><offset> a remembered event id (duplicate recognition; "account\\0id" for an account's event)
    meta:id_generation     the current id generation
    r:<offset>             rejection record (JSON, the output contract)
    x:<offset>             dead-letter record (JSON)
    c:<sequence>           liquidation command (JSON), the outbox
    a:<offset>             alert (JSON)
    j:liquidation          the liquidation projection's head (sequence, paused markets, last marks)
    e:<command id>         a liquidation or ADL command of the episode book (projections.episodes.Command)
    q:<acct>\0<mkt>\0<side>  a position's record in the episode book (its command ids)
    k:<offset>             digest chain link (JSON, projections.chain.ChainLink)
    f:<first offset>       fingerprints of the records from that offset on, 8 bytes each
    meta:chain             [every, last link offset, last chain hash]
    meta:published         last command sequence published to the commands log
    meta:published:<p>     last offset whose output of prefix <p> (r:, x:, a:) was published

Identifiers never contain NUL (validated on input), so NUL separates key parts.
Ints that may exceed 64 bits (the cost basis) are stored as signed bytes.
"""

import re
import shutil
import struct
import tempfile
from collections.abc import Iterator
from pathlib import Path

import msgspec
from rocksdict import AccessType, Checkpoint, DBRecoveryMode, Options, Rdict, ReadOptions, WriteBatch, WriteOptions

from ringfence.core.check import check
from ringfence.core.limits import CHAIN_EVERY_EVENTS, SNAPSHOTS_KEPT
from ringfence.core.model import MarketConfig
from ringfence.core.state import MarketState, State, Trigger
from ringfence.events.crashpoints import crash_point
from ringfence.projections.chain import FINGERPRINT_BYTES, DigestChain
from ringfence.projections.episodes import BOOK_VERSION
from ringfence.projections.liquidation import LiquidationProjection

FORMAT_VERSION = 6  # 2: the digest chain (k:, f:, meta:chain); 3: the episode book (e:, q:); 4: fund domains (b:funds);
# 5: clearance fees and auto-added margin (two more books), auto-add margin settings (u:); 6: position triggers (t:)

META_VERSION = b"meta:version"
META_OFFSET = b"meta:offset"
POSITION = b"p:"
WALLET = b"w:"
LEVERAGE = b"l:"
AUTO_MARGIN = b"u:"
TRIGGER = b"t:"
MARKET = b"m:"
BOOKS = b"b:books"
FUNDS = b"b:funds"
REMEMBERED_ID = b"i:"
META_ID_GENERATION = b"meta:id_generation"
REJECTION = b"r:"
DEADLETTER = b"x:"
COMMAND = b"c:"
ALERT = b"a:"
PROJECTION = b"j:liquidation"
EPISODE_COMMAND = b"e:"
EPISODE_POSITION = b"q:"
CHAIN_LINK = b"k:"
FINGERPRINTS = b"f:"
META_CHAIN = b"meta:chain"
META_PUBLISHED = b"meta:published"

_OFFSET = struct.Struct(">q")
_TWO_OFFSETS = struct.Struct(">qq")
_SEP = "\x00"

_encode = msgspec.msgpack.Encoder().encode
_encode_json = msgspec.json.Encoder().encode
_decode_market = msgspec.msgpack.Decoder(tuple[MarketConfig, int, int]).decode
_decode_list = msgspec.msgpack.Decoder(list).decode
_decode_trigger = msgspec.msgpack.Decoder(Trigger).decode


class StoreVersionError(Exception):
    """The store was written by another snapshot format."""


class StoreCorrupt(Exception):
    """RocksDB cannot read the store (a checksum mismatch, a damaged or missing file): nothing of it is used."""


class ChainSettingError(Exception):
    """A run asked for another chain interval than the one the store's chain was built with."""


def int_to_bytes(value: int) -> bytes:
    return value.to_bytes(value.bit_length() // 8 + 1, "big", signed=True)


def bytes_to_int(data: bytes) -> int:
    return int.from_bytes(data, "big", signed=True)


def offset_key(prefix: bytes, offset: int) -> bytes:
    return prefix + _OFFSET.pack(offset)


def snapshots_dir(store_path: Path) -> Path:
    """``snapshots/`` beside a store's directory: one RocksDB checkpoint per chain link."""
    return store_path.parent / "snapshots"


def snapshot_path(directory: Path, offset: int) -> Path:
    return directory / f"{offset:020d}"


def snapshot_offsets(directory: Path) -> list[int]:
    """The offsets of the snapshots in ``directory``, oldest first."""
    if not directory.is_dir():
        return []
    return sorted(int(path.name) for path in directory.iterdir() if path.name.isdigit() and (path / "CURRENT").exists())


# what a read-only open leaves out of its shadow directory: the writer's lock, RocksDB's info logs, rocksdict's config
_NOT_SHADOWED = ("LOCK", "LOG", "rocksdict-config.json")
READ_ONLY_ATTEMPTS = 3


def open_read_only(path: Path, options: Options) -> tuple[Rdict, Path]:
    """RocksDB opened read-only without writing a byte into ``path``; (db, its shadow directory to delete on close).

    rocksdict (0.3.29, the latest) rewrites ``rocksdict-config.json`` in the
    directory on every open, read-only ones included: on a read-only data
    directory the open fails, and on a writable one every query modifies the
    store. So the store is opened through a private temporary directory of
    symbolic links to its files: RocksDB's read-only mode writes nothing and
    takes no lock, and the links follow a writer's atomic renames. A writer
    that replaces files between the listing and the open makes that open fail:
    it is tried again with a fresh listing, and the last error stands.
    """
    error: Exception | None = None
    for _ in range(READ_ONLY_ATTEMPTS):
        shadow = Path(tempfile.mkdtemp(prefix="ringfence-read-only-"))
        try:
            for entry in path.iterdir():
                if not entry.name.startswith(_NOT_SHADOWED):
                    (shadow / entry.name).symlink_to(entry.resolve())
            return Rdict(str(shadow), options, access_type=AccessType.read_only()), shadow
        except Exception as failed:  # rocksdict raises plain Exceptions with RocksDB's message
            error = Exception(_naming_the_wal(failed, shadow))
            shutil.rmtree(shadow, ignore_errors=True)
    raise error


def store_options() -> Options:
    """The options of every RocksDB ringfence writes: damage is an error, never a silently shorter store.

    Paranoid checks: a damaged file found on open or in compaction stops the
    store. WAL recovery: RocksDB's default (point in time) replays the
    write-ahead log up to the first damaged record and silently drops every
    committed batch after it, so a store would open at an older offset. Every
    batch is written with sync, so only the last record can be torn by a
    crash (a write never acknowledged): that one may be dropped; damage
    anywhere else fails the open.
    """
    options = Options(raw_mode=True)
    options.set_paranoid_checks(True)
    options.set_wal_recovery_mode(DBRecoveryMode.tolerate_corrupted_tail_records())
    return options


_WAL_DAMAGE = re.compile(r"(\S+\.log): dropping \d+ bytes; (.*)")


def _naming_the_wal(error: Exception, directory: Path) -> str:
    """RocksDB's message, naming the write-ahead log it found damaged on open (the message itself names no file).

    A writable open records the file in RocksDB's info LOG; a read-only one
    writes no LOG, so the candidates are named: the non-empty logs and the MANIFEST.
    """
    detail = str(error).strip()
    if ".sst" in detail or "Corruption" not in detail:
        return detail
    try:
        found = _WAL_DAMAGE.findall((directory / "LOG").read_text(errors="replace"))
    except OSError:
        found = []
    if found:
        return f"{detail} in its write-ahead log {Path(found[-1][0]).name}"
    logs = sorted(path.name for path in directory.glob("*.log") if path.stat().st_size > 0)
    return f"{detail} on open, in its write-ahead log {' or '.join(logs)} or its MANIFEST" if logs else detail


def _join(*parts: str) -> bytes:
    return _SEP.join(parts).encode()


def _split(key: bytes, prefix: bytes) -> list[str]:
    return key[len(prefix) :].decode().split(_SEP)


class StateStore:
    def __init__(self, path: str | Path, *, read_only: bool = False):
        """Open (or create) the store; ``read_only`` lets queries run beside a writer."""
        self.path = Path(path)
        options = store_options()
        self._shadow: Path | None = None
        self._read = ReadOptions()
        self._read.set_verify_checksums(True)  # every block read is checked (RocksDB's default, made explicit)
        try:
            if read_only:
                if not (self.path / "CURRENT").exists():
                    raise FileNotFoundError(f"no state in {self.path} (run `ringfence run` first)")
                self._db, self._shadow = open_read_only(self.path, options)
            else:
                self.path.mkdir(parents=True, exist_ok=True)
                options.create_if_missing(True)
                self._db = Rdict(str(self.path), options)
        except (FileNotFoundError, PermissionError):
            raise
        except Exception as error:  # rocksdict raises plain Exceptions with RocksDB's message
            raise self._damaged(error) from None
        self._sync = WriteOptions()
        self._sync.sync = True
        try:
            self._check_version()
            self._checkpointed_offset = self.stored_offset()
        except (StoreVersionError, StoreCorrupt):
            self.close()
            raise

    def _damaged(self, error: Exception) -> StoreCorrupt:
        """One line naming the store and what RocksDB says is damaged (its file, in the store's own directory)."""
        detail = str(error).replace(str(self._shadow), str(self.path)) if self._shadow else _naming_the_wal(error, self.path)
        return StoreCorrupt(f"the store in {self.path} cannot be read: {detail.strip()} (delete the directory and run "
                            "again to rebuild it by replay from the log)")  # fmt: skip

    def _get(self, key: bytes) -> bytes | None:
        try:
            return self._db.get(key, read_opt=self._read)
        except Exception as error:  # noqa: BLE001 (RocksDB reports damage as a plain Exception)
            raise self._damaged(error) from None

    def _iterator(self):
        return self._db.iter(self._read)

    def _checked_end(self, iterator) -> None:
        """A scan ends when the iterator is no longer valid: by the end of the data, or by an error it holds."""
        try:
            iterator.status()
        except Exception as error:  # noqa: BLE001
            raise self._damaged(error) from None

    def verify_all(self) -> int:
        """Read every key and value of the store, checksums and all; return how many (StoreCorrupt on damage)."""
        iterator = self._iterator()
        iterator.seek_to_first()
        count = 0
        while iterator.valid():
            iterator.value()
            count += 1
            iterator.next()
        self._checked_end(iterator)
        return count

    def _check_version(self) -> None:
        version = self._get(META_VERSION)
        if version is None:
            if self._get(META_OFFSET) is not None:
                raise StoreVersionError(f"{self.path} has state but no format version; delete it to rebuild by replay")
        elif bytes_to_int(version) != FORMAT_VERSION:
            raise StoreVersionError(
                f"{self.path} holds state format v{bytes_to_int(version)}, this ringfence reads v{FORMAT_VERSION}; "
                "delete the directory and run again to rebuild it by replay from offset 0"
            )

    def close(self) -> None:
        self._db.close()
        if self._shadow is not None:
            shutil.rmtree(self._shadow, ignore_errors=True)
            self._shadow = None

    # -- snapshots -----------------------------------------------------------------------

    def snapshot(self, kept: int = SNAPSHOTS_KEPT) -> Path:
        """Keep the store as of its last checkpoint as ``snapshots/<offset>``; prune all but the newest ``kept``."""
        directory = snapshots_dir(self.path)
        target = snapshot_path(directory, self.stored_offset())
        if not target.exists():  # RocksDB builds it in a temporary directory and renames it: all or nothing
            directory.mkdir(exist_ok=True)
            Checkpoint(self._db).create_checkpoint(str(target))
        for old in snapshot_offsets(directory)[:-kept]:
            shutil.rmtree(snapshot_path(directory, old))
        return target

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()

    def stored_offset(self) -> int:
        raw = self._get(META_OFFSET)
        return -1 if raw is None else _OFFSET.unpack(raw)[0]

    def _scan(self, prefix: bytes, start: bytes | None = None) -> Iterator[tuple[bytes, bytes]]:
        """Every (key, value) with ``prefix`` from ``start``; StoreCorrupt if damage cut the scan short."""
        iterator = self._iterator()
        iterator.seek(start or prefix)
        while iterator.valid():
            key = iterator.key()
            if not key.startswith(prefix):
                return
            yield key, iterator.value()
            iterator.next()
        self._checked_end(iterator)

    # -- restore -------------------------------------------------------------------------

    def load(self) -> State:
        """The state as of the last checkpoint (an empty state for an empty store)."""
        state = State()
        state.offset = self.stored_offset()
        for _, value in self._scan(MARKET):
            config, mark, mark_ts = _decode_market(value)
            state.markets[config.market] = MarketState(config, mark, mark_ts)
        for key, value in self._scan(POSITION):
            account, market, side = _split(key, POSITION)
            size, cost, margin, shortfall = _decode_list(value)
            position = state.add_position((account, market, side))
            position.size, position.cost, position.margin, position.shortfall = size, bytes_to_int(cost), margin, shortfall
        for key, value in self._scan(WALLET):
            account, asset = _split(key, WALLET)
            state.wallet(account, asset).balance = bytes_to_int(value)
        for key, value in self._scan(LEVERAGE):
            account, market, side = _split(key, LEVERAGE)
            state.leverage[(account, market, side)] = bytes_to_int(value)
        for key, value in self._scan(AUTO_MARGIN):
            account, market, side = _split(key, AUTO_MARGIN)
            state.auto_margin.setdefault(market, set()).add((account, market, side))
        triggers = []
        for key, value in self._scan(TRIGGER):
            account, trigger_id = _split(key, TRIGGER)
            triggers.append((_decode_trigger(value), account, trigger_id))
        for trigger, account, trigger_id in sorted(triggers, key=lambda item: item[0].serial):  # the order they were set
            state.triggers[(account, trigger_id)] = trigger
            state.position_triggers.setdefault((account, trigger.market, trigger.position_side), []).append(trigger_id)
        books = self._get(BOOKS)
        if books is not None:
            for book, entries in zip(
                (state.insurance, state.fee_income, state.clearing, state.net_deposits, state.clearance_fees,
                 state.auto_margin_added), _decode_list(books), strict=True,
            ):
                book.update((name, bytes_to_int(value)) for name, value in entries)
        funds = self._get(FUNDS)
        if funds is not None:
            state.fund_assets.update((domain, asset) for domain, asset in _decode_list(funds))
        generation = self._get(META_ID_GENERATION)
        if generation is not None:
            state.id_generation = _OFFSET.unpack(generation)[0]
            for key, value in self._scan(REMEMBERED_ID):
                id_generation, offset = _TWO_OFFSETS.unpack(key[len(REMEMBERED_ID) :])
                book = state.recent_ids if id_generation == state.id_generation else state.older_ids
                book[value.decode()] = offset
        return state

    # -- checkpoint ----------------------------------------------------------------------

    def checkpoint(self, state: State, outputs: list[tuple[bytes, bytes]], projection=None,
                   chain: DigestChain | None = None) -> None:  # fmt: skip
        """Persist the state's changes, the outputs and the offset atomically (``stage`` then ``commit``).

        1. Check the offset moves forward (a stored offset never goes back).
        2. Put or delete every dirty position, wallet, leverage and market key.
        3. Rewrite the (small) balance books if any balance moved.
        4. Add the event ids remembered since the last checkpoint and drop the
           generations of ids that were forgotten.
        5. Add the output records (rejections, dead letters, commands, alerts)
           of those events, the liquidation projection's state, and the
           digest chain's new links and fingerprints.
        6. Set meta:offset, then write the batch with sync: all or nothing.
        7. Only after the write succeeds, forget the dirty sets. If the process
           dies before step 6 completes, nothing of this batch is stored and a
           restart replays from the previous offset.
        """
        self.commit(self.stage(state), state, outputs, projection, chain)

    def stage(self, state: State) -> WriteBatch:
        """Steps 1-4 of ``checkpoint``: a batch with the state's changes, nothing written yet.

        Separate so that `run` can stage while its projection worker finishes.
        """
        check(state.offset >= self._checkpointed_offset, "a checkpoint never moves the offset back")
        batch = WriteBatch(raw_mode=True)
        batch.put(META_VERSION, int_to_bytes(FORMAT_VERSION))
        for key in dict.fromkeys(state.dirty_positions):
            db_key = POSITION + _join(*key)
            position = state.positions.get(key)
            if position is None:
                batch.delete(db_key)
            else:
                batch.put(db_key, _encode([position.size, int_to_bytes(position.cost), position.margin, position.shortfall]))
        for key in state.dirty_wallets:
            batch.put(WALLET + _join(*key), int_to_bytes(state.wallets[key].balance))
        for key in state.dirty_leverage:
            batch.put(LEVERAGE + _join(*key), int_to_bytes(state.leverage[key]))
        for key in state.dirty_auto_margin:
            if key in state.auto_margin.get(key[1], ()):
                batch.put(AUTO_MARGIN + _join(*key), b"on")
            else:
                batch.delete(AUTO_MARGIN + _join(*key))
        for trigger_key in state.dirty_triggers:
            trigger = state.triggers.get(trigger_key)
            if trigger is None:
                batch.delete(TRIGGER + _join(*trigger_key))
            else:
                batch.put(TRIGGER + _join(*trigger_key), _encode(trigger))
        for name in state.dirty_markets:
            market = state.markets[name]
            batch.put(MARKET + name.encode(), _encode((market.config, market.mark, market.mark_ts)))
        if state.dirty_balances:
            books = [
                [[name, int_to_bytes(value)] for name, value in sorted(book.items())]
                for book in (state.insurance, state.fee_income, state.clearing, state.net_deposits, state.clearance_fees,
                             state.auto_margin_added)
            ]
            batch.put(BOOKS, _encode(books))
            batch.put(FUNDS, _encode(sorted(state.fund_assets.items())))
        # ids accepted since the last checkpoint (both generations may have new
        # ones), newest first until the first one already stored
        for generation, ids in ((state.id_generation - 1, state.older_ids), (state.id_generation, state.recent_ids)):
            for event_id, offset in reversed(ids.items()):
                if offset <= self._checkpointed_offset:
                    break
                batch.put(REMEMBERED_ID + _TWO_OFFSETS.pack(generation, offset), event_id.encode())
        # whole generations older than the previous one are forgotten at once
        if state.id_generation > 1:
            batch.delete_range(REMEMBERED_ID + _TWO_OFFSETS.pack(0, 0),
                               REMEMBERED_ID + _TWO_OFFSETS.pack(state.id_generation - 1, 0))  # fmt: skip
        batch.put(META_ID_GENERATION, _OFFSET.pack(state.id_generation))
        return batch

    def commit(self, batch: WriteBatch, state: State, outputs: list[tuple[bytes, bytes]], projection=None,
               chain: DigestChain | None = None) -> None:  # fmt: skip
        """Steps 5-7 of ``checkpoint`` on a batch from ``stage`` of the same state."""
        for key, record in outputs:
            batch.put(key, record)
        if projection is not None:
            head, commands, positions = projection.stored_changes()
            batch.put(PROJECTION, _encode(head))
            for command_id, command in commands.items():
                key = EPISODE_COMMAND + command_id.encode()
                batch.delete(key) if command is None else batch.put(key, _encode(command))
            for position_key, record in positions.items():
                key = EPISODE_POSITION + _join(*position_key)
                batch.delete(key) if record is None else batch.put(key, _encode(record))
        if chain is not None:
            first, fingerprints, links = chain.take()
            if fingerprints:
                batch.put(offset_key(FINGERPRINTS, first), fingerprints)
            for link in links:
                batch.put(offset_key(CHAIN_LINK, link.offset), _encode_json(link))
            batch.put(META_CHAIN, _encode(chain.meta()))
        batch.put(META_OFFSET, _OFFSET.pack(state.offset))
        crash_point("checkpoint.before_write")
        self._db.write(batch, self._sync)
        crash_point("checkpoint.after_write")
        self._checkpointed_offset = state.offset
        state.clear_dirty()
        if projection is not None:
            projection.clear_stored()

    def projection_snapshot(self) -> list | None:
        """The liquidation projection's stored state as its ``sections`` (None before its first checkpoint)."""
        head = self._get(PROJECTION)
        if head is None:
            return None
        commands = [_decode_list(value) for _, value in self._scan(EPISODE_COMMAND)]
        positions = [[*_split(key, EPISODE_POSITION), _decode_list(value)] for key, value in self._scan(EPISODE_POSITION)]
        return [*_decode_list(head), [BOOK_VERSION], commands, sorted(positions)]

    def load_projection(self, state: State):
        """The liquidation projection as of the last checkpoint, its index rebuilt from ``state``."""
        projection = LiquidationProjection()
        snapshot = self.projection_snapshot()
        if snapshot is None:
            projection.rebuild(state)
        else:
            projection.restore(snapshot, state)
        return projection

    def load_chain(self, every: int | None = None) -> DigestChain:
        """The digest chain as of the last checkpoint; ``every`` (None: the stored one) must match a stored chain."""
        raw = self._get(META_CHAIN)
        applied = self.stored_offset()
        if raw is None:
            check(applied < 0, "a format-2 store with state has a chain")
            return DigestChain(every or CHAIN_EVERY_EVENTS)
        stored_every, last_offset, last_chain = _decode_list(raw)
        if every is not None and every != stored_every:
            raise ChainSettingError(
                f"{self.path} chains a digest every {stored_every} events; it cannot change to {every} "
                "(omit the option, or delete the state directory to rebuild it by replay)"
            )
        return DigestChain(stored_every, last_offset, last_chain, applied)

    def chain_every(self) -> int | None:
        raw = self._get(META_CHAIN)
        return None if raw is None else _decode_list(raw)[0]

    def chain_links(self) -> Iterator[bytes]:
        """Every link (JSON), in offset order."""
        return (value for _, value in self._scan(CHAIN_LINK))

    def fingerprints(self, after: int = -1) -> Iterator[tuple[int, bytes]]:
        """(offset, fingerprint) of every applied record after ``after``, in offset order."""
        iterator = self._iterator()
        iterator.seek_for_prev(offset_key(FINGERPRINTS, after + 1))  # the chunk holding after + 1
        if not iterator.valid():
            self._checked_end(iterator)
        start = iterator.key() if iterator.valid() and iterator.key().startswith(FINGERPRINTS) else None
        for key, chunk in self._scan(FINGERPRINTS, start=start):
            first = _OFFSET.unpack(key[len(FINGERPRINTS) :])[0]
            for index in range(max(0, after + 1 - first), len(chunk) // FINGERPRINT_BYTES):
                yield first + index, chunk[index * FINGERPRINT_BYTES : (index + 1) * FINGERPRINT_BYTES]

    # -- outputs -------------------------------------------------------------------------

    def outputs(self, prefix: bytes, after: int) -> Iterator[tuple[int, bytes]]:
        """(position, record) of one output kind (COMMAND: by sequence; others: by offset) after ``after``."""
        for key, value in self._scan(prefix, start=offset_key(prefix, after + 1)):
            yield _OFFSET.unpack(key[len(prefix) :])[0], value

    def commands(self, after: int = 0) -> Iterator[tuple[int, bytes]]:
        """(sequence, command) of the outbox, after sequence ``after``."""
        return self.outputs(COMMAND, after)

    def alerts(self) -> Iterator[bytes]:
        return (value for _, value in self._scan(ALERT))

    @staticmethod
    def _published_key(prefix: bytes) -> bytes:
        return META_PUBLISHED if prefix == COMMAND else META_PUBLISHED + b":" + prefix

    def published(self, prefix: bytes = COMMAND) -> int:
        """The last published position of an output kind: 0 (commands) or -1 (offsets) when none."""
        raw = self._get(self._published_key(prefix))
        if raw is None:
            return 0 if prefix == COMMAND else -1
        return _OFFSET.unpack(raw)[0]

    def set_published(self, position: int, prefix: bytes = COMMAND) -> None:
        self._db.put(self._published_key(prefix), _OFFSET.pack(position), self._sync)

    def rejections(self) -> Iterator[bytes]:
        return (value for _, value in self._scan(REJECTION))

    def deadletters(self) -> Iterator[bytes]:
        return (value for _, value in self._scan(DEADLETTER))
