"""age X25519 keys made in Python, in the text form age-keygen writes (`AGE-SECRET-KEY-1...`, `age1...`).

MongoDB dumps and Redis snapshots are encrypted on their host with `age` to
the fleet's recipient before they leave it; the identity stays in the fleet
secrets and only reaches a scratch host, to decrypt a restore or a drill.
"""

from __future__ import annotations

import secrets

from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey
from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat

_CHARSET = "qpzry9x8gf2tvdw0s3jn54khce6mua7l"
_GENERATOR = (0x3B6A57B2, 0x26508E6D, 0x1EA119FA, 0x3D4233DD, 0x2A1462B3)


def _polymod(values: list[int]) -> int:
    check = 1
    for value in values:
        top = check >> 25
        check = (check & 0x1FFFFFF) << 5 ^ value
        for i, generator in enumerate(_GENERATOR):
            if (top >> i) & 1:
                check ^= generator
    return check


def _expand(hrp: str) -> list[int]:
    return [ord(c) >> 5 for c in hrp] + [0] + [ord(c) & 31 for c in hrp]


def _to_5bit(data: bytes) -> list[int]:
    acc = bits = 0
    out: list[int] = []
    for byte in data:
        acc = (acc << 8) | byte
        bits += 8
        while bits >= 5:
            bits -= 5
            out.append((acc >> bits) & 31)
    if bits:
        out.append((acc << (5 - bits)) & 31)
    return out


def _from_5bit(data: list[int]) -> bytes:
    acc = bits = 0
    out = bytearray()
    for value in data:
        acc = (acc << 5) | value
        bits += 5
        if bits >= 8:
            bits -= 8
            out.append((acc >> bits) & 0xFF)
    return bytes(out)


def bech32_encode(hrp: str, data: bytes) -> str:
    words = _to_5bit(data)
    checksum = _polymod(_expand(hrp) + words + [0] * 6) ^ 1
    words += [(checksum >> 5 * (5 - i)) & 31 for i in range(6)]
    return hrp + "1" + "".join(_CHARSET[w] for w in words)


def bech32_decode(text: str) -> tuple[str, bytes]:
    lowered = text.lower()
    hrp, _, body = lowered.rpartition("1")
    if not hrp or len(body) < 6 or any(c not in _CHARSET for c in body):
        raise ValueError("not a bech32 string")
    words = [_CHARSET.index(c) for c in body]
    if _polymod(_expand(hrp) + words) != 1:
        raise ValueError("bad bech32 checksum")
    return hrp, _from_5bit(words[:-6])


def new_identity() -> str:
    """A fresh age identity: AGE-SECRET-KEY-1..."""
    return bech32_encode("age-secret-key-", secrets.token_bytes(32)).upper()


def recipient_of(identity: str) -> str:
    """The age1... recipient (public key) of an identity."""
    hrp, key = bech32_decode(identity.strip())
    if hrp != "age-secret-key-" or len(key) != 32:
        raise ValueError("not an age X25519 identity")
    public = X25519PrivateKey.from_private_bytes(key).public_key().public_bytes(Encoding.Raw, PublicFormat.Raw)
    return bech32_encode("age", public)
