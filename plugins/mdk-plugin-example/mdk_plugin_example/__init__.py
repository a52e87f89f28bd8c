"""Example plugin package for mim4dd_kit."""
