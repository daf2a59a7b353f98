"""The probe engine: options -> model facts -> guard -> inputs -> tap -> forward -> loss -> gradient -> profile.

`probe.py` runs that line; each stage is its own module. docs/architecture.md ("Engine") is the map.
"""
