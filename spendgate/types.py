"""Type aliases shared across the packages; imports nothing of ours."""

from __future__ import annotations

from typing import Any

# Money is an integer number of nano-USD (1e-9 USD) everywhere inside.
Nano = int
JSONObject = dict[str, Any]
