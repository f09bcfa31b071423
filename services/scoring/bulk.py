"""Binary COPY between PostgreSQL and NumPy: whole columns, no Python object per value.

Fixed-width NOT NULL columns only: queries coalesce NULLs to sentinels and writers turn
sentinels back into NULL in SQL. The wire layout (PostgreSQL docs, COPY "Binary Format"): an
11-byte signature, int32 flags and header-extension length, then per row an int16 field count
and per field an int32 length and the big-endian value; an int16 -1 ends the stream. A row of
fixed-width fields is then a NumPy structured record, so a million rows parse in milliseconds.

COPY takes no bind parameters (asyncpg inlines them with two extra round trips), so a query
bound to arrays returns its rows *packed* instead: one bytea of each row's values in their
binary form (`packed`, the `…send` functions COPY uses), back to back, without field counts or
lengths; `unpack` reads it the same way.

Not scoring-specific: it could move to `shared/db` if another service needs bulk numerics.
"""

from __future__ import annotations

import asyncio
from collections.abc import Mapping, Sequence
from typing import Any

import asyncpg
import numpy as np
from numpy.typing import NDArray

# Microseconds from the Unix epoch to PostgreSQL's (2000-01-01), the zero of timestamptz.
PG_EPOCH_MICROS = 946_684_800_000_000
_SIGNATURE = b"PGCOPY\n\xff\r\n\x00"
_HEADER = _SIGNATURE + b"\x00\x00\x00\x00" + b"\x00\x00\x00\x00"
_TRAILER = b"\xff\xff"
# PostgreSQL type -> (wire dtype, dtype handed to callers).
_TYPES: dict[str, tuple[str, str]] = {
    "bool": ("?", "?"),
    "int2": (">i2", "<i8"),
    "int4": (">i4", "<i8"),
    "int8": (">i8", "<i8"),
    "float8": (">f8", "<f8"),
    "timestamptz": (">i8", "<i8"),
    "uuid": ("V16", "V16"),
}

Columns = Sequence[tuple[str, str]]

# A payload this large is parsed in a thread: a recompute's millions of rows are a second of
# CPU, which held the worker's event loop (its consumers, HTTP); a handler's are far smaller.
PARSE_IN_THREAD_BYTES = 1 << 20


def _row_dtype(columns: Columns) -> np.dtype[Any]:
    layout: list[tuple[str, str]] = [("fields", ">i2")]
    for k, (_, pg_type) in enumerate(columns):
        layout += [(f"length{k}", ">i4"), (f"value{k}", _TYPES[pg_type][0])]
    return np.dtype(layout)


def parse(payload: bytes, columns: Columns) -> dict[str, NDArray[Any]]:
    """Columns (native dtypes; timestamptz as Unix microseconds) from a binary COPY payload."""
    if not payload.startswith(_SIGNATURE):
        raise ValueError("not a binary COPY stream")
    extension = int.from_bytes(payload[15:19], "big")
    start = 19 + extension
    if not payload.endswith(_TRAILER):
        raise ValueError("binary COPY stream without its trailer")
    dtype = _row_dtype(columns)
    body = len(payload) - start - len(_TRAILER)
    if body % dtype.itemsize:
        raise ValueError("binary COPY rows are not all fixed-width: a NULL or a varlena column?")
    rows = np.frombuffer(payload, dtype=dtype, count=body // dtype.itemsize, offset=start)
    if np.any(rows["fields"] != len(columns)):
        raise ValueError(f"binary COPY rows do not have {len(columns)} fields")
    result: dict[str, NDArray[Any]] = {}
    for k, (name, pg_type) in enumerate(columns):
        if np.any(rows[f"length{k}"] != dtype.fields[f"value{k}"][0].itemsize):  # type: ignore[index]
            raise ValueError(f"column {name} has NULLs or an unexpected width")
        values = rows[f"value{k}"].astype(_TYPES[pg_type][1])
        result[name] = values + PG_EPOCH_MICROS if pg_type == "timestamptz" else values
    return result


def encode(columns: Columns, values: Mapping[str, NDArray[Any]]) -> bytes:
    """A binary COPY payload of these columns (timestamptz given as Unix microseconds)."""
    dtype = _row_dtype(columns)
    size = len(values[columns[0][0]]) if columns else 0
    rows = np.empty(size, dtype=dtype)
    rows["fields"] = len(columns)
    for k, (name, pg_type) in enumerate(columns):
        column = np.asarray(values[name])
        if len(column) != size:
            raise ValueError(f"column {name} has {len(column)} values, expected {size}")
        rows[f"length{k}"] = dtype.fields[f"value{k}"][0].itemsize  # type: ignore[index]
        rows[f"value{k}"] = column - PG_EPOCH_MICROS if pg_type == "timestamptz" else column
    return _HEADER + rows.tobytes() + _TRAILER


# PostgreSQL type -> its binary output function (what COPY BINARY sends for a value).
_SEND: dict[str, str] = {
    "bool": "boolsend",
    "int2": "int2send",
    "int4": "int4send",
    "int8": "int8send",
    "float8": "float8send",
    "timestamptz": "timestamptz_send",
    "uuid": "uuid_send",
}


def packed(columns: Columns, expressions: Sequence[str], *, order_by: str = "") -> str:
    """SQL aggregate of rows into one bytea (`unpack` reads it): each row's `expressions`, of
    these column types, in binary form. NOT NULL expressions only: a NULL would drop its row,
    which `unpack` detects by the row count it is given."""
    row = " || ".join(
        f"{_SEND[pg_type]}({expression})"
        for (_, pg_type), expression in zip(columns, expressions, strict=True)
    )
    order = f" ORDER BY {order_by}" if order_by else ""
    return f"coalesce(string_agg({row}, ''::bytea{order}), ''::bytea)"


def unpack(payload: bytes, columns: Columns, rows: int | None = None) -> dict[str, NDArray[Any]]:
    """Columns (native dtypes; timestamptz as Unix microseconds) of rows aggregated by `packed`;
    `rows`: how many there should be."""
    dtype = np.dtype([(f"value{k}", _TYPES[pg_type][0]) for k, (_, pg_type) in enumerate(columns)])
    if len(payload) % dtype.itemsize or (
        rows is not None and len(payload) != rows * dtype.itemsize
    ):
        raise ValueError(f"packed rows are not {rows} rows of {dtype.itemsize} bytes: a NULL?")
    values = np.frombuffer(payload, dtype=dtype)
    result: dict[str, NDArray[Any]] = {}
    for k, (name, pg_type) in enumerate(columns):
        column = values[f"value{k}"].astype(_TYPES[pg_type][1])
        result[name] = column + PG_EPOCH_MICROS if pg_type == "timestamptz" else column
    return result


async def read(
    connection: asyncpg.Connection, query: str, *args: Any, columns: Columns
) -> dict[str, NDArray[Any]]:
    """Run `query` (its result columns in this order and these types) and return its columns."""
    chunks: list[bytes] = []

    async def collect(chunk: bytes) -> None:
        chunks.append(chunk)

    await connection.copy_from_query(query, *args, output=collect, format="binary")
    payload = b"".join(chunks)
    if len(payload) >= PARSE_IN_THREAD_BYTES:
        return await asyncio.to_thread(parse, payload, columns)
    return parse(payload, columns)


async def write(
    connection: asyncpg.Connection,
    table: str,
    columns: Columns,
    values: Mapping[str, NDArray[Any]],
) -> None:
    """COPY these columns into `table` (in the connection's current transaction)."""
    await connection.copy_to_table(
        table,
        # A memoryview (asyncpg documents buffers; its stubs do not): bytes would be a file path.
        source=memoryview(encode(columns, values)),  # type: ignore[arg-type]
        columns=[name for name, _ in columns],
        format="binary",
    )
