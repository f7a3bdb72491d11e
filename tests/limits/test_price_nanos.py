"""The ledger's cost of a call is exact in nano-units: a whole number of nanos a token is priced with
integers (the ledger prices every record), any other price stays in Decimal, and both give what
exact decimal arithmetic of the configured prices gives, rounded once."""

from __future__ import annotations

import random
from decimal import Decimal

import pytest

from sluice.core.config import Price
from sluice.limits.pricing import NANOS, PriceTable


def _exact(price: Price, prompt: int, completion: int, cached: int) -> int:
    per = Decimal(NANOS) / Decimal(1_000_000)
    inp, out = Decimal(repr(price.input)) * per, Decimal(repr(price.output)) * per
    cin = inp if price.cached_input is None else Decimal(repr(price.cached_input)) * per
    cached = min(max(cached, 0), prompt)
    return round((prompt - cached) * inp + cached * cin + completion * out)


@pytest.mark.parametrize("price", [
    Price(input=0.15, output=0.6, cached_input=0.075),  # 150, 600, 75 nanos a token: integers
    Price(input=0.0001, output=1.23456),  # 0.1 and 1234.56 nanos a token: fractions
    Price(input=3, output=15, cached_input=0.00001),  # integers beside a fraction
])
def test_nanos_equal_exact_decimal_arithmetic(price):
    table, rng = PriceTable({"m": price}), random.Random(7)
    for prompt, completion, cached in [(7, 3, 0), (1, 1, 1), (0, 0, 0)] + [
            (rng.randint(0, 10**7), rng.randint(0, 10**6), rng.randint(0, 10**7)) for _ in range(500)]:
        got = table.nanos("m", prompt, completion, cached)
        assert type(got) is int and got == _exact(price, prompt, completion, cached)
    # a registry version's own price takes the same path
    assert table.nanos("other", 7, 3, 0, price) == _exact(price, 7, 3, 0)


def test_a_fraction_of_a_nano_is_not_lost_per_token():
    # 0.1 nanos a token: 7 tokens cost 0.7, rounded once to 1 (truncating each price to whole nanos gives 0)
    assert PriceTable({"m": Price(input=0.0001, output=0.0001)}).nanos("m", 7, 0) == 1
