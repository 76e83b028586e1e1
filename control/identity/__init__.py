"""Orgs, principals and their API-key credentials; authentication of requests."""
