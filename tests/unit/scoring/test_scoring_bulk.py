"""Binary COPY payloads <-> NumPy columns (the PostgreSQL side is in the integration tests)."""

from __future__ import annotations

import struct

import numpy as np
import pytest

from services.scoring import bulk

COLUMNS: bulk.Columns = (
    ("id", "uuid"),
    ("flag", "bool"),
    ("small", "int2"),
    ("count", "int4"),
    ("big", "int8"),
    ("ratio", "float8"),
    ("at", "timestamptz"),
)


def _values(n: int) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(3)
    return {
        "id": np.frombuffer(rng.bytes(16 * n), dtype="V16"),
        "flag": rng.random(n) < 0.5,
        "small": rng.integers(-(2**15), 2**15, n),
        "count": rng.integers(-(2**31), 2**31, n),
        "big": rng.integers(-(2**62), 2**62, n),
        "ratio": np.where(rng.random(n) < 0.1, np.nan, rng.normal(size=n)),
        # Unix microseconds, before and after PostgreSQL's epoch (2000-01-01).
        "at": rng.integers(0, 2_000_000_000_000_000, n),
    }


def test_columns_survive_a_round_trip_in_the_wire_format() -> None:
    values = _values(1000)
    payload = bulk.encode(COLUMNS, values)
    # Header, 1000 rows of a field count and (length, value) per field, trailer.
    assert len(payload) == 19 + 1000 * (2 + 7 * 4 + 16 + 1 + 2 + 4 + 8 + 8 + 8) + 2
    back = bulk.parse(payload, COLUMNS)
    for name, column in values.items():
        np.testing.assert_array_equal(back[name], column, err_msg=name)
    assert back["big"].dtype == np.int64 and back["ratio"].dtype == np.float64


def test_timestamps_are_sent_relative_to_the_postgresql_epoch() -> None:
    payload = bulk.encode((("at", "timestamptz"),), {"at": np.array([bulk.PG_EPOCH_MICROS + 5])})
    (field_count, length, value) = struct.unpack(">hiq", payload[19:33])
    assert (field_count, length, value) == (1, 8, 5)


def test_a_null_or_a_variable_width_value_is_refused() -> None:
    row = struct.pack(">hiqi", 2, 8, 7, -1)  # second field NULL: no value bytes follow
    payload = bulk.encode((), {})[:19] + row + b"\xff\xff"
    with pytest.raises(ValueError, match="fixed-width"):
        bulk.parse(payload, (("a", "int8"), ("b", "int8")))
    with pytest.raises(ValueError, match="binary COPY"):
        bulk.parse(b"a,b\n1,2\n", (("a", "int8"),))


def test_an_empty_result_has_empty_columns() -> None:
    back = bulk.parse(bulk.encode(COLUMNS, _values(0)), COLUMNS)
    assert all(len(column) == 0 for column in back.values())
