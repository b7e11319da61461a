"""API tokens: `sgk_` + 32 random base62 + 6 base62 of CRC32(random part).

Tokens are stored only as their SHA-256; lists show a preview. The checksum lets a
malformed or mistyped token be refused without a lookup, and lets secret scanners
recognise leaked tokens.
"""

from __future__ import annotations

import hashlib
import hmac
import secrets
import zlib

PREFIX = "sgk_"
BASE62 = "0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz"
RANDOM_LENGTH = 32
CHECKSUM_LENGTH = 6
TOKEN_LENGTH = len(PREFIX) + RANDOM_LENGTH + CHECKSUM_LENGTH
_BASE62_SET = frozenset(BASE62)


def base62(number: int, width: int) -> str:
    """`number` in base62, left-padded with '0' to `width` characters."""
    digits = []
    while number:
        number, rest = divmod(number, 62)
        digits.append(BASE62[rest])
    return "".join(reversed(digits)).rjust(width, "0")


def random_base62(length: int) -> str:
    return "".join(secrets.choice(BASE62) for _ in range(length))


def checksum(random_part: str) -> str:
    return base62(zlib.crc32(random_part.encode("ascii")), CHECKSUM_LENGTH)


def generate_token() -> str:
    random_part = random_base62(RANDOM_LENGTH)
    return PREFIX + random_part + checksum(random_part)


def is_well_formed(token: str) -> bool:
    """Prefix, length, alphabet and checksum; no lookup needed."""
    if len(token) != TOKEN_LENGTH or not token.startswith(PREFIX):
        return False
    body = token[len(PREFIX) :]
    if not _BASE62_SET.issuperset(body):
        return False
    random_part, check = body[:RANDOM_LENGTH], body[RANDOM_LENGTH:]
    return hmac.compare_digest(checksum(random_part), check)


def hash_token(token: str) -> bytes:
    return hashlib.sha256(token.encode("utf-8")).digest()


def preview(token: str) -> str:
    body = token[len(PREFIX) :]
    return f"{PREFIX}{body[:4]}...{body[-4:]}"


def same_secret(a: str | bytes, b: str | bytes) -> bool:
    """Constant-time comparison of two secrets."""
    a_bytes = a.encode("utf-8") if isinstance(a, str) else a
    b_bytes = b.encode("utf-8") if isinstance(b, str) else b
    return hmac.compare_digest(a_bytes, b_bytes)


def new_id(kind: str) -> str:
    """Public ids: `prj_...`, `key_...`, `rule_...` with 20 random base62 characters."""
    return f"{kind}_{random_base62(20)}"
