"""The connector: participants (this organisation and its peers).

Peer messaging, contract negotiation, agreements and transfers arrive with their issue;
see the README's "Limits" section.
"""
