"""The digest chain: every N events a link (offset, state digest, previous chain hash), and a fingerprint per record.

Links fall on fixed offsets (the N-th, 2N-th, ... event: offset % N == N - 1),
so the chain depends on the log alone, never on when checkpoints happened or
on a crash and restart. A link's digest covers the core and the liquidation
projection (what `ringfence digest` prints), so links from the embedded log
and from a Kafka partition carrying the same events are equal.

Fingerprints (8-byte BLAKE2b of each record's payload as the log carried it,
a missing payload hashed as empty; computed inline in runner.reduce_records)
let `replay --verify` name the exact record that differs from the one the
core applied, between two links. They are stored in chunks, one per
checkpoint, keyed by the chunk's first offset.
"""

import hashlib

import msgspec

from ringfence.core.digest import CHAIN_GENESIS, chain_link, compute_digest

FINGERPRINT_BYTES = 8


def fingerprint(payload) -> bytes:
    """A record's fingerprint (runner.reduce_records computes the same inline, on its hot path)."""
    return hashlib.blake2b(payload or b"", digest_size=FINGERPRINT_BYTES).digest()


class ChainLink(msgspec.Struct, tag="digest", tag_field="type"):
    """One link, as stored (``k:<offset>``), published (``<prefix>.digests``) and printed by `ringfence chain`."""

    offset: int
    digest: str
    previous: str
    chain: str


class DigestChain:
    """The chain as far as the state has been applied, with what is not yet checkpointed."""

    def __init__(self, every: int, last_offset: int = -1, last_chain: str = CHAIN_GENESIS, applied: int = -1):
        if every < 1:
            raise ValueError("the chain links every N >= 1 events")
        self.every = every
        self.last_offset, self.last_chain = last_offset, last_chain
        self.next_link = (applied // every) * every + every - 1  # the first offset past ``applied`` ...
        if self.next_link <= applied:  # ... where offset % every == every - 1
            self.next_link += every
        self.fingerprints = bytearray()  # of the records after the last checkpoint
        self.first = applied + 1  # the offset of fingerprints[0:8]
        self.links: list[ChainLink] = []  # made since the last checkpoint

    def link(self, offset: int, state, projection) -> ChainLink:
        """Make the link at ``offset`` (the caller checks it is ``next_link``) from the state after it."""
        sections = projection.canonical_sections() if projection is not None else ()
        digest = compute_digest(state, sections)
        made = ChainLink(offset, digest, self.last_chain, chain_link(self.last_chain, offset, digest))
        self.last_offset, self.last_chain = offset, made.chain
        self.next_link = offset + self.every
        self.links.append(made)
        return made

    def take(self) -> tuple[int, bytes, list[ChainLink]]:
        """(first offset, fingerprints, links) since the last checkpoint, and start afresh after them."""
        first, chunk, links = self.first, bytes(self.fingerprints), self.links
        self.first += len(chunk) // FINGERPRINT_BYTES
        self.fingerprints = bytearray()
        self.links = []
        return first, chunk, links

    def meta(self) -> list:
        return [self.every, self.last_offset, self.last_chain]
