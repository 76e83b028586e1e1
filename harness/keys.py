"""Fixed key material for test and benchmark servers: never used outside this harness."""

from __future__ import annotations

import base64

KEK = base64.urlsafe_b64encode(b"k" * 32).decode()
PEPPER = base64.urlsafe_b64encode(b"p" * 32).decode()
