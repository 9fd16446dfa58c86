"""The console's pages and actions, one router per area."""
