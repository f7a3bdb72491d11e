"""Compiling a route table looks at each route a bounded number of times, however many routes and aliases
there are (bench/scale.py: 1,000 one-alias routes took 1.4 s to compile when every alias scanned every route).
Counted, not timed: the aliases' lists are read through a list that counts what is asked of it."""

from __future__ import annotations

from sluice.core import config
from sluice.routing import RouteTable, from_config


class CountingList(list):
    """A route's ``match.models`` that counts membership tests and walks."""

    asked = 0

    def __contains__(self, item: object) -> bool:
        CountingList.asked += 1
        return super().__contains__(item)

    def __iter__(self):
        CountingList.asked += 1
        return super().__iter__()


def _policy(n: int):
    return from_config(config.parse({
        "upstreams": [{"name": "a", "base_url": "http://127.0.0.1:9/v1"}],
        "registry": [{"name": "m", "versions": [{"version": "v1", "upstream": "a", "approved": True}]}],
        "routes": [{"name": f"r-{i}", "match": {"models": [f"alias-{i}"]}, "targets": [{"target": "m@v1", "weight": 1}]}
                   for i in range(n)] + [{"name": "anywhere", "targets": [{"target": "m@v1", "weight": 1}]}],
    }))


def _asked(n: int) -> int:
    policy = _policy(n)
    for spec in policy.routes:
        spec.match.models = CountingList(spec.match.models)
    CountingList.asked = 0
    RouteTable(policy)
    return CountingList.asked


def test_compiling_one_alias_routes_asks_each_route_a_fixed_number_of_times():
    small, large = _asked(50), _asked(1000)
    assert large <= 10 * 1001, large  # a few looks per route, not one per route per alias (a million)
    assert large / small <= 1001 / 51 * 1.1  # linear in the routes


def test_the_order_of_candidates_is_still_the_policy_order():
    table = RouteTable(_policy(3))
    assert [r.name for r in table.candidates("alias-1")] == ["r-1", "anywhere"]
    assert [r.name for r in table.candidates("nothing-names-this")] == ["anywhere"]
