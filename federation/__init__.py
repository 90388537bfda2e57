"""Federated learning between organisations: rounds over the connector, sandboxed local training."""
