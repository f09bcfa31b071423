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
        assert first <= page[rows].min() and page[rows].max() == last
        # The ranges follow each other from page 0: together they cover every page.
        assert first == previous_last + 1
        previous_last = last
        # About the size asked for: at most one page's rows more.
        assert 1000 <= len(rows) <= 1000 + np.bincount(page).max() or rows is chunks[-1][0]
    assert len(chunks) in range(9, 11)


def test_one_chunk_when_everyone_fits_and_none_for_nobody() -> None:
    page = np.array([3, 0, 3, 1])
    assert [(rows.tolist(), pages) for rows, pages in page_chunks(page, 10)] == [
        ([1, 3, 0, 2], (0, 3))
    ]
    # Pages without a row (0, 1 and 4) still belong to a chunk.
    assert [pages for _, pages in page_chunks(np.array([2, 5, 5, 3]), 2)] == [(0, 3), (4, 5)]
    assert page_chunks(np.zeros(0, dtype=np.int64), 10) == []
