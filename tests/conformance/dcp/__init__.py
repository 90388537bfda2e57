"""The Eclipse DCP TCK's cases, translated: a node as verifier and as Credential Service."""
