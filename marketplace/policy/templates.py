"""The usage-control patterns of the IDS as named templates.

A template is a function from its parameters to an explicit policy, so a provider can write
``{template: n-times-usage, params: {count: 10}}`` and everything downstream (the engine,
the plain sentences, the ODRL offer) sees ordinary rules. :func:`expand` is the only place
that knows templates exist.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from pydantic import BaseModel

from marketplace.policy.language import (
    ConnectorRestrictedUsageParams,
    DurationUsageParams,
    NTimesUsageParams,
    Policy,
    ProhibitAccessParams,
    ProvideAccessParams,
    UsageDuringIntervalParams,
    UsageLoggingParams,
    UsageNotificationParams,
    UsageUntilDeletionParams,
)

Rule = dict[str, Any]


def _purposes(purposes: list[str] | None) -> list[Rule]:
    if not purposes:
        return []
    return [{"leftOperand": "purpose", "operator": "isAnyOf", "rightOperand": purposes}]


def _use(constraints: list[Rule], duties: list[Rule] | None = None) -> Policy:
    permission: Rule = {"action": "use", "constraints": constraints}
    if duties:
        permission["duties"] = duties
    return Policy.model_validate({"permissions": [permission]})


def provide_access(p: ProvideAccessParams) -> Policy:
    """Anyone may use it (for the given purposes, if any)."""
    return _use(_purposes(p.purposes))


def prohibit_access(p: ProhibitAccessParams) -> Policy:
    """Nobody may use it."""
    return Policy.model_validate({"prohibitions": [{"action": "use"}]})


def n_times_usage(p: NTimesUsageParams) -> Policy:
    """At most ``count`` uses: the engine counts uses so far, so the next is allowed while below."""
    return _use([*_purposes(p.purposes), {"leftOperand": "count", "operator": "lt", "rightOperand": p.count}])


def duration_usage(p: DurationUsageParams) -> Policy:
    """Use within ``duration`` of the agreement."""
    return _use(
        [
            *_purposes(p.purposes),
            {"leftOperand": "elapsedTime", "operator": "lteq", "rightOperand": p.duration},
        ]
    )


def usage_during_interval(p: UsageDuringIntervalParams) -> Policy:
    """Use from ``start`` to ``end`` (both included)."""
    return _use(
        [
            *_purposes(p.purposes),
            {"leftOperand": "dateTime", "operator": "gteq", "rightOperand": p.start},
            {"leftOperand": "dateTime", "operator": "lteq", "rightOperand": p.end},
        ]
    )


def usage_until_deletion(p: UsageUntilDeletionParams) -> Policy:
    """Use until ``until``, with the duty to delete the data by then."""
    deadline = {"leftOperand": "dateTime", "operator": "lteq", "rightOperand": p.until}
    return _use([*_purposes(p.purposes), deadline], [{"action": "delete", "constraints": [deadline]}])


def usage_logging(p: UsageLoggingParams) -> Policy:
    """Use, with each use logged."""
    return _use(_purposes(p.purposes), [{"action": "log"}])


def usage_notification(p: UsageNotificationParams) -> Policy:
    """Use, with each use notified (to ``target``, or the provider's endpoint)."""
    duty: Rule = {"action": "notify"}
    if p.target:
        duty["target"] = p.target
    return _use(_purposes(p.purposes), [duty])


def connector_restricted_usage(p: ConnectorRestrictedUsageParams) -> Policy:
    """Only the listed participants (connectors) may use it."""
    return _use(
        [
            *_purposes(p.purposes),
            {"leftOperand": "participant", "operator": "isAnyOf", "rightOperand": p.participants},
        ]
    )


@dataclass(frozen=True)
class Template:
    name: str
    params: type[BaseModel]
    build: Callable[[Any], Policy]

    @property
    def summary(self) -> str:
        return (self.build.__doc__ or "").strip().splitlines()[0]


TEMPLATES: dict[str, Template] = {
    t.name: t
    for t in (
        Template("provide-access", ProvideAccessParams, provide_access),
        Template("prohibit-access", ProhibitAccessParams, prohibit_access),
        Template("n-times-usage", NTimesUsageParams, n_times_usage),
        Template("duration-usage", DurationUsageParams, duration_usage),
        Template("usage-during-interval", UsageDuringIntervalParams, usage_during_interval),
        Template("usage-until-deletion", UsageUntilDeletionParams, usage_until_deletion),
        Template("usage-logging", UsageLoggingParams, usage_logging),
        Template("usage-notification", UsageNotificationParams, usage_notification),
        Template("connector-restricted-usage", ConnectorRestrictedUsageParams, connector_restricted_usage),
    )
}


def expand(policy: Policy) -> Policy:
    """The explicit rules of ``policy`` (the policy itself when it has no template)."""
    if policy.template is None:
        return policy
    return TEMPLATES[policy.template].build(policy.template_params())


def from_template(name: str, **params: Any) -> Policy:
    """A template policy, validated (``from_template("n-times-usage", count=10)``)."""
    return Policy.model_validate({"template": name, "params": params})
