"""The aiohttp application: admin API, errors, the server; `create_app` wires it all."""

from __future__ import annotations
