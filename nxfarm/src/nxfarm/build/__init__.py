"""`nxfarm build`: spread an Nx run's cacheable tasks over the farm, then replay it locally."""
