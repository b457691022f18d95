"""Pure functions that render what the components put on hosts: unit files, scripts, token files."""
