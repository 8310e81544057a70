"""Tasks know only their model: preprocess (in workers), forward (on device), postprocess (to record fields)."""
