"""Configuration errors.

ConfigError
 - raised at start-up for a bad setting, naming the variable
"""

from __future__ import annotations


class ConfigError(Exception):
    """A setting has a value spendgate cannot run with; `name` is the variable."""

    def __init__(self, name: str, message: str) -> None:
        super().__init__(f"{name}: {message}")
        self.name = name
