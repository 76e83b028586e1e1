"""The admin console at `/console`: server-rendered pages on the admin API.

A signed-in console session stands for the API key it was opened with (`sessions.py`); each
page resolves that session's `Caller` and calls the same endpoint functions and domain services
the admin routes call (`pages.py`), so roles, org views, validation and audit apply exactly as
they do to a JSON client. Its routes are console entries of the route table, never in the spec.
"""
