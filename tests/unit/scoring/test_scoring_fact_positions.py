"""Ledger rows are placed among the targets by customer id (`facts.positions_of`)."""

from __future__ import annotations

import uuid

import numpy as np

from services.scoring.facts import positions_of


def _ids(values: list[uuid.UUID]) -> np.ndarray:
    return np.frombuffer(b"".join(v.bytes for v in values), dtype="V16")


def test_each_id_is_found_at_its_place_in_uuid_order_and_strangers_are_not() -> None:
    rng = np.random.default_rng(8)
    targets = sorted(uuid.UUID(bytes=rng.bytes(16)) for _ in range(2000))
    strangers = [uuid.UUID(bytes=rng.bytes(16)) for _ in range(300)]
    picks = rng.integers(0, len(targets), 5000)
    rows = [targets[k] for k in picks] + strangers
    order = rng.permutation(len(rows))
    rows = [rows[k] for k in order]

    position, found = positions_of(_ids(targets), _ids(rows))

    expected = {target: k for k, target in enumerate(targets)}
    assert found.tolist() == [row in expected for row in rows]
    assert [int(p) for p, ok in zip(position, found, strict=True) if ok] == [
        expected[row] for row in rows if row in expected
    ]


def test_ids_sharing_their_first_eight_bytes_are_told_apart() -> None:
    prefix = bytes.fromhex("0123456789abcdef")
    twins = sorted(uuid.UUID(bytes=prefix + bytes([k]) * 8) for k in (9, 3, 7))
    targets = sorted([*twins, uuid.UUID(int=1), uuid.UUID(int=2**127)])
    rows = [twins[2], uuid.UUID(bytes=prefix + bytes([5]) * 8), twins[0], uuid.UUID(int=1)]

    position, found = positions_of(_ids(targets), _ids(rows))

    assert found.tolist() == [True, False, True, True]
    assert [targets[p] for p in position[found]] == [twins[2], twins[0], uuid.UUID(int=1)]


def test_no_targets_or_no_rows() -> None:
    some = _ids([uuid.UUID(int=5)])
    empty = np.zeros(0, dtype="V16")
    assert positions_of(empty, some)[1].tolist() == [False]
    position, found = positions_of(some, empty)
    assert len(position) == len(found) == 0
