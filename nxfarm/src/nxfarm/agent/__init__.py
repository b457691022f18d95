"""The build agent: a Dask worker whose task slots each own a checkout of the workspace."""
