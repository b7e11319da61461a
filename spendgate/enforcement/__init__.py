"""Pure decisions: token format, money, windows, plans. No I/O."""

from __future__ import annotations
