"""Money on the wire (ARCHITECTURE.md: a decimal string plus an ISO 4217 `currency`): the
currency's minor units, so that every service writes an amount the same way ("129.90" USD,
"1200" JPY, "1.250" KWD)."""

from __future__ import annotations

from collections.abc import Mapping
from decimal import Decimal
from typing import Final

#: ISO 4217 currencies whose minor unit is not 1/100 (list 1, 2024); everything else has 2.
_MINOR_UNITS_OTHER_THAN_TWO: Final[Mapping[str, int]] = {
    # no minor unit
    "BIF": 0, "CLP": 0, "DJF": 0, "GNF": 0, "ISK": 0, "JPY": 0, "KMF": 0, "KRW": 0,
    "PYG": 0, "RWF": 0, "UGX": 0, "UYI": 0, "VND": 0, "VUV": 0, "XAF": 0, "XOF": 0,
    "XPF": 0,
    # thousandths
    "BHD": 3, "IQD": 3, "JOD": 3, "KWD": 3, "LYD": 3, "OMR": 3, "TND": 3,
    # ten-thousandths
    "CLF": 4, "UYW": 4,
}  # fmt: skip

#: The smallest amount per number of decimal places (`0.01` for 2), made once, not per amount.
_QUANTA: Final = {places: Decimal(1).scaleb(-places) for places in range(5)}


def minor_units(currency: str) -> int:
    """Decimal places of the currency's minor unit (ISO 4217): USD 2, JPY 0, KWD 3."""
    return _MINOR_UNITS_OTHER_THAN_TWO.get(currency, 2)


def quantum(places: int) -> Decimal:
    """The smallest amount with this many decimal places (`0.01` for 2)."""
    return _QUANTA.get(places) or Decimal(1).scaleb(-places)


def in_minor_units(amount: Decimal, currency: str) -> Decimal:
    """The amount with exactly the currency's minor units (`12.5` USD -> `12.50`, `389.7000`
    -> `389.70`), rounded half-even when it has more (a prediction), never `-0`."""
    quantized = amount.quantize(quantum(minor_units(currency)))
    return abs(quantized) if quantized.is_zero() else quantized
