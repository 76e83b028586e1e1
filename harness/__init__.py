"""The test and benchmark harness: scratch PostgreSQL databases, a real `control serve` on a
free loopback port, the development secrets those servers run with, and a small authenticated
HTTP API client.

Shared by `tests/`, `bench/` and `scripts/`, so that none of them imports another's modules.
It is not part of the product: the wheel ships only `control` (see
`[tool.hatch.build.targets.wheel]` in pyproject.toml), and nothing in `control` imports it.
"""
