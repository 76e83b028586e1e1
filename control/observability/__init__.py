"""Observability: Prometheus metrics, structured logs, traces and the request context they share.

Domain code may import this package (`hooks` is its face there); it imports nothing of
`control` itself (`scripts/check_imports.py` holds it to that), so counting a revocation or
timing an audit write never pulls the domain into a cycle. What each signal means, and what an
operator does with it, is in `docs/operations.md`.
"""
