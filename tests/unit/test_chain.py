"""The digest chain's pure parts: link offsets, the chain hash, fingerprint chunks."""

import pytest

from ringfence.core.digest import CHAIN_GENESIS, chain_link
from ringfence.core.state import State
from ringfence.projections.chain import DigestChain


@pytest.mark.parametrize("every, applied, next_link", [
    (10, -1, 9), (10, 0, 9), (10, 8, 9), (10, 9, 19), (10, 10, 19), (1, -1, 0), (1, 5, 6),
])  # fmt: skip
def test_links_fall_on_fixed_offsets_whatever_the_resume_point(every, applied, next_link):
    assert DigestChain(every, applied=applied).next_link == next_link


def test_the_chain_hash_depends_on_every_part_of_the_link():
    base = chain_link(CHAIN_GENESIS, 9, "ab" * 32)
    assert base == chain_link(CHAIN_GENESIS, 9, "ab" * 32)
    assert len({base, chain_link("1" * 64, 9, "ab" * 32), chain_link(CHAIN_GENESIS, 19, "ab" * 32),
                chain_link(CHAIN_GENESIS, 9, "cd" * 32)}) == 4  # fmt: skip


def test_take_hands_over_fingerprints_and_links_once():
    chain = DigestChain(2, applied=-1)
    for offset in range(3):
        chain.fingerprints += bytes([offset]) * 8
        if offset == chain.next_link:
            link = chain.link(offset, State(), None)
    assert (link.offset, link.previous, chain.next_link) == (1, CHAIN_GENESIS, 3)
    first, chunk, links = chain.take()
    assert (first, len(chunk), links) == (0, 24, [link])
    assert chain.take() == (3, b"", [])
    with pytest.raises(ValueError):
        DigestChain(0)
