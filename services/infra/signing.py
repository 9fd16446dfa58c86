"""Signing webhook bodies the way each sender does (for ``dfm send``, tests and benchmarks),
and the constant-time secret comparison every authenticated endpoint uses."""

from __future__ import annotations

import base64
import hashlib
import hmac
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ed25519, padding, rsa
from pydantic import SecretStr


def generate_ed25519() -> tuple[ed25519.Ed25519PrivateKey, str]:
    """A new key pair: the private key and the public key as PEM."""
    key = ed25519.Ed25519PrivateKey.generate()
    return key, public_pem(key)


def public_pem(key: ed25519.Ed25519PrivateKey | rsa.RSAPrivateKey) -> str:
    """PEM (SubjectPublicKeyInfo) of the public half of ``key``."""
    return (
        key.public_key()
        .public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)
        .decode()
    )


def private_pem(key: ed25519.Ed25519PrivateKey | rsa.RSAPrivateKey) -> str:
    """Unencrypted PKCS#8 PEM of ``key``."""
    return key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    ).decode()


def load_private_key(path: Path) -> ed25519.Ed25519PrivateKey:
    """An Ed25519 private key from a PEM file."""
    key = serialization.load_pem_private_key(path.read_bytes(), password=None)
    if not isinstance(key, ed25519.Ed25519PrivateKey):
        raise ValueError(f"{path} does not hold an Ed25519 private key")
    return key


def ghl_ed25519_signature(key: ed25519.Ed25519PrivateKey, body: bytes) -> str:
    """``x-ghl-signature``: base64 Ed25519 over the raw body."""
    return base64.b64encode(key.sign(body)).decode()


def ghl_rsa_signature(key: rsa.RSAPrivateKey, body: bytes) -> str:
    """Legacy ``x-wh-signature``: base64 RSA-SHA256 PKCS#1 v1.5 over the raw body."""
    return base64.b64encode(key.sign(body, padding.PKCS1v15(), hashes.SHA256())).decode()


def hmac_hex(secret: str, body: bytes) -> str:
    """Lower-case hex HMAC-SHA256 (texting and broadcast signatures)."""
    return hmac.new(secret.encode(), body, hashlib.sha256).hexdigest()


def basic_auth(user: str, password: str) -> str:
    """An ``Authorization: Basic`` header value."""
    return "Basic " + base64.b64encode(f"{user}:{password}".encode()).decode()


@dataclass(frozen=True)
class SignedRequest:
    """Path, query and headers to post a body as its sender would."""

    path: str
    headers: dict[str, str]
    params: dict[str, str]


WEBHOOK_PATHS = {
    "ghl": "/api/webhooks/ghl",
    "ghl_provider": "/api/webhooks/ghl/provider-delivery",
    "aloware": "/api/webhooks/aloware",
    "texting": "/api/webhooks/texting",
    "broadcast": "/api/webhooks/broadcast",
}


def secret_matches(given: str, secrets: Sequence[SecretStr]) -> bool:
    """True when ``given`` equals one of ``secrets`` (rotation: several may be valid);
    every candidate is compared in constant time."""
    given_b = given.encode()
    matched = False
    for secret in secrets:
        matched |= hmac.compare_digest(given_b, secret.get_secret_value().strip().encode())
    return matched
