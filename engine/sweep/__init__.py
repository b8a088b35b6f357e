"""Sweeps: the SweepSpec, the pure plan of work units, executors, the driver, results and reports."""
