"""Operator and developer tooling shared by the admin API, the CLI, the MCP server and the
jobs service: event operations, backups, the development stack, the webhook sender, the call
list rebuild and the agents seed. May use vendor clients; no service package imports another."""
