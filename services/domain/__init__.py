"""Business rules shared by the sync consumers: the canonical contact and its merge, the
opt-out registry, call lists, and the mapping store (ID mappings, per-contact locks, the echo
ledger, ``sync_log``, effect claims). The rules of each target live in each consumer service.
Imports ``services.infra`` and ``contracts`` only."""
