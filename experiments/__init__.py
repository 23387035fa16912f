"""Experiments on nsl, run from the repository root as modules (``python -m experiments.<name>``).

The paper reproductions sit here; the benchmarks (throughput, scale, sample efficiency, the field's estimators)
in :mod:`experiments.benchmarks`. Every script uses the library and the shared scaffolding of
:mod:`experiments.common`.
"""
