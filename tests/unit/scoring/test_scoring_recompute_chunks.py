"""A recompute writes customers in chunks of whole heap pages (see recompute.page_chunks)."""

from __future__ import annotations

import numpy as np

from services.scoring.recompute import page_chunks


def test_chunks_cover_everyone_once_in_page_order_without_splitting_a_page() -> None:
    rng = np.random.default_rng(4)
    page = rng.integers(0, 900, 10_000)  # about 11 rows a page, in random (customer id) order

    chunks = page_chunks(page, 1000)

    positions = np.concatenate([rows for rows, _ in chunks])
    assert sorted(positions.tolist()) == list(range(10_000))
    previous_last = -1
    for rows, (first, last) in chunks:
        assert page[rows].min() == first and page[rows].max() == last
        assert first > previous_last  # consecutive, disjoint page ranges
        previous_last = last
        # About the size asked for: at most one page's rows more.
        assert 1000 <= len(rows) <= 1000 + np.bincount(page).max() or rows is chunks[-1][0]
    assert len(chunks) in range(9, 11)


def test_one_chunk_when_everyone_fits_and_none_for_nobody() -> None:
    page = np.array([3, 0, 3, 1])
    assert [(rows.tolist(), pages) for rows, pages in page_chunks(page, 10)] == [
        ([1, 3, 0, 2], (0, 3))
    ]
    assert page_chunks(np.zeros(0, dtype=np.int64), 10) == []
