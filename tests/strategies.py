"""Hypothesis strategies shared by the tests."""

import numpy as np
from hypothesis import strategies as st

dims = st.integers(1, 4)
shapes = st.lists(dims, min_size=0, max_size=3).map(tuple)


@st.composite
def broadcastable_pair(draw):
    """Two shapes that numpy broadcasts: drop leading dims or set some to 1."""
    full = draw(st.lists(dims, min_size=1, max_size=3).map(tuple))
    def variant():
        cut = draw(st.integers(0, len(full)))
        return tuple(1 if draw(st.booleans()) else d for d in full[cut:])
    return variant(), variant()


def arrays(shape, seed, low=-2.0, high=2.0):
    return np.random.default_rng(seed).uniform(low, high, size=shape)
