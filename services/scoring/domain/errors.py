"""Domain exceptions of the scoring maths."""

from __future__ import annotations

from shared.errors import NotRetryable


class ModelFitError(Exception):
    """The data cannot support a maximum-likelihood fit; the message says what to do."""


class MoneyLimitExceeded(NotRetryable, ValueError):
    """A customer's sums would pass what Money holds (max_digits=18, decimal_places=4): the
    ledgers and values keep them as Money, so the purchase that would take them there is refused."""
