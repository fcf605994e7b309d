"""Evaluation: test-split reports, paired statistics, prediction drift."""
