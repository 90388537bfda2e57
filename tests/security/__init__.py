"""Hostile-party tests: a consumer job, a peer or a client trying each trust boundary (SECURITY.md)."""
