"""Data: read, validate, quarantine, split; near-duplicates; the demo corpus."""
