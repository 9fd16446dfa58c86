"""Who a gateway request comes from, and how many it may make (spec/outbound.md §3.1;
security-audit F8).

A bucket must be keyed on something the caller cannot vary per request: the client address
for requests without a valid key (``X-Forwarded-For`` believed only from a configured trusted
proxy) and the *verified* key for the others. Keying on the raw ``Authorization`` header let a
new junk header per request start a new bucket, so neither floods nor brute force of the API
key were ever throttled. Failed key attempts are counted per address on their own, lower limit.

Every count is in this process: with N gateway replicas a client gets N times the limits.
"""

from __future__ import annotations

import hashlib
import hmac
import ipaddress
import time
from collections.abc import Sequence

from pydantic import SecretStr

from services.infra.settings import ConfigError

WINDOW_S = 15 * 60
MAX_TRACKED = 100_000  # buckets kept per limiter; beyond it the oldest of the window are forgotten

Network = ipaddress.IPv4Network | ipaddress.IPv6Network
Address = ipaddress.IPv4Address | ipaddress.IPv6Address


class RateLimiter:
    """Fixed 15-minute windows per key, in process (spec: ``RATE_LIMIT_MAX``)."""

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self._windows: dict[str, tuple[int, int]] = {}

    def _count(self, key: str, window: int) -> int:
        start, count = self._windows.get(key, (window, 0))
        return count if start == window else 0

    def exhausted(self, key: str) -> bool:
        """The key has used its window up (nothing is counted)."""
        return self._count(key, int(time.time() // WINDOW_S)) >= self.limit

    def hit(self, key: str) -> tuple[bool, dict[str, str]]:
        """Count one request; (allowed, the ``RateLimit-*`` headers)."""
        window = int(time.time() // WINDOW_S)
        count = self._count(key, window) + 1
        self._windows.pop(key, None)  # re-inserted last: the dict's order is the order of use
        self._windows[key] = (window, count)
        if len(self._windows) > MAX_TRACKED:
            self._forget(window)
        return count <= self.limit, self.headers(count)

    def headers(self, count: int | None = None, key: str | None = None) -> dict[str, str]:
        if count is None:
            count = self._count(key or "", int(time.time() // WINDOW_S))
        return {
            "RateLimit-Limit": str(self.limit),
            "RateLimit-Remaining": str(max(0, self.limit - count)),
            "RateLimit-Reset": str(reset_in()),
        }

    def _forget(self, window: int) -> None:
        """Stale windows first; if a flood of distinct keys still overflows the table, the least
        recently used half (a forgotten key starts again at zero: the cost of bounded memory)."""
        self._windows = {k: v for k, v in self._windows.items() if v[0] == window}
        if len(self._windows) > MAX_TRACKED:
            keep = list(self._windows.items())[len(self._windows) // 2 :]
            self._windows = dict(keep)


def reset_in() -> int:
    """Seconds until the current window ends."""
    return max(1, int((time.time() // WINDOW_S + 1) * WINDOW_S - time.time()))


def trusted_networks(values: Sequence[str]) -> list[Network]:
    """``GATEWAY_TRUSTED_PROXIES`` as networks; a value that is not a CIDR or address stops the
    start (a typo would otherwise silently trust nobody, or be taken for someone else)."""
    networks = []
    for value in values:
        try:
            networks.append(ipaddress.ip_network(value.strip(), strict=False))
        except ValueError:
            raise ConfigError(f"GATEWAY_TRUSTED_PROXIES: {value!r} is not an IP address or CIDR") from None
    return networks


def _address(text: str) -> Address | None:
    text = text.strip()
    if text.startswith("[") and "]" in text:  # [v6]:port
        text = text[1 : text.index("]")]
    elif text.count(":") == 1:  # v4:port
        text = text.split(":")[0]
    try:
        return ipaddress.ip_address(text)
    except ValueError:
        return None


def client_address(peer: str | None, forwarded_for: Sequence[str], trusted: Sequence[Network]) -> str:
    """The client's address as a bucket name.

    The peer is the client unless it is a trusted proxy; then ``X-Forwarded-For`` is read from
    the right (what the nearest proxy appended) and the first address that is not a trusted
    proxy is the client. Entries further left were written by the client and prove nothing.
    An IPv6 client is its /64, the block one subscriber usually holds."""
    address = _address(peer or "")
    if address is None:
        return "unknown"
    if any(address in net for net in trusted):
        hops = [hop for header in forwarded_for for hop in header.split(",") if hop.strip()]
        for hop in reversed(hops):
            candidate = _address(hop)
            if candidate is None:  # not written by a proxy we trust: stop at the last trusted one
                break
            address = candidate
            if not any(candidate in net for net in trusted):
                break
    if isinstance(address, ipaddress.IPv6Address):
        if address.ipv4_mapped is not None:
            return str(address.ipv4_mapped)
        return str(ipaddress.ip_network(f"{address}/64", strict=False))
    return str(address)


def bearer(value: str | None) -> str | None:
    """The token of ``Bearer <token>`` (any case, any spacing), else None."""
    if value and value[:7].lower() == "bearer ":
        return value[7:].strip() or None
    return None


def key_id(header: str | None, keys: Sequence[SecretStr]) -> str | None:
    """A stable id of the configured key ``header`` carries (never the key itself), or None.
    Every candidate is compared in constant time, as ``secret_matches`` does."""
    given = bearer(header)
    if given is None:
        return None
    found = None
    for key in keys:
        value = key.get_secret_value().strip().encode()
        if hmac.compare_digest(given.encode(), value) and found is None:
            found = hashlib.sha256(b"dfm-gateway-key:" + value).hexdigest()[:12]
    return found
