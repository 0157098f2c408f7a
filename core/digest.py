"""Canonical state digest: BLAKE2b-256 over a canonical encoding of the sorted state.

The encoding is JSON arrays (msgspec; arbitrary-precision ints, no floats),
one section at a time in a fixed order, each sorted by key. Zero balances are
left out: a wallet at zero and a wallet never touched are the same state.
Same log prefix => same digest, whatever the process, hash seed or backend.
"""

import hashlib

import msgspec

from ringfence.core.state import State

DIGEST_VERSION = "ringfence-state-v1"

_encode = msgspec.json.Encoder().encode


def _nonzero_sorted(book: dict) -> list:
    return [[key, value] for key, value in sorted(book.items()) if value != 0]


def canonical_sections(state: State):
    yield [DIGEST_VERSION, state.offset]
    yield [[name, m.config, m.mark, m.mark_ts] for name, m in sorted(state.markets.items())]
    yield [
        [*key, p.size, p.cost, p.margin, p.shortfall] for key, p in sorted(state.positions.items())
    ]
    yield [[*key, wallet.balance] for key, wallet in sorted(state.wallets.items()) if wallet.balance != 0]
    yield [[*key, value] for key, value in sorted(state.leverage.items())]
    for book in (state.insurance, state.fee_income, state.clearing, state.net_deposits):
        yield _nonzero_sorted(book)
    # both generations in insertion order, which is offset order
    yield [state.id_generation, list(state.older_ids.items()), list(state.recent_ids.items())]


def compute_digest(state: State, extra_sections=()) -> str:
    """Digest of the core state, followed by ``extra_sections`` (e.g. a projection's own state)."""
    hasher = hashlib.blake2b(digest_size=32)
    for section in canonical_sections(state):
        hasher.update(_encode(section))
        hasher.update(b"\n")
    for section in extra_sections:
        hasher.update(_encode(section))
        hasher.update(b"\n")
    return hasher.hexdigest()
