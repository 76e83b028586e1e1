"""The append-only audit log: every mint, denial and admin change."""
