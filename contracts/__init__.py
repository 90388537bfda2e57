"""Notarization on an EVM chain (Solidity registry, chain client, verification).

Not built yet: see the README's "Limits" section.
"""
