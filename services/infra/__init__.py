"""Infrastructure every service stands on: settings, the database, the broker, logging and
tracing, the outbox and redrive, and the consumer/delivery shell. Knows nothing of contacts or
vendors; imports only ``contracts`` (enforced by import-linter, see pyproject.toml)."""
