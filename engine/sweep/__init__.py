"""Sweeps: the SweepSpec, the pure plan of work units, executors, the driver, results and reports.

The package is also the function of the Python API: `engine.sweep(pair=..., betas=..., ...)`
runs a sweep (engine.api.sweep). A package named like the function cannot be an ordinary one,
since importing `engine.sweep.driver` binds the package as `engine.sweep`; so the package itself
is made callable.
"""
import sys as _sys
import types as _types


class _CallablePackage(_types.ModuleType):
    def __call__(self, *args, **kwargs):
        from engine.api import sweep
        return sweep(*args, **kwargs)

    @property
    def __signature__(self):
        import inspect
        from engine.api import sweep
        return inspect.signature(sweep)


_sys.modules[__name__].__class__ = _CallablePackage
