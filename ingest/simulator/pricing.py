"""Option prices for the simulated market: Black-Scholes on the spot, a volatility smile and
time decay, all pure functions.

One module prices every option the simulator trades, so that the price, the greeks and the
IV a frame carries (and the option-chain endpoint answers) come from one formula and agree
with each other: an audit that recomputes IV from our LTP finds the IV we sent, up to the
tick rounding of the price.
"""

from __future__ import annotations

import math

RISK_FREE_RATE = 0.065
DAY_MS = 86_400_000
YEAR_MS = 365 * DAY_MS
# Time left is never taken below an hour: at the close of expiry day a zero would divide, and
# an option an hour from expiry is worth its intrinsic value plus a sliver, as it trades.
MIN_YEARS = 3_600_000 / YEAR_MS

Greeks = tuple[float, float, float, float, float]  # delta, theta/day, gamma, vega/1%, rho/1%


def black_scholes(
    spot: float, strike: float, years: float, vol: float, call: bool, rate: float = RISK_FREE_RATE
) -> tuple[float, Greeks]:
    """Price and (delta, theta per day, gamma, vega and rho per 1%) of a European option."""
    root = vol * math.sqrt(years)
    d1 = (math.log(spot / strike) + (rate + vol * vol / 2) * years) / root
    d2 = d1 - root
    discount = strike * math.exp(-rate * years)
    density = math.exp(-d1 * d1 / 2) / math.sqrt(2 * math.pi)
    n1, n2 = _cdf(d1 if call else -d1), _cdf(d2 if call else -d2)
    sign = 1.0 if call else -1.0
    price = sign * (spot * n1 - discount * n2)
    delta = sign * n1
    gamma = density / (spot * root)
    vega = spot * density * math.sqrt(years) / 100
    theta = -spot * density * vol / (2 * math.sqrt(years)) - sign * rate * discount * n2
    rho = sign * discount * years * n2 / 100
    return price, (delta, theta / 365, gamma, vega, rho)


def _cdf(x: float) -> float:
    return 0.5 * (1.0 + math.erf(x / math.sqrt(2.0)))


def smile(base: float, spot: float, strike: float, years: float) -> float:
    """The IV of `strike` on a smile whose at-the-money IV is `base`.

    Equity-index smiles are skewed: out-of-the-money puts (low strikes) trade at higher IV
    than calls the same distance away, and both wings rise. Moneyness is measured in
    standard deviations to expiry, so the smile narrows in strike terms as expiry nears.
    """
    moneyness = math.log(strike / spot) / (base * math.sqrt(years))
    return min(1.5, max(0.05, base * (1.0 - 0.06 * moneyness + 0.02 * moneyness * moneyness)))


def years_to(expiry_ms: int, now_ms: int) -> float:
    """Years from `now_ms` to an expiry, never below MIN_YEARS."""
    return max((expiry_ms - now_ms) / YEAR_MS, MIN_YEARS)


def implied_vol(
    price: float, spot: float, strike: float, years: float, call: bool, rate: float = RISK_FREE_RATE
) -> float:
    """The volatility at which `black_scholes` gives `price` (bisection, to 1e-6).

    For checks (an audit, a test): the simulator itself prices from IV, never the reverse.
    A price outside the no-arbitrage bounds raises ValueError naming it.
    """
    low, high = 1e-4, 5.0
    if not black_scholes(spot, strike, years, low, call, rate)[0] <= price:
        raise ValueError(f"price {price} is below the option's lower bound")
    if not price <= black_scholes(spot, strike, years, high, call, rate)[0]:
        raise ValueError(f"price {price} is above the option's value at 500% volatility")
    while high - low > 1e-6:
        middle = (low + high) / 2
        if black_scholes(spot, strike, years, middle, call, rate)[0] < price:
            low = middle
        else:
            high = middle
    return (low + high) / 2
