"""Rendering, export and comparison of recorded gradient profiles (used by the plugin and the command line)."""

PLOT_FORMATS = ("png", "svg")  # here, not in report.plots, so that the plugin can offer them without numpy
