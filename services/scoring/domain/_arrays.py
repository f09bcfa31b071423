"""Array aliases and small vectorised helpers shared by the scoring maths."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
from numpy.typing import ArrayLike, NDArray

FloatArray = NDArray[np.float64]
IntArray = NDArray[np.int64]
BoolArray = NDArray[np.bool_]
ObjectArray = NDArray[np.object_]


def as_float_array(values: ArrayLike, *, name: str) -> FloatArray:
    """A 1-d float64 array of finite values, or a ValueError naming the input."""
    array = np.asarray(values, dtype=np.float64)
    if array.ndim != 1:
        array = np.atleast_1d(array)
        if array.ndim != 1:
            raise ValueError(f"{name} must be one-dimensional, got shape {array.shape}")
    # The array's own method: np.all's dispatch cost more than the check on a small batch.
    if not np.isfinite(array).all():
        raise ValueError(f"{name} must contain only finite numbers")
    return array


def clip(values: NDArray[Any], low: float, high: float) -> NDArray[Any]:
    """np.clip's result (NaN stays NaN) at a third of its cost on a handler's small arrays,
    where np.clip's Python dispatch outweighs the work."""
    clipped: NDArray[Any] = np.minimum(np.maximum(values, low), high)
    return clipped


def same_length(**arrays: NDArray[Any]) -> int:
    """The common length of the given arrays, or a ValueError listing the lengths."""
    lengths = {name: len(array) for name, array in arrays.items()}
    if len(set(lengths.values())) > 1:
        raise ValueError(f"arrays must have the same length, got {lengths}")
    return next(iter(lengths.values()), 0)


@dataclass(frozen=True, slots=True)
class UniqueRows:
    """Distinct rows of several columns: `columns[k][inverse]` rebuilds column k."""

    columns: tuple[FloatArray, ...]
    inverse: IntArray
    counts: FloatArray


def unique_rows(*columns: FloatArray) -> UniqueRows:
    """Group identical rows (exact equality) with a lexicographic sort: O(n log n)."""
    size = len(columns[0])
    if size == 0:
        empty = tuple(np.empty(0, dtype=np.float64) for _ in columns)
        return UniqueRows(empty, np.empty(0, dtype=np.int64), np.empty(0, dtype=np.float64))
    # np.lexsort sorts by the last key first, so reverse to sort by the first column first.
    order = np.lexsort(tuple(reversed(columns)))
    starts = np.ones(size, dtype=np.bool_)
    for column in columns:
        ordered = column[order]
        starts[1:] &= ordered[1:] == ordered[:-1]
    starts[1:] = ~starts[1:]
    group_of_sorted = np.cumsum(starts) - 1
    inverse = np.empty(size, dtype=np.int64)
    inverse[order] = group_of_sorted
    first_positions = order[starts]
    counts = np.bincount(group_of_sorted).astype(np.float64)
    return UniqueRows(tuple(column[first_positions] for column in columns), inverse, counts)
