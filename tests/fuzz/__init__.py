"""Fuzz tests: the admin API from its OpenAPI document, and the proxy routes."""

from __future__ import annotations
