"""What an agreement says, how it is signed, and what the offering's policy allows.

The provider writes the terms from its own policy (or its counter-offer) and the version it
resolved; both parties sign the EIP-712 typed data that carries the terms' canonical hash,
so nothing outside the terms is agreed. A consumer may ask for one version of an offering:
the one an alias names (``agora:alias``) or a number (``agora:version``), at most one.
"""

from __future__ import annotations

import re
from datetime import datetime
from typing import Any

from connector.models import Negotiation
from contracts.eip712 import agreement_typed_data, recover_agreement_signer
from kernel.canonical import canonical_hash
from kernel.db import utcnow
from kernel.errors import FieldError, InvalidInput
from marketplace.catalog import dataset_iri

ALIAS, VERSION = "agora:alias", "agora:version"  # the version a consumer asks for (see above)
_ALIAS_NAME = re.compile(r"^[a-z][a-z0-9_-]{0,63}$")


def agreement_terms(
    row: Negotiation,
    offering: dict[str, Any],
    policy: dict[str, Any] | None,
    *,
    agreement_id: str,
    provider: str,
    chain: dict[str, Any],
) -> dict[str, Any]:
    """The terms a provider signs for ``row`` on ``offering`` (the version it resolved) under
    ``policy``, on the registry ``chain`` (``chain_id``, ``registry``)."""
    return {
        "agreement": agreement_id,
        "dataset": dataset_iri(row.offering_id),
        "offering": row.offering_id,
        "version": offering["version"],
        **({"alias": offering["alias"]} if offering.get("alias") else {}),
        "sha256": offering["sha256"],
        "size": offering["size"],  # the consumer takes no more bytes than this
        "provider": provider,
        "consumer": row.counterparty,
        "purpose": row.purpose,
        "accessMode": row.access_mode,
        "policy": policy,
        **(
            {"credentials": row.offer["agora:credentials"]}
            if (row.offer or {}).get("agora:credentials")
            else {}
        ),
        "issued": utcnow().isoformat(),
        "validUntil": valid_until_of(policy),
        "chain": chain,
    }


def plain_terms(
    row: Negotiation, agreement: dict[str, Any], *, provider: str, consumer: str
) -> dict[str, Any]:
    """The terms this node keeps of a plain DSP provider's agreement: what was negotiated,
    and the ODRL agreement as it came (it is the provider's to enforce)."""
    return {
        "agreement": str(agreement["@id"])[:500],
        "dataset": str(agreement.get("target") or "")[:500],
        "offering": row.offering_id,
        "provider": provider,
        "consumer": consumer,
        "purpose": row.purpose,
        "accessMode": row.access_mode or "download",
        "policy": None,
        "odrl": agreement,
        "issued": str(agreement.get("timestamp") or utcnow().isoformat())[:64],
        "validUntil": 0,
    }


def terms_differences(row: Negotiation, terms: dict[str, Any], *, consumer: str, provider: str) -> list[str]:
    """The fields of a provider's ``terms`` that are not what ``row`` negotiated."""
    expected = {
        "offering": row.offering_id,
        "purpose": row.purpose,
        "accessMode": row.access_mode,
        "consumer": consumer,
        "provider": provider,
    }
    wrong = [k for k, v in expected.items() if str(terms.get(k, "")).lower() != str(v).lower()]
    asked = _asked(row)
    if ALIAS in asked and terms.get("alias") != asked[ALIAS]:
        wrong.append("alias")
    if VERSION in asked and terms.get("version") != asked[VERSION]:
        wrong.append("version")
    if row.offer.get("agora:policy") is not None and terms.get("policy") != row.offer["agora:policy"]:
        wrong.append("policy")
    return wrong


def typed_data_of(terms: dict[str, Any]) -> dict[str, Any]:
    """The EIP-712 typed data both parties sign: everything it covers is in the terms, whose
    canonical hash it carries."""
    chain = terms["chain"]
    return agreement_typed_data(
        chain_id=int(chain["chain_id"]),
        registry=str(chain["registry"]),
        agreement_id=bytes.fromhex(str(terms["agreement"])[2:]),
        terms_hash=bytes.fromhex(canonical_hash(terms)),
        provider=str(terms["provider"]),
        consumer=str(terms["consumer"]),
        valid_until=int(terms.get("validUntil", 0)),
    )


def check_signature(typed: dict[str, Any], signature: str, expected: str, who: str) -> None:
    """:class:`InvalidInput` unless ``signature`` over ``typed`` is ``expected``'s."""
    try:
        signer = recover_agreement_signer(typed, bytes.fromhex(signature.removeprefix("0x")))
    except Exception:  # any malformed signature is just a bad one
        raise InvalidInput(f"the signature of {who} is malformed") from None
    if signer.lower() != expected.lower():
        raise InvalidInput(f"the agreement is signed by {signer}, not by {who} {expected}")


def policy_decision(
    policy: dict[str, Any] | None,
    *,
    participant: str,
    purpose: str,
    mode: str,
    agreed_at: datetime | None = None,
    uses: int = 0,
    credentials: dict[str, Any] | None = None,
) -> tuple[bool, str, list[dict[str, Any]]]:
    """Allowed?, why (the failed constraints in words), and the duties that come with it.
    ``credentials``: the requester's verified credentials (:func:`credential_context`)."""
    if not policy:
        return False, "the offering is offered to no other organisation (it has no policy)", []
    from marketplace.policy import RequestContext, compile_policy, parse_policy

    parsed = parse_policy(policy)
    budget: dict[str, float] = {}
    if mode == "federate":
        from marketplace.policy.privacy import privacy_cap

        # a federation's budget is the provider's own cap: its node enforces it round by
        # round (federation.local) and stops contributing before it would be passed
        cap = privacy_cap(parsed)
        if cap is not None:
            budget = {"dp_epsilon": cap[0], "dp_delta": cap[1]}
    context = RequestContext.model_validate(
        {
            "participant": participant,
            "purpose": purpose,
            "mode": mode,
            "agreed_at": agreed_at,
            "uses": uses,
            **budget,
            **_credential_fields(credentials),
        }
    )
    decision = compile_policy(parsed).evaluate(context)
    failed = [r.explanation for r in decision.reasons if not r.satisfied]
    why = decision.summary + (": " + "; ".join(failed) if failed and not decision.allowed else "")
    return decision.allowed, why, [{"action": d.action, "target": d.target} for d in decision.duties]


def _credential_fields(credentials: Any) -> dict[str, list[str]]:
    """The two credential fields of a request context, from what this node verified, and
    nothing else (a dict of other fields never reaches the context)."""
    if not isinstance(credentials, dict):
        return {}
    out: dict[str, list[str]] = {}
    for key in ("credentials", "credential_claims"):
        value = credentials.get(key)
        if isinstance(value, list) and all(isinstance(v, str) for v in value):
            out[key] = value[:256]
    return out


def credential_types(policy: dict[str, Any] | None) -> list[str]:
    """The credential types the policy's ``credential`` and ``credentialClaim`` constraints
    name (what a requester must present), in order; none for a policy that asks for none."""
    if not policy:
        return []
    from marketplace.policy import Constraint, expand, parse_policy

    found: list[str] = []
    rules = expand(parse_policy(policy))
    for rule in [*rules.permissions, *rules.prohibitions]:
        for c in _atoms(list(getattr(rule, "constraints", [])), Constraint):
            if c.leftOperand not in ("credential", "credentialClaim"):
                continue
            for value in c.rightOperand if isinstance(c.rightOperand, list) else [c.rightOperand]:
                name = str(value).split(".", 1)[0] if c.leftOperand == "credentialClaim" else str(value)
                if name and name not in found:
                    found.append(name)
    return found


def _atoms(nodes: list[Any], atom: type) -> list[Any]:
    out: list[Any] = []
    for node in nodes:
        out.extend([node] if isinstance(node, atom) else _atoms(list(getattr(node, "members", [])), atom))
    return out


def credential_context(verified: dict[str, dict[str, Any]]) -> dict[str, list[str]]:
    """Verified credentials ``{type: claims}`` as the policy reads them: the types, and each
    scalar claim as ``Type.claim=value``."""
    claims = [
        f"{kind}.{name}={value}"
        for kind, subject in verified.items()
        for name, value in subject.items()
        if name != "id" and isinstance(value, str | int | float | bool)
    ]
    return {"credentials": sorted(verified)[:256], "credential_claims": sorted(claims)[:256]}


def valid_until_of(policy: dict[str, Any] | None) -> int:
    """The agreement's end from the policy: an elapsedTime or dateTime upper bound (0 = no end)."""
    if not policy:
        return 0
    from marketplace.policy import Constraint, Duration, expand, parse_policy

    ends: list[datetime] = []
    now = utcnow()
    for permission in expand(parse_policy(policy)).permissions:
        for c in permission.constraints:
            if not isinstance(c, Constraint) or c.operator not in ("lt", "lteq"):
                continue
            if c.leftOperand == "elapsedTime":
                ends.append(Duration.parse(str(c.rightOperand)).after(now))
            elif c.leftOperand == "dateTime":
                ends.append(datetime.fromisoformat(str(c.rightOperand).replace("Z", "+00:00")))
    return int(min(ends).timestamp()) if ends else 0


def max_uses_of(policy: dict[str, Any] | None) -> int | None:
    """The number of uses the policy allows (a count constraint), or None for no limit."""
    if not policy:
        return None
    from marketplace.policy import Constraint, expand, parse_policy

    limits = []
    for permission in expand(parse_policy(policy)).permissions:
        for c in permission.constraints:
            if isinstance(c, Constraint) and c.leftOperand == "count" and c.operator in ("lt", "lteq"):
                limits.append(int(str(c.rightOperand)) + (1 if c.operator == "lteq" else 0))
    return min(limits) if limits else None


def asked_version(message: dict[str, Any]) -> dict[str, Any]:
    """The version a request asks for (``agora:alias`` or ``agora:version``, at most one),
    checked; an empty dict for the latest."""
    alias, version = message.get(ALIAS), message.get(VERSION)
    if alias is not None and (not isinstance(alias, str) or not _ALIAS_NAME.fullmatch(alias)):
        raise InvalidInput(
            f"{ALIAS} must be an alias name (a lower-case letter, then up to 63 of a-z 0-9 _ -)",
            errors=[FieldError(ALIAS, "not an alias name")],
        )
    if version is not None and (
        isinstance(version, bool) or not isinstance(version, int) or not 0 < version < 2**31
    ):
        raise InvalidInput(f"{VERSION} must be a version number", errors=[FieldError(VERSION, "not >= 1")])
    if alias is not None and version is not None:
        raise InvalidInput(
            f"ask for {ALIAS} or {VERSION}, not both", errors=[FieldError(ALIAS, "with a version")]
        )
    return {ALIAS: alias} if alias is not None else {VERSION: version} if version is not None else {}


def _asked(row: Negotiation) -> dict[str, Any]:
    """The version the negotiation asked for (kept with its offer): ``agora:alias`` or
    ``agora:version``, or nothing (the latest)."""
    return {k: v for k, v in (row.offer or {}).items() if k in (ALIAS, VERSION) and v is not None}
