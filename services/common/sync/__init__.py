"""Mechanics shared by the sync consumers: canonical contact form, mappings, echo ledger,
per-contact locks, sync_log. The rules themselves live in each consumer service."""
