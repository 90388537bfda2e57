"""Agora's own terms in a message for a connector that knows only the DSP context.

Between Agora nodes a message's ``@context`` names the DSP context and the node's own
(``/ui/context.jsonld``, which declares the ``agora``, ``dqv``, ``csvw`` and ``oa``
prefixes). A stock connector (EDC) does not fetch contexts it does not know, and fails on
one it cannot load; so what goes to a plain DSP connector names the DSP context only, and
every prefixed term the DSP context does not define is written as its full IRI
(:func:`for_plain_peer`), which needs no context at all. The message means the same.
"""

from __future__ import annotations

from typing import Any

from connector.dsp.binding import DSP_CONTEXT
from quality.dqv import PREFIXES

_DSP_PREFIXES = ("dct:", "dcat:", "odrl:", "xsd:", "dspace:")  # defined by the DSP context
MAX_DEPTH = 64


def _iri(term: str) -> str:
    prefix, sep, local = term.partition(":")
    if not sep or term.startswith(_DSP_PREFIXES) or local.startswith("//"):
        return term
    base = PREFIXES.get(prefix)
    return base + local if base else term


def expand_terms(value: Any, depth: int = 0) -> Any:
    """``value`` with the node's own prefixed keys and ``@type`` values as full IRIs."""
    if depth > MAX_DEPTH:
        raise ValueError("the message nests too deep to rewrite")
    if isinstance(value, dict):
        out: dict[str, Any] = {}
        for key, item in value.items():
            if key == "@context":
                continue
            new = expand_terms(item, depth + 1)
            if key == "@type":
                new = [_iri(t) if isinstance(t, str) else t for t in new] if isinstance(new, list) else new
                new = _iri(new) if isinstance(new, str) else new
            out[_iri(key)] = new
        return out
    if isinstance(value, list):
        return [expand_terms(item, depth + 1) for item in value]
    return value


def for_plain_peer(message: dict[str, Any]) -> dict[str, Any]:
    """``message`` for a connector that knows the DSP context only."""
    return {"@context": DSP_CONTEXT, **expand_terms(message)}
