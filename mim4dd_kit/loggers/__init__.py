"""Built-in experiment trackers (plugin kind ``loggers``; mim4dd_kit/run/tracking.py)."""
