"""Webhook authentication per source (spec/inbound.md §1.2 C4–C6, §1.4–§1.8).

Every comparison is constant-time; every secret may hold several values (rotation); a
source without configured credentials fails closed unless listed in
``DFM_INSECURE_ALLOW_UNSIGNED``.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ed25519, padding, rsa
from pydantic import SecretStr

from contracts.envelope import AuthInfo
from services.infra.settings import Settings, pem_public_keys
from services.infra.signing import secret_matches

FUTURE_SKEW_S = 300


@dataclass(frozen=True)
class AuthFailure(Exception):
    """401 with ``reason`` (``missing_signature``, ``bad_signature``, ``expired``, ``bad_credentials``)."""

    reason: str


def load_public_keys(pem_text: str) -> list[Any]:
    """Every PEM public key in ``pem_text`` (several keys allowed for rotation). ``Settings``
    has already refused a value that is not entirely keys of the right kind, so a running
    ingress never has fewer keys than its configuration names."""
    return pem_public_keys(pem_text)


def _b64(value: str) -> bytes | None:
    try:
        return base64.b64decode(value.strip(), validate=True)
    except (binascii.Error, ValueError):
        return None


@dataclass(frozen=True)
class GhlVerifier:
    """GHL marketplace signatures: Ed25519 ``x-ghl-signature``, legacy RSA ``x-wh-signature``."""

    ed25519_keys: tuple[ed25519.Ed25519PublicKey, ...]
    rsa_keys: tuple[rsa.RSAPublicKey, ...]
    accept_rsa: bool

    @classmethod
    def from_settings(cls, settings: Settings) -> GhlVerifier:
        """Keys from ``GHL_WEBHOOK_ED25519_PUBLIC_KEY`` / ``GHL_WEBHOOK_RSA_PUBLIC_KEY``."""
        eds = tuple(
            k
            for k in load_public_keys(settings.ghl_webhook_ed25519_public_key)
            if isinstance(k, ed25519.Ed25519PublicKey)
        )
        rsas = tuple(
            k for k in load_public_keys(settings.ghl_webhook_rsa_public_key) if isinstance(k, rsa.RSAPublicKey)
        )
        return cls(eds, rsas, settings.ghl_accept_legacy_rsa)

    def verify_ed25519(self, body: bytes, signature: str) -> bool:
        """True when one configured Ed25519 key verifies ``signature`` over ``body``."""
        raw = _b64(signature)
        if raw is None:
            return False
        for key in self.ed25519_keys:
            try:
                key.verify(raw, body)
                return True
            except InvalidSignature:
                continue
        return False

    def verify_rsa(self, body: bytes, signature: str) -> bool:
        """True when one configured RSA key verifies PKCS#1 v1.5 SHA-256 over ``body``."""
        raw = _b64(signature)
        if raw is None:
            return False
        for key in self.rsa_keys:
            try:
                key.verify(raw, body, padding.PKCS1v15(), hashes.SHA256())
                return True
            except InvalidSignature:
                continue
        return False


def _insecure(settings: Settings, source: str) -> bool:
    return source in settings.dfm_insecure_allow_unsigned


def authenticate_ghl(
    settings: Settings,
    verifier: GhlVerifier,
    headers: Mapping[str, str],
    query: Mapping[str, str],
    body: bytes,
    *,
    provider: bool = False,
) -> AuthInfo:
    """W1 (and W2 with ``provider=True``: signature only, no token fallback)."""
    source = "ghl_provider" if provider else "ghl"
    ed_sig = headers.get("x-ghl-signature")
    if ed_sig:
        if verifier.verify_ed25519(body, ed_sig):
            return AuthInfo(method="ed25519", verified=True)
        raise AuthFailure("bad_signature")
    rsa_sig = headers.get("x-wh-signature")
    if rsa_sig and verifier.accept_rsa and not provider:
        if verifier.verify_rsa(body, rsa_sig):
            return AuthInfo(method="rsa", verified=True)
        raise AuthFailure("bad_signature")
    if not provider:
        token = query.get("token") or headers.get("x-df-webhook-token")
        if token and settings.ghl_workflow_webhook_token:
            if secret_matches(token, settings.ghl_workflow_webhook_token):
                return AuthInfo(method="workflow_token", verified=True)
            raise AuthFailure("bad_credentials")
    if _insecure(settings, source):
        return AuthInfo(method="insecure", verified=False)
    raise AuthFailure("missing_signature")


def check_ghl_freshness(payload: dict[str, Any], auth: AuthInfo, max_age_s: int, now: datetime | None = None) -> None:
    """Replay window for signed marketplace bodies with ``timestamp`` and ``webhookId`` (§1.4.4)."""
    if auth.method not in ("ed25519", "rsa"):
        return
    stamp, webhook_id = payload.get("timestamp"), payload.get("webhookId")
    if not isinstance(stamp, str) or not isinstance(webhook_id, str):
        return
    try:
        sent = datetime.fromisoformat(stamp.replace("Z", "+00:00"))
    except ValueError:
        raise AuthFailure("expired") from None
    if sent.tzinfo is None:
        sent = sent.replace(tzinfo=UTC)
    current = now or datetime.now(UTC)
    if sent < current - timedelta(seconds=max_age_s) or sent > current + timedelta(seconds=FUTURE_SKEW_S):
        raise AuthFailure("expired")


def authenticate_aloware(settings: Settings, headers: Mapping[str, str]) -> AuthInfo:
    """W3: HTTP Basic (split on the first colon, A6) or an optional Bearer token."""
    header = headers.get("authorization", "")
    scheme, _, value = header.partition(" ")
    scheme = scheme.lower()
    if scheme == "bearer" and settings.aloware_webhook_bearer_token:
        if secret_matches(value.strip(), settings.aloware_webhook_bearer_token):
            return AuthInfo(method="bearer", verified=True)
        raise AuthFailure("bad_credentials")
    user = settings.aloware_webhook_basic_user
    if scheme == "basic" and user and settings.aloware_webhook_basic_pass:
        decoded = _b64(value)
        try:
            text = decoded.decode() if decoded is not None else ""
        except UnicodeDecodeError:
            text = ""
        given_user, sep, given_pass = text.partition(":")
        user_ok = hmac.compare_digest(given_user.strip().encode(), user.encode())
        pass_ok = secret_matches(given_pass.strip(), settings.aloware_webhook_basic_pass)
        if sep and user_ok and pass_ok:
            return AuthInfo(method="basic", verified=True)
        raise AuthFailure("bad_credentials")
    if _insecure(settings, "aloware"):
        return AuthInfo(method="insecure", verified=False)
    raise AuthFailure("bad_credentials" if header else "missing_signature")


def _hmac_matches(body: bytes, signature: str, secrets: Sequence[SecretStr]) -> bool:
    given = signature.strip().lower()
    given = given.removeprefix("sha256=")
    matched = False
    for secret in secrets:
        key = secret.get_secret_value().strip().encode()
        expected = hmac.new(key, body, hashlib.sha256).hexdigest()
        matched |= hmac.compare_digest(given.encode(), expected.encode())
    return matched


def authenticate_verity(
    settings: Settings,
    headers: Mapping[str, str],
    body: bytes,
    *,
    source: str,
    signature_headers: tuple[str, ...],
    plain_header: str,
    accept_plain: bool,
) -> AuthInfo:
    """W5/W6: HMAC-SHA256 hex of the raw body, or the plain shared-secret header (§1.7, §1.8)."""
    secrets = settings.verity_webhook_secret
    signature = next((headers[h] for h in signature_headers if headers.get(h)), None)
    if secrets and signature is not None:
        if _hmac_matches(body, signature, secrets):
            return AuthInfo(method="hmac", verified=True)
        raise AuthFailure("bad_signature")
    plain = headers.get(plain_header)
    if secrets and plain is not None and accept_plain:
        if secret_matches(plain.strip(), secrets):
            return AuthInfo(method="plain_secret", verified=True)
        raise AuthFailure("bad_credentials")
    if _insecure(settings, source):
        return AuthInfo(method="insecure", verified=False)
    raise AuthFailure("bad_credentials" if (signature or plain) else "missing_signature")


def configured_sources(settings: Settings) -> dict[str, bool]:
    """Which webhook sources can authenticate anything (logged at start, shown in health)."""
    verity = bool(settings.verity_webhook_secret)
    return {
        "ghl": True,  # GHL's published public keys are the default
        "ghl_provider": True,
        "aloware": bool(
            (settings.aloware_webhook_basic_user and settings.aloware_webhook_basic_pass)
            or settings.aloware_webhook_bearer_token
        ),
        "texting": verity,
        "broadcast": verity,
    }
