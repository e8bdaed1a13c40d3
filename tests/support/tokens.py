"""JWTs for the private-room tests: good ones from PyJWT, forged ones by hand."""
from __future__ import annotations

import base64
import functools
import hashlib
import hmac
import json
import secrets
import time
from typing import Any

import jwt
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa

SECRET = "test-secret-" + "s" * 60  # over the 32 bytes HS256 needs, and the 64 HS512 wants
OTHER_SECRET = "another-secret-" + "o" * 40


def claims(subscribe: list[str] | None = None, publish: list[str] | None = None, *,
           expires_in: float | None = 300, **extra: Any) -> dict[str, Any]:
    """Return a payload granting these room patterns, expiring ``expires_in`` seconds from now (None: never)."""
    rooms: dict[str, list[str]] = {}
    if subscribe is not None:
        rooms["subscribe"] = subscribe
    if publish is not None:
        rooms["publish"] = publish
    payload: dict[str, Any] = {"sub": "tester", "rooms": rooms}
    if expires_in is not None:
        payload["exp"] = int(time.time() + expires_in)
    return payload | extra


def mint(payload: dict[str, Any], key: Any = SECRET, algorithm: str = "HS256") -> str:
    """Sign a payload with PyJWT, as an issuer would."""
    return jwt.encode(payload, key, algorithm=algorithm)


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode("ascii")


def _segments(header: dict[str, Any], payload: dict[str, Any]) -> str:
    return _b64(json.dumps(header).encode()) + "." + _b64(json.dumps(payload).encode())


def unsigned(payload: dict[str, Any], alg: str = "none") -> str:
    """Return an ``alg: none`` token (no signature), which PyJWT will not even make for us."""
    return _segments({"alg": alg, "typ": "JWT"}, payload) + "."


def hs256_signed_with(key: bytes, payload: dict[str, Any]) -> str:
    """Sign HS256 with any bytes, a public key's PEM included (PyJWT refuses to: the confusion attack)."""
    signing_input = _segments({"alg": "HS256", "typ": "JWT"}, payload)
    signature = hmac.new(key, signing_input.encode("ascii"), hashlib.sha256).digest()
    return signing_input + "." + _b64(signature)


def garbage(size: int = 8192) -> str:
    """Return ``size`` characters of random token-ish text (base64url and dots)."""
    text = secrets.token_urlsafe(size)[:size]
    return ".".join(text[i:i + size // 3] for i in range(0, size, size // 3))[:size]


@functools.cache
def rsa_keys(bits: int = 2048) -> tuple[Any, str]:
    """Return (private key, public PEM) of an RSA key made for this test session."""
    key = rsa.generate_private_key(public_exponent=65537, key_size=bits)
    return key, _public_pem(key)


@functools.cache
def ec_keys(curve: str = "secp256r1") -> tuple[Any, str]:
    """Return (private key, public PEM) of an EC key made for this test session."""
    key = ec.generate_private_key({"secp256r1": ec.SECP256R1(), "secp384r1": ec.SECP384R1()}[curve])
    return key, _public_pem(key)


@functools.cache
def other_rsa_key() -> Any:
    return rsa.generate_private_key(public_exponent=65537, key_size=2048)


def private_pem(key: Any) -> str:
    return key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                             serialization.NoEncryption()).decode("ascii")


def _public_pem(key: Any) -> str:
    return key.public_key().public_bytes(serialization.Encoding.PEM,
                                         serialization.PublicFormat.SubjectPublicKeyInfo).decode("ascii")
