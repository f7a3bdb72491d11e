"""What tokens cost: the price table of the config, per million tokens."""

from __future__ import annotations

from decimal import Decimal

from ..core.config import Price

NANOS = 1_000_000_000  # cost unit of the ledger: 1e-9 of the configured currency


class PriceTable:
    """Cost of a call in the configured currency; models without a price cost nothing."""

    def __init__(self, prices: dict[str, Price]) -> None:
        self.replace(prices)

    def replace(self, prices: dict[str, Price]) -> None:
        self._prices = prices
        # per token, in nano-units, exact: a price per million of 0.15 is 150 nanos a token
        self._nanos = {m: _per_token_nanos(p) for m, p in prices.items()}
        self._version_nanos: dict[int, tuple] = {}  # per registry version's Price object (few; bounded by the policy)

    def has(self, model: str) -> bool:
        return model in self._prices

    def cost(self, model: str, prompt: int, completion: int, cached: int = 0, price: Price | None = None,
             created: int = 0) -> float:
        """What a call costs in the currency (what spend limits count): the ledger's ``nanos``, so a limit
        and the usage record of one call never differ by a rounding."""
        return self.nanos(model, prompt, completion, cached, price, created) / NANOS

    def nanos(self, model: str | None, prompt: int, completion: int, cached: int = 0, price: Price | None = None,
              created: int = 0) -> int:
        """The ledger's cost of a call: integer nano-units, prompt tokens read from the upstream's cache
        (``cached``) at the cached price and those written to it (``created``, Anthropic's cache creation)
        at the cache-creation price, the rest at the input price; at ``price`` when given (a registry
        version's own, as limits reserve and settle), else the model's."""
        if price is not None:
            n = self._version_nanos.get(id(price))
            if n is None or n[0] is not price:
                if len(self._version_nanos) >= 1024:  # policies come and go: keep the cache bounded
                    self._version_nanos.clear()
                n = self._version_nanos[id(price)] = (price, *_per_token_nanos(price))
            n = n[1:]
        else:
            n = self._nanos.get(model) if model else None  # type: ignore[arg-type]
        if n is None:
            return 0
        inp, out, cin, ccr = n
        cached = min(max(cached, 0), prompt)
        created = min(max(created, 0), prompt - cached)
        return round((prompt - cached - created) * inp + cached * cin + created * ccr + completion * out)


def _per_token_nanos(p: Price) -> tuple[int | Decimal, int | Decimal, int | Decimal, int | Decimal]:
    # Decimal from the YAML's text of the float, so 0.15 is 0.15 and not 0.1499999...
    per = Decimal(NANOS) / Decimal(1_000_000)
    inp = Decimal(repr(p.input)) * per
    cin = inp if p.cached_input is None else Decimal(repr(p.cached_input)) * per
    ccr = inp if p.cache_creation_input is None else Decimal(repr(p.cache_creation_input)) * per
    # A whole number of nanos a token (any price with at most three decimals per million) becomes an
    # int: the same exact result, and the ledger prices every record with it (Decimal cost ~1% of a request).
    return _exact(inp), _exact(Decimal(repr(p.output)) * per), _exact(cin), _exact(ccr)


def _exact(d: Decimal) -> int | Decimal:
    return int(d) if d == d.to_integral_value() else d
