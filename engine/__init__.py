"""engine: in-silico experiments on why pre-trained networks transfer.

The commands as Python functions (engine.api; README "From Python"): `build_data`, `sweep`,
`results`, `report`, `status`, `pretrain`, `analyze`, `case_study`, `reproduce`. Each raises `EngineError`
with the command line's one-line message for bad input or a failing environment. Importing
`engine` imports nothing heavy and writes nothing.
"""
__version__ = "0.1.0"

from engine.errors import EngineError
from engine.api import (SweepResults, analyze, build_data, case_study, pretrain, report,
                        reproduce, results, status)
from engine import sweep  # the package engine.sweep, callable as engine.sweep(...) (engine.api.sweep)

__all__ = ["EngineError", "SweepResults", "analyze", "build_data", "case_study", "pretrain",
           "report", "reproduce", "results", "status", "sweep", "__version__"]
