"""`nxfarm demo`: a whole farm on this machine, for a first look and for tests."""
