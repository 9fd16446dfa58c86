"""httpx clients for the vendors: auth, timeouts, rate limits, error mapping; no business rules."""
