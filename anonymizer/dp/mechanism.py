"""The noise: OpenDP's discrete Laplace mechanisms, imported only when a run asks for them.

No noise is sampled here: :func:`noisy_counts` is OpenDP's ``make_laplace`` on a vector of
integers (discrete Laplace, L1 sensitivity) and :func:`noisy_selection` is OpenDP's
``make_laplace_threshold`` on a map of counts (discrete Laplace, then keys whose noisy count
is below the threshold are dropped). The privacy each spends is read from OpenDP's own
privacy maps, never computed by hand.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from functools import cache
from types import ModuleType
from typing import Any

INSTALL_HINT = "differential privacy needs OpenDP: pip install 'consent-anonymizer[dp]'"
"""The one line shown when ``--epsilon`` is used without the ``dp`` extra."""

MECHANISM = "discrete Laplace (OpenDP make_laplace; make_laplace_threshold for key selection)"
"""How the notice and the metadata name the mechanism."""


class OpenDPMissingError(ImportError):
    """OpenDP is not installed; the message is the one-line install hint."""


@cache
def opendp() -> ModuleType:
    """``opendp.prelude`` with the ``contrib`` features enabled (imported on first use)."""
    try:
        import opendp.prelude as dp
    except ImportError as exc:
        raise OpenDPMissingError(INSTALL_HINT) from exc
    dp.enable_features("contrib")
    return dp


@cache
def _laplace(scale: float) -> Any:
    dp = opendp()
    space = dp.vector_domain(dp.atom_domain(T="i64")), dp.l1_distance(T="i64")
    return dp.m.make_laplace(*space, scale=scale)


@cache
def _laplace_threshold(scale: float, threshold: int) -> Any:
    dp = opendp()
    domain = dp.map_domain(dp.atom_domain(T=str), dp.atom_domain(T="i64"))
    metric = dp.l01inf_distance(dp.absolute_distance(T="i64"))
    return dp.m.make_laplace_threshold(domain, metric, scale=scale, threshold=threshold)


def laplace_epsilon(scale: float, sensitivity: int) -> float:
    """Epsilon OpenDP charges for :func:`noisy_counts` at ``scale`` when one unit changes
    the vector by at most ``sensitivity`` in L1."""
    return float(_laplace(scale).map(sensitivity))


def selection_privacy(scale: float, threshold: int, max_rows: int) -> tuple[float, float]:
    """(epsilon, delta) OpenDP charges for :func:`noisy_selection` when one unit reaches at
    most ``max_rows`` keys and changes each count by at most 1."""
    epsilon, delta = _laplace_threshold(scale, threshold).map((max_rows, max_rows, 1))
    return float(epsilon), float(delta)


def selection_threshold(scale: float, max_rows: int, delta: float, minimum: int = 1) -> int:
    """The smallest threshold ``>= minimum`` at which OpenDP's delta for the selection is at
    most ``delta``: a key held by one visitor alone is then published with probability at
    most ``delta`` (about ``1 + scale * ln(max_rows / delta)``)."""
    if not 0 < delta < 1:
        raise ValueError("delta must be between 0 and 1")

    def ok(threshold: int) -> bool:
        return selection_privacy(scale, threshold, max_rows)[1] <= delta

    low = max(1, minimum)
    if ok(low):
        return low
    # Exponential search for a passing threshold, then bisection (delta falls as it grows).
    high = max(low + 1, math.ceil(1 + scale * math.log(max(max_rows, 1) / delta)))
    while not ok(high):
        low, high = high, high * 2
    while high - low > 1:
        middle = (low + high) // 2
        low, high = (low, middle) if ok(middle) else (middle, high)
    return high


def noisy_counts(values: Sequence[int], scale: float) -> list[int]:
    """``values`` plus independent discrete Laplace noise of ``scale`` (OpenDP)."""
    if not values:
        return []
    return [int(v) for v in _laplace(scale)([int(v) for v in values])]


def noisy_selection(counts: Sequence[int], scale: float, threshold: int) -> dict[int, int]:
    """Noisy ``counts`` (discrete Laplace of ``scale``, OpenDP) of the positions whose noisy
    count reaches ``threshold``; every other position is dropped."""
    if not counts:
        return {}
    released = _laplace_threshold(scale, threshold)({str(i): int(c) for i, c in enumerate(counts)})
    return {int(key): int(value) for key, value in released.items()}
