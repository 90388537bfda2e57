"""The marketplace: offerings (datasets and models) and their versions.

Later parts of the marketplace (usage policies, manifests, the federated catalog and the
web UI) arrive with their issues; see the README's "Limits" section.
"""
