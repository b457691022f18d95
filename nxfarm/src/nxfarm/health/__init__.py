"""`nxfarm health` and `nxfarm restart`: the seed's monitoring and self-healing."""
