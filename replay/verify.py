"""`ringfence replay --verify`: recompute the digest chain and name the first offset where it diverges.

The store of a `run` or `serve` holds the chain the core made (a link every
N events) and the fingerprint of every record it applied. Verification
replays the log in memory, from offset 0 or from a snapshot whose digest
matches its stored link, and compares as it goes:

- a record whose fingerprint differs: the log no longer holds the record the
  core applied at that offset (the exact offset);
- a link whose digest differs while every record before it matches: the
  reducer computed another state from the same records (a code or config
  change), somewhere after the previous link;
- a link whose chain hash differs: the stored chain itself was altered.

Whether or not a link falls in the range, the end is compared too: the
store's own state and projection (their digest) against the replay's, and
the store's outbox (commands and cancels) against the replay's decisions.
Before anything, every key of the store is read once with its checksums.

Nothing is written; the live store is opened read-only.
"""

from dataclasses import dataclass
from itertools import islice

import msgspec

from ringfence.core.digest import chain_link, compute_digest
from ringfence.core.state import State
from ringfence.projections.chain import FINGERPRINT_BYTES, ChainLink, DigestChain
from ringfence.projections.liquidation import LiquidationProjection
from ringfence.projections.outbox import decision_records
from ringfence.projections.runner import reduce_records
from ringfence.projections.store import COMMAND, StateStore

_decode_link = msgspec.json.Decoder(ChainLink).decode
SLICE_EVENTS = 50_000


class NoChain(Exception):
    """The store holds no digest chain to verify against."""


@dataclass(frozen=True)
class Divergence:
    offset: int
    kind: str  # record | state | chain | snapshot | missing | final state | outbox
    detail: str


@dataclass(frozen=True)
class Verification:
    start: int  # the first offset replayed (0, or the one after a snapshot)
    verified_to: int  # the last offset compared
    links: int  # links compared
    last_chain: str
    divergence: Divergence | None
    unapplied: bool  # the log holds records after what the core applied
    outbox: int = 0  # outbox records compared


def _stored_links(store: StateStore) -> dict[int, ChainLink]:
    return {link.offset: link for link in map(_decode_link, store.chain_links())}


def _first_record_mismatch(first: int, computed: bytes, stored: list[tuple[int, bytes]]) -> Divergence | None:
    for index in range(len(computed) // FINGERPRINT_BYTES):
        offset = first + index
        mine = computed[index * FINGERPRINT_BYTES : (index + 1) * FINGERPRINT_BYTES]
        if index >= len(stored) or stored[index][0] != offset:
            return Divergence(offset, "missing", f"the store has no fingerprint for offset {offset}")
        if stored[index][1] != mine:
            return Divergence(offset, "record", f"the record at offset {offset} is not the one the core applied "
                                                f"(fingerprint {stored[index][1].hex()}, log now {mine.hex()})")  # fmt: skip
    return None


def _first_link_mismatch(links: list[ChainLink], stored: dict[int, ChainLink], previous_link: int) -> Divergence | None:
    for link in links:
        kept = stored.get(link.offset)
        if kept is None:
            return Divergence(link.offset, "missing", f"the store has no chain link at offset {link.offset}")
        if kept.chain != chain_link(kept.previous, kept.offset, kept.digest) or kept.previous != link.previous:
            return Divergence(link.offset, "chain", f"the stored chain link at offset {link.offset} does not "
                              "chain to its predecessor (the stored chain was altered)")  # fmt: skip
        if kept.digest != link.digest:
            return Divergence(link.offset, "state", f"the state digest at offset {link.offset} differs (stored "
                              f"{kept.digest[:16]}, replay {link.digest[:16]}) although every record from offset "
                              f"{previous_link + 1} is the one the core applied: the reducer computed another "
                              "state from the same records")  # fmt: skip
        previous_link = link.offset
    return None


def verify(log, store: StateStore, *, start: tuple[State, LiquidationProjection, DigestChain] | None = None,
           projection: LiquidationProjection | None = None) -> Verification:  # fmt: skip
    """Replay ``log`` against the chain and fingerprints in ``store``; stop at the first divergence.

    ``projection``: a fresh one set up as one partition of several (ops.fund_board.BoardCoordinator).
    """
    every = store.chain_every()
    if every is None:
        raise NoChain(f"{store.path} holds no digest chain (run `ringfence run` first)")
    store.verify_all()  # damage anywhere in the store is StoreCorrupt, not a verified result
    applied_to = store.stored_offset()
    stored_links = _stored_links(store)
    if start is None:
        state, projection, chain = State(), projection or LiquidationProjection(), DigestChain(every)
    else:
        state, projection, chain = start
    first_offset = state.offset + 1
    fingerprints = store.fingerprints(after=state.offset)
    records = log.read(first_offset)
    first_sequence = projection.sequence
    outbox: list[tuple[bytes, bytes]] = []  # the commands and cancels the replay decides, keyed as stored

    def decided(decisions: list, sequence: int) -> None:
        outbox.extend(record for record in decision_records(decisions, sequence)[0] if record[0].startswith(COMMAND))

    links = 0
    divergence = None
    while state.offset < applied_to:
        previous_link = chain.last_offset
        applied = reduce_records(state, islice(records, SLICE_EVENTS), until=applied_to, projection=projection,
                                 decode=log.decode, chain=chain, on_outputs=decided)  # fmt: skip
        if not applied:
            break
        first, computed, made = chain.take()
        stored = list(islice(fingerprints, len(computed) // FINGERPRINT_BYTES))
        record = _first_record_mismatch(first, computed, stored)
        link = _first_link_mismatch(made, stored_links, previous_link)
        candidates = [d for d in (record, link) if d is not None]
        if candidates:
            divergence = min(candidates, key=lambda d: (d.offset, d.kind != "record"))
            break
        links += len(made)
    if divergence is None and state.offset < applied_to:
        divergence = Divergence(state.offset + 1, "missing",
                                f"the log ends at offset {state.offset}; the core applied up to {applied_to}")  # fmt: skip
    if divergence is None:
        divergence = _final_mismatch(store, state, projection, first_sequence, outbox)
    unapplied = divergence is None and next(iter(log.read(applied_to + 1)), None) is not None
    return Verification(first_offset, min(state.offset, applied_to), links, chain.last_chain, divergence, unapplied,
                        len(outbox))  # fmt: skip


def _final_mismatch(store: StateStore, state: State, projection: LiquidationProjection, after_sequence: int,
                    outbox: list[tuple[bytes, bytes]]) -> Divergence | None:  # fmt: skip
    """The store's state, projection and outbox at its applied offset against the replay's, however far the last link."""
    stored_state = store.load()
    stored_digest = compute_digest(stored_state, store.load_projection(stored_state).canonical_sections())
    replayed_digest = compute_digest(state, projection.canonical_sections())
    if stored_digest != replayed_digest:
        return Divergence(state.offset, "final state", f"the store's state at offset {state.offset} is not the "
                          f"log's (stored digest {stored_digest[:16]}, replay {replayed_digest[:16]})")  # fmt: skip
    stored = list(store.commands(after=after_sequence))
    for index in range(max(len(stored), len(outbox))):
        mine = outbox[index][1] if index < len(outbox) else None
        kept = stored[index][1] if index < len(stored) else None
        if mine != kept:
            sequence = after_sequence + index + 1
            return Divergence(state.offset, "outbox", f"outbox record {sequence} differs: stored "
                              f"{_shown(kept)}, replay {_shown(mine)}")  # fmt: skip
    return None


def check_published(store: StateStore, published) -> Divergence | None:
    """The commands log (what the outbox published) against the store's outbox, which verify compared with the replay.

    At least once: a record may appear twice (a crash between publishing and
    moving the mark, or a damaged tail published again), but none may be
    missing up to the published mark, and none may be one the store does not hold.
    """
    stored = dict(store.commands())
    known = {bytes(record): sequence for sequence, record in stored.items()}
    seen = set()
    for offset, record in published.read(0):
        sequence = known.get(bytes(record))
        if sequence is None:
            return Divergence(store.stored_offset(), "outbox", f"the commands log's record at offset {offset} is no "
                              f"command of the store's outbox: {_shown(record)}")  # fmt: skip
        seen.add(sequence)
    mark = store.published()
    lost = [sequence for sequence in stored if sequence <= mark and sequence not in seen]
    if lost:
        return Divergence(store.stored_offset(), "outbox", f"{len(lost)} commands marked published are not in the "
                          f"commands log (the first: outbox record {lost[0]})")  # fmt: skip
    return None


def _shown(record: bytes | None) -> str:
    return "nothing" if record is None else bytes(record[:200]).decode("utf-8", "replace")


def check_snapshot(store: StateStore, point: tuple[State, LiquidationProjection, DigestChain]) -> Divergence | None:
    """A snapshot's own digest against the link the store recorded at its offset (before trusting it as a start)."""
    state, projection, chain = point
    kept = _stored_links(store).get(state.offset)
    if kept is None:
        return Divergence(state.offset, "missing", f"the store has no chain link at the snapshot's offset {state.offset}")
    digest = compute_digest(state, projection.canonical_sections())
    if digest != kept.digest or chain.last_chain != kept.chain:
        return Divergence(state.offset, "snapshot", f"the snapshot at offset {state.offset} does not match its chain "
                          f"link (digest {digest[:16]}, link {kept.digest[:16]})")  # fmt: skip
    return None
