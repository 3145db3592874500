"""Calibration and verification: the simulator against the real shadow."""
