"""Verity's redirects, followed on Verity's own origin only (spec/outbound.md §2.1, §3.2;
issue #16 item 11).

The spec has the Verity proxy follow redirects (the original followed 307/308); following one
to another host would carry the end user's Clerk token, and whatever Verity was asked, to a
host nobody configured. So a redirect is followed only while its target has the scheme, host
and port of ``VERITY_BASE_URL``, at most ``MAX_REDIRECTS`` times; any other redirect is given
back as it came, and the proxy answers it ``502 UPSTREAM_REDIRECT`` (services/clients/verity.py).

This is a transport under the proxy's own ``httpx.AsyncClient`` (which keeps
``follow_redirects=False``), so httpx's cross-origin following can never be switched on by
accident, and the proxy's timeouts apply to every hop.

The opt-out gate (services/clients/verity.py ``OptOutGate``) checks the path a request is
sent to, before the first hop. A 307/308 keeps the body, so a redirect from a path that is
not a send into one that is would carry a body nobody checked: such a redirect is not
followed (issue #16 item 1). From one sending path to another the body was checked.
"""

from __future__ import annotations

import httpx

from services.clients.http import PROXY_LIMITS
from services.clients.verity import sending_endpoint
from services.infra.logging import get_logger

log = get_logger(__name__)

MAX_REDIRECTS = 5
REDIRECT_STATUSES = frozenset({301, 302, 303, 307, 308})
DEFAULT_PORTS = {"http": 80, "https": 443}


def origin(url: httpx.URL) -> tuple[str, str, int | None]:
    """(scheme, host, port) with the scheme's default port filled in."""
    return url.scheme, url.host.lower(), url.port or DEFAULT_PORTS.get(url.scheme)


class SameOriginRedirects(httpx.AsyncBaseTransport):
    """Follows redirects whose target is on ``base_url``'s origin."""

    def __init__(
        self, base_url: str, inner: httpx.AsyncBaseTransport | None = None, max_redirects: int = MAX_REDIRECTS
    ) -> None:
        self.origin = origin(httpx.URL(base_url))
        self.inner = inner or httpx.AsyncHTTPTransport(limits=PROXY_LIMITS)
        self.max_redirects = max_redirects

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        response = await self.inner.handle_async_request(request)
        for _ in range(self.max_redirects):
            following = self._next(request, response)
            if following is None:
                return response
            await response.aclose()
            request = following
            response = await self.inner.handle_async_request(request)
        if response.status_code in REDIRECT_STATUSES:
            log.warning("verity_redirect_limit", redirects=self.max_redirects)
        return response

    def _next(self, request: httpx.Request, response: httpx.Response) -> httpx.Request | None:
        """The request a redirect asks for, or None when it is no redirect or not ours to follow."""
        location = response.headers.get("location")
        if response.status_code not in REDIRECT_STATUSES or not location:
            return None
        try:
            url = request.url.join(location)
        except httpx.InvalidURL:
            return None
        if origin(url) != self.origin:
            # the host only: the path and query of a redirect may carry what the caller sent
            log.warning(
                "verity_redirect_refused",
                status=response.status_code,
                target_scheme=url.scheme,
                target_host=url.host,
                target_port=url.port,
            )
            return None
        if sending_endpoint(url.path) is not None and sending_endpoint(request.url.path) is None:
            log.warning("verity_redirect_into_send_refused", status=response.status_code)
            return None
        method = request.method
        # what every client does (RFC 9110 §15.4): 303 becomes GET, and so does a POST on 301/302
        if (response.status_code == 303 and method != "HEAD") or (
            response.status_code in (301, 302) and method == "POST"
        ):
            method = "GET"
        headers = httpx.Headers(request.headers)
        content: bytes | None = request.content
        if method != request.method:
            content = None
            for name in ("content-length", "transfer-encoding", "content-type"):
                headers.pop(name, None)
        return httpx.Request(method, url, headers=headers, content=content, extensions=request.extensions)

    async def aclose(self) -> None:
        await self.inner.aclose()
