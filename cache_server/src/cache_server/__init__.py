"""Nx self-hosted remote cache server (nx-farm)."""

__version__ = "0.1.0"
