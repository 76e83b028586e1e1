"""Sync tokens: minting at the canonical endpoint, introspection, revocations."""
