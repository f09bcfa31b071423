"""Revenue concentration (the Pareto view, DOMAIN.md §3): what share of net revenue the top
share of customers holds, as a Lorenz curve over customers ranked by net revenue.

The curve is piecewise linear between whole customers: customer i (1-based, best first) holds
the customers' shares ((i-1)/n, i/n], so the top 20% of 3 customers are 0.6 of the first. Every
point, and the top-20% figure, is this one curve: with few customers, a curve that put each
customer's revenue at the end of their share (and a headline that rounded 0.2·n up to a whole
customer) said 0 and 1 for the same 20%.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from decimal import Decimal
from fractions import Fraction


def positions_needed(customers: int, shares: Sequence[Fraction]) -> set[int]:
    """The ranks whose revenue and cumulative revenue `share_held` reads for these shares."""
    needed = {customers} if customers else set()
    for share in shares:
        whole = int(share * customers)  # floor: shares are within [0, 1]
        needed.update(p for p in (whole, whole + 1) if 1 <= p <= customers)
    return needed


def share_held(
    share: Fraction,
    *,
    customers: int,
    revenue: Mapping[int, Decimal],
    cumulative: Mapping[int, Decimal],
) -> float:
    """The share of all revenue held by the top `share` of `customers`.

    `revenue[i]` and `cumulative[i]` are the revenue of the customer ranked i and of the
    customers ranked 1..i, for at least the ranks of `positions_needed`. Zero without revenue.
    """
    if not 0 <= share <= 1:
        raise ValueError(f"a share of customers is within [0, 1], not {share}")
    total = cumulative.get(customers, Decimal(0)) if customers else Decimal(0)
    if total <= 0:
        return 0.0
    position = share * customers
    whole = int(position)
    held = cumulative[whole] if whole else Decimal(0)
    part = position - whole
    if part:
        held += revenue[whole + 1] * part.numerator / part.denominator
    return float(held / total)
