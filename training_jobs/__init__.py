"""Compute-to-data training jobs and federated learning.

Not built yet: see the README's "Limits" section.
"""
