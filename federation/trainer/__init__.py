"""The warm federated trainer that runs inside the sandbox (copied there as ``agora_fl``).

Imports here are relative, so the same code runs as ``federation.trainer`` in the node (which
uses only :mod:`.frames`) and as ``python -m agora_fl`` beside the provider's rows.
"""
