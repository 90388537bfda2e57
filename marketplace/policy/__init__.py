"""Usage policies: the language, the named templates, the decision engine, plain sentences
and the ODRL export.

::

    policy = load_policy(Path("policy.yaml").read_text())      # or parse_policy(dict)
    decision = compile_policy(policy).evaluate(
        RequestContext(participant="0x…", purpose="research", mode="compute")
    )
    decision.allowed, decision.reasons, describe(policy)

The names are loaded on first use: this package also holds the ``agora policy`` command
group, and ``agora --help`` must not pay for importing pydantic.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from marketplace.policy.engine import (
        CompiledPolicy,
        Decision,
        DutyNote,
        Evaluation,
        Reason,
        RequestContext,
        compile_policy,
        evaluate_policy,
    )
    from marketplace.policy.explain import constraint_words, describe
    from marketplace.policy.language import (
        AndGroup,
        Constraint,
        Duration,
        Duty,
        OrGroup,
        Permission,
        Policy,
        Prohibition,
        XoneGroup,
        load_policy,
        parse_policy,
        policy_json_schema,
    )
    from marketplace.policy.odrl import AGORA_NS, to_odrl_offer
    from marketplace.policy.privacy import DEFAULT_DP_DELTA, privacy_cap
    from marketplace.policy.templates import TEMPLATES, Template, expand, from_template

__all__ = [
    "AGORA_NS",
    "DEFAULT_DP_DELTA",
    "TEMPLATES",
    "AndGroup",
    "CompiledPolicy",
    "Constraint",
    "Decision",
    "Duration",
    "Duty",
    "DutyNote",
    "Evaluation",
    "OrGroup",
    "Permission",
    "Policy",
    "Prohibition",
    "Reason",
    "RequestContext",
    "Template",
    "XoneGroup",
    "compile_policy",
    "constraint_words",
    "describe",
    "evaluate_policy",
    "expand",
    "from_template",
    "load_policy",
    "parse_policy",
    "policy_json_schema",
    "privacy_cap",
    "to_odrl_offer",
]
_MODULES = ("language", "templates", "explain", "engine", "odrl", "privacy")


def __getattr__(name: str) -> Any:
    if name in __all__:
        for module in _MODULES:
            found = getattr(importlib.import_module(f"{__name__}.{module}"), name, None)
            if found is not None:
                globals()[name] = found
                return found
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
