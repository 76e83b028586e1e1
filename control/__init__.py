"""control: sync tokens with stream / query-set grants for a SpacetimeDB-first sync fabric."""

__version__ = "0.1.0"
