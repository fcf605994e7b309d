"""`tuneline` commands (filled in by their stage)."""
