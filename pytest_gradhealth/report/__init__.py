"""Rendering, export and comparison of recorded gradient profiles (used by the plugin and the command line)."""
