"""Decide and do: plans built from probes, then run."""
