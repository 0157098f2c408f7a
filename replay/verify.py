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

Nothing is written; the live store is opened read-only.
"""

from dataclasses import dataclass
from itertools import islice

import msgspec

from ringfence.core.digest import chain_link, compute_digest
from ringfence.core.state import State
from ringfence.projections.chain import FINGERPRINT_BYTES, ChainLink, DigestChain
from ringfence.projections.liquidation import LiquidationProjection
from ringfence.projections.runner import reduce_records
from ringfence.projections.store import StateStore

_decode_link = msgspec.json.Decoder(ChainLink).decode
SLICE_EVENTS = 50_000


class NoChain(Exception):
    """The store holds no digest chain to verify against."""


@dataclass(frozen=True)
class Divergence:
    offset: int
    kind: str  # record | state | chain | snapshot | missing
    detail: str


@dataclass(frozen=True)
class Verification:
    start: int  # the first offset replayed (0, or the one after a snapshot)
    verified_to: int  # the last offset compared
    links: int  # links compared
    last_chain: str
    divergence: Divergence | None
    unapplied: bool  # the log holds records after what the core applied


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


def verify(log, store: StateStore, *, start: tuple[State, LiquidationProjection, DigestChain] | None = None) -> Verification:
    """Replay ``log`` against the chain and fingerprints in ``store``; stop at the first divergence."""
    every = store.chain_every()
    if every is None:
        raise NoChain(f"{store.path} holds no digest chain (run `ringfence run` first)")
    applied_to = store.stored_offset()
    stored_links = _stored_links(store)
    if start is None:
        state, projection, chain = State(), LiquidationProjection(), DigestChain(every)
    else:
        state, projection, chain = start
    first_offset = state.offset + 1
    fingerprints = store.fingerprints(after=state.offset)
    records = log.read(first_offset)
    links = 0
    divergence = None
    while state.offset < applied_to:
        previous_link = chain.last_offset
        applied = reduce_records(state, islice(records, SLICE_EVENTS), until=applied_to, projection=projection,
                                 decode=log.decode, chain=chain)  # fmt: skip
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
    unapplied = divergence is None and next(iter(log.read(applied_to + 1)), None) is not None
    return Verification(first_offset, min(state.offset, applied_to), links, chain.last_chain, divergence, unapplied)


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
