"""The plan against real runs: the CPU loop, GPU runs and emulations, the probe, calibration."""
