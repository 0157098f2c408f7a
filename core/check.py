"""Assertions that stay on under ``python -O``: for programmer errors, never for bad input."""


class InvariantError(AssertionError):
    """A broken internal invariant: a bug, never a property of the input."""


def check(condition: bool, why: str) -> None:
    if not condition:
        raise InvariantError(why)
