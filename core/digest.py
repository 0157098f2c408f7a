"""Canonical state digest: BLAKE2b-256 over a canonical encoding of the sorted state.

The encoding is JSON arrays (msgspec; arbitrary-precision ints, no floats),
one section at a time in a fixed order, each sorted by key. Zero balances are
left out: a wallet at zero and a wallet never touched are the same state.
Same log prefix => same digest, whatever the process, hash seed or backend.
"""

import hashlib

import msgspec

from ringfence.core.state import State

DIGEST_VERSION = "ringfence-state-v4"  # v2: insurance-fund domains (market field, section); v3: clearance fees, auto-add
# margin; v4: position triggers

_encode = msgspec.json.Encoder().encode


def _nonzero_sorted(book: dict) -> list:
    return [[key, value] for key, value in sorted(book.items()) if value != 0]


def canonical_sections(state: State):
    yield [DIGEST_VERSION, state.offset]
    yield [[name, m.config, m.mark, m.mark_ts] for name, m in sorted(state.markets.items())]
    # sorting the keys, not the items, halves the cost: the keys are unique tuples of str
    positions, wallets, leverage = state.positions, state.wallets, state.leverage
    yield [(*key, p.size, p.cost, p.margin, p.shortfall) for key in sorted(positions) for p in (positions[key],)]
    yield [(*key, balance) for key in sorted(wallets) if (balance := wallets[key].balance) != 0]
    yield [(*key, leverage[key]) for key in sorted(leverage)]
    for book in (state.insurance, state.fee_income, state.clearing, state.net_deposits, state.clearance_fees,
                 state.auto_margin_added):  # fmt: skip
        yield _nonzero_sorted(book)
    yield sorted(key for keys in state.auto_margin.values() for key in keys)
    triggers = state.triggers
    yield [(*key, triggers[key]) for key in sorted(triggers)]
    yield sorted(state.fund_assets.items())  # every fund domain and its asset, once named
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


CHAIN_VERSION = "ringfence-chain-v1"
CHAIN_GENESIS = "0" * 64  # the "previous" of the first link


def chain_link(previous: str, offset: int, digest: str) -> str:
    """The chain hash of the link (offset, digest) after the link hashed ``previous``."""
    return hashlib.blake2b(f"{CHAIN_VERSION}\n{previous}\n{offset}\n{digest}".encode(), digest_size=32).hexdigest()
