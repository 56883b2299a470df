"""What every verb stands on: the typed config, errors, run folders, atomic files, CSV I/O,
the special tokens, the launcher's ranks and the torch-build check.

Bottom layer: imports nothing from dialsum.
"""
