"""Sandbox vendors: stateful fake GHL, Aloware, Verity and Clerk served over real HTTP
(`dfm run sandbox`), one module or package per vendor, composed by :mod:`services.sandbox.app`.

The fake GHL (:mod:`.ghl`) enforces the bearer token, the per-endpoint ``Version`` header,
100 requests / 10 s per location with the real ``X-RateLimit-*`` headers and 429, and
validates every request against GHL's OpenAPI (422 when invalid). The fake Aloware
(:mod:`.aloware`) checks ``api_token``. Both record every call (with the request's W3C
``traceparent``), accept injected faults through ``/_sandbox/faults``, and after each write
emit the webhook the real vendor would send to ``DFM_SANDBOX_WEBHOOK_URL`` (the ingress),
signed like the real sender, so echo suppression is tested end to end.

The fake Verity (:mod:`.verity`, under ``/verity``) takes send-message (``VERITY_API_KEY``)
and the GHL webhook forward, and answers every other ``/verity/api/...`` path by echoing the
request when it carries a valid sandbox Clerk token (401 otherwise; ``/api/health`` is open).
The fake Clerk (:mod:`.clerk`, under ``/clerk``) lists the service user's sessions, mints
RS256 session tokens and publishes its JWKS; ``POST /_sandbox/clerk/expire-tokens`` makes
Verity reject every token minted so far, as after an expiry.

Everything an app holds is in its own :class:`~services.sandbox.state.Sandbox` (on
``app.state``), so two sandbox apps in one process share nothing.
"""
