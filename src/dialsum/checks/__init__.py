"""The plan against real runs: the CPU loop, GPU runs and emulations, the probe, calibration.

May import: everything but ``report`` and ``cli``.
"""
