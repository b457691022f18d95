"""HTTP transport of the cache server."""
