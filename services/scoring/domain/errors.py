"""Domain exceptions of the scoring maths."""

from __future__ import annotations


class ModelFitError(Exception):
    """The data cannot support a maximum-likelihood fit; the message says what to do."""
