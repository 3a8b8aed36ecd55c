"""Small generic helpers shared by the top-level scripts (CLI guard, logging, atomic I/O)."""
