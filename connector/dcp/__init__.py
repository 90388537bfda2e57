"""The credential side of the Decentralized Claims Protocol (DCP 1.0, profile ``vc11-sl2021/jwt``).

A node can play every role a data space needs, each in its own module:

* **issuer** (:mod:`connector.dcp.credentials`): it signs JWT verifiable credentials (VC data
  model 1.1) with its organisation key, so one node can be its data space's authority;
* **holder** (:mod:`connector.dcp.credentials`, :mod:`connector.dcp.presentation`): it keeps
  the credentials issued to it (table ``held_credential``), takes new ones from the issuers
  its operator trusts (the Storage and Offer APIs) and presents them to a verifier that holds
  an access token this node issued, never more than that token's scopes;
* **verifier** (:mod:`connector.dcp.verifier`): it asks a caller's Credential Service for the
  credentials a policy needs and checks every signature, subject, issuer, date and status
  entry before a single claim reaches the policy engine.

Tokens between the parties are DCP self-issued ID tokens (:mod:`connector.dsp.identity`);
the access tokens a holder hands out are :mod:`connector.dcp.tokens`'.
"""
