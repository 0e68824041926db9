"""Tooling outside the compile and run paths: the model zoo, the benchmark worker, memory reports.

Nothing in :mod:`fluidml_tvm.runtime`, :mod:`fluidml_tvm.passes` or :mod:`fluidml_tvm.schedules`
imports from here.
"""
