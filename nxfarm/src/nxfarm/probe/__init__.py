"""Facts about a workspace and the farm: pure parsers of what tools print."""
