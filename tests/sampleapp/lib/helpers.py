"""Template helpers (``h``), kept so pluggables that add helpers find a module."""
