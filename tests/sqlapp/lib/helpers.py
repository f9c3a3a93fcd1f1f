"""Template helpers (none needed)."""
