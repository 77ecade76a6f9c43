"""Benchmarks of the model store: ``python -m bench`` (or ``make bench``).

Every section runs in one invocation against its own throw-away PostgreSQL
database and models directory, so the ratios it reports (ours against the
legacy BLOB path, against ``joblib`` and against the bare floor of "read,
hash, unpickle") come from the same machine, in the same minutes.
"""
