"""What tokens cost: the price table of the config, per million tokens."""

from __future__ import annotations

from ..core.config import Price


class PriceTable:
    """Cost of a call in the configured currency; models without a price cost nothing."""

    def __init__(self, prices: dict[str, Price]) -> None:
        self._prices = prices

    def replace(self, prices: dict[str, Price]) -> None:
        self._prices = prices

    def has(self, model: str) -> bool:
        return model in self._prices

    def cost(self, model: str, prompt: int, completion: int, cached: int = 0, price: Price | None = None) -> float:
        """What a call costs: at ``price`` when given (a registry version's own), else at the model's."""
        p = price or self._prices.get(model)
        if p is None:
            return 0.0
        if not cached:
            return (prompt * p.input + completion * p.output) / 1_000_000
        cached = min(cached, prompt)
        cached_price = p.input if p.cached_input is None else p.cached_input
        return ((prompt - cached) * p.input + cached * cached_price + completion * p.output) / 1_000_000
