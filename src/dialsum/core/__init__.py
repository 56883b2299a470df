"""What every verb stands on: the typed config, errors, run folders, atomic files, CSV I/O."""
