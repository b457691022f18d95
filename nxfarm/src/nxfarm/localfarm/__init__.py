"""`nxfarm farm up/down/env`: a farm on this machine that stays up for the developer's own workspaces."""
