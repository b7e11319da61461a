from __future__ import annotations

import hashlib
import re
import string
import zlib
from collections.abc import Callable
from typing import Final

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from spendgate.enforcement.tokens import (
    generate_token,
    hash_token,
    is_well_formed,
    new_id,
    preview,
    same_secret,
)

ALPHABET: Final = string.digits + string.ascii_uppercase + string.ascii_lowercase
TOKEN_RE: Final = re.compile(r"sgk_[0-9A-Za-z]{38}")


def ref_base62(number: int, width: int) -> str:
    """Base62 by repeated division over an alphabet built here, not imported."""
    out = ""
    while number > 0:
        out = ALPHABET[number % 62] + out
        number //= 62
    return "0" * (width - len(out)) + out


def ref_token(random_part: str) -> str:
    return "sgk_" + random_part + ref_base62(zlib.crc32(random_part.encode()), 6)


random_parts = st.text(alphabet=ALPHABET, min_size=32, max_size=32)


def test_ref_base62_pads_and_encodes() -> None:
    assert ref_base62(0, 6) == "000000"
    assert ref_base62(61, 6) == "00000z"
    assert ref_base62(62, 6) == "000010"
    assert ref_base62(2**32 - 1, 6) == "4gfFC3"


def test_generated_token_has_the_documented_shape_and_checksum() -> None:
    for _ in range(200):
        token = generate_token()
        assert TOKEN_RE.fullmatch(token), token
        random_part, check = token[4:36], token[36:]
        assert check == ref_base62(zlib.crc32(random_part.encode("ascii")), 6)
        assert is_well_formed(token)


def test_checksum_is_left_padded_with_zeros() -> None:
    # A random part whose CRC32 is small enough to need padding.
    for n in range(100_000):
        random_part = f"{n:0>32}"
        if zlib.crc32(random_part.encode()) < 62**5:
            break
    else:  # pragma: no cover - the search always succeeds within a few dozen tries
        pytest.fail("no small CRC32 found")
    token = ref_token(random_part)
    assert token[36] == "0"
    assert is_well_formed(token)
    # Without the padding the length is wrong, so it is refused.
    assert not is_well_formed(token[:36] + token[37:])


@given(random_part=random_parts)
def test_any_correctly_checksummed_token_is_well_formed(random_part: str) -> None:
    assert is_well_formed(ref_token(random_part))


def test_tokens_are_unique() -> None:
    tokens = {generate_token() for _ in range(5_000)}
    assert len(tokens) == 5_000
    # The random part itself varies in every position (no fixed filler).
    for position in range(4, 36):
        assert len({t[position] for t in tokens}) > 40


@pytest.mark.parametrize(
    "mangle",
    [
        lambda t: "sgx_" + t[4:],
        lambda t: "SGK_" + t[4:],
        lambda t: "sk_" + t[4:] + "0",
        lambda t: t[4:] + "sgk_",
        lambda t: t[:-1],
        lambda t: t + "0",
        lambda t: t[:20] + t[21:] + "a",
        lambda t: t[:10] + "-" + t[11:],
        lambda t: t[:10] + "_" + t[11:],
        lambda t: t[:10] + "é" + t[11:],
        lambda t: t[:10] + " " + t[11:],
        lambda t: t[:-1] + "=",
        lambda t: " " + t[:-1],
        lambda t: "",
        lambda t: "sgk_",
    ],
)
def test_malformed_tokens_are_refused(mangle: Callable[[str], str]) -> None:
    token = ref_token("A" * 16 + "z" * 16)
    assert is_well_formed(token)
    bad = mangle(token)
    assert bad != token
    assert not is_well_formed(bad)


def test_changed_random_character_is_refused() -> None:
    token = ref_token("0123456789abcdefghijABCDEFGHIJkl")
    for position in range(4, 36):
        for replacement in "0aZ9":
            if token[position] != replacement:
                assert not is_well_formed(token[:position] + replacement + token[position + 1 :])


def test_changed_checksum_character_is_refused() -> None:
    token = ref_token("0123456789abcdefghijABCDEFGHIJkl")
    for position in range(36, 42):
        for replacement in ALPHABET:
            if token[position] != replacement:
                assert not is_well_formed(token[:position] + replacement + token[position + 1 :])


@settings(max_examples=500)
@given(
    random_part=random_parts,
    position=st.integers(0, 41),
    replacement=st.one_of(st.sampled_from(ALPHABET), st.characters()),
)
def test_any_single_character_substitution_is_refused(
    random_part: str, position: int, replacement: str
) -> None:
    token = ref_token(random_part)
    mutated = token[:position] + replacement + token[position + 1 :]
    assert is_well_formed(mutated) == (mutated == token)


def test_preview_shows_prefix_first_four_and_last_four() -> None:
    token = ref_token("AbCd" + "x" * 28)
    assert preview(token) == "sgk_AbCd..." + token[-4:]
    assert len(preview(token)) == 4 + 4 + 3 + 4
    # The preview does not reveal the rest of the secret.
    assert token[8:38] not in preview(token)


@given(random_part=random_parts)
def test_preview_shape(random_part: str) -> None:
    token = ref_token(random_part)
    assert preview(token) == f"sgk_{random_part[:4]}...{token[-4:]}"


def test_hash_token_is_sha256_of_the_token() -> None:
    token = ref_token("Q" * 32)
    assert hash_token(token) == hashlib.sha256(token.encode("ascii")).digest()
    assert len(hash_token(token)) == 32
    assert hash_token(token) != hash_token(ref_token("R" * 32))
    assert hash_token("sgk_abc").hex() == hashlib.sha256(b"sgk_abc").hexdigest()


def test_same_secret_compares_text_and_bytes() -> None:
    assert same_secret("admin-token-123456", "admin-token-123456")
    assert same_secret("admin-token-123456", b"admin-token-123456")
    assert not same_secret("admin-token-123456", "admin-token-123457")
    assert not same_secret("admin-token-123456", "admin-token-12345")
    assert same_secret("clé", "clé".encode())


@pytest.mark.parametrize("kind", ["prj", "key", "rule"])
def test_new_id_shape(kind: str) -> None:
    ids = {new_id(kind) for _ in range(2_000)}
    assert len(ids) == 2_000
    for ident in ids:
        assert re.fullmatch(rf"{kind}_[0-9A-Za-z]{{20}}", ident), ident
