"""Shared plumbing: database, errors, ids, pagination, time."""
