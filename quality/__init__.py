"""Data quality and versions: dataset schemas and trainability, expectation suites run with
Great Expectations, profiles without rows, DVC sources and model aliases.

The heavy imports (pandas, Great Expectations, DVC) happen inside the functions that need
them, never at import time: ``agora --help`` and ``agora verify`` do not pay for them.
"""
