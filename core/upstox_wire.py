"""What the Upstox V3 feed is, written once: where it is, its modes, and the keys a mode allows.

The client, the simulator, the settings and the API's models take these from here; a test holds
sql/003_subscriptions.sql's CHECK to MODES.
"""

from __future__ import annotations

from typing import Literal, get_args

FEED_PATH = "/v3/feed/market-data-feed"
AUTHORIZE_PATH = FEED_PATH + "/authorize"
# The OAuth authorization-code flow of the daily token: the dialog a browser opens, and the
# form POST that exchanges the code it redirects with.
LOGIN_DIALOG_PATH = "/v2/login/authorization/dialog"
LOGIN_TOKEN_PATH = "/v2/login/authorization/token"  # noqa: S105 (a path)
# Upstox publishes the whole instrument master, every day, as gzipped JSON on its asset host
# (no token needed); the simulator serves its own universe on the same path.
INSTRUMENTS_HOST = "https://assets.upstox.com"
INSTRUMENTS_PATH = "/market-quote/instruments/exchange/complete.json.gz"

Mode = Literal["ltpc", "full", "option_greeks", "full_d30"]
MODES: tuple[str, ...] = get_args(Mode)

# mode: (keys when it is the only mode, keys when modes are combined), per connection.
DEFAULT_MODE_LIMITS: dict[str, tuple[int, int]] = {
    "ltpc": (5000, 2000),
    "option_greeks": (3000, 2000),
    "full": (2000, 1500),
    "full_d30": (50, 1500),
}

REQUEST_METHODS = ("sub", "unsub", "change_mode")
