"""Fault tests: servers cut, stopped and killed under traffic (DESIGN.md, "Failure
behaviour")."""

from __future__ import annotations
