"""The usage-policy language: what a policy may say, as pydantic models.

A policy is written in YAML or JSON, in one of two forms that mean the same thing:

* a named **template** with ``params`` (``{template: n-times-usage, params: {count: 10}}``),
  expanded into rules by :func:`marketplace.policy.templates.expand`;
* explicit ODRL-shaped **rules**: ``permissions`` (with ``constraints`` and ``duties``) and
  ``prohibitions``. A constraint is atomic (``leftOperand``, ``operator``, ``rightOperand``)
  or a logical group (``and`` / ``or`` / ``xone`` of constraints, nestable).

Validation is strict because a policy is a promise to other organisations: unknown keys,
an operator that does not fit its operand (``lt`` on a purpose), a scalar where a list is
needed, a mistyped address checksum, a timestamp without a zone are all refused, each with
the path of the offending field (``permissions.0.constraints.1.operator``). Valid values
are stored in a canonical form (checksummed addresses, ISO timestamps with ``Z``, upper-case
durations), so two spellings of one policy compare equal.
"""

from __future__ import annotations

import calendar
import math
import re
from dataclasses import dataclass
from datetime import UTC, date, datetime, timedelta
from decimal import Decimal
from enum import StrEnum
from pathlib import Path
from typing import Annotated, Any, Literal, NoReturn, get_args
from urllib.parse import urlsplit

from pydantic import (
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    StrictInt,
    ValidationError,
    ValidationInfo,
    ValidatorFunctionWrapHandler,
    WithJsonSchema,
    WrapValidator,
    field_validator,
    model_validator,
)
from pydantic_core import PydanticCustomError

from kernel.validation import validate
from marketplace.schemas import ACCESS_MODES

Action = Literal["use", "download", "compute", "federate"]
DutyAction = Literal["log", "notify", "delete"]
LeftOperand = Literal[
    "purpose",
    "participant",
    "participantName",
    "participantGroup",
    "dateTime",
    "elapsedTime",
    "count",
    "region",
    "accessMode",
    "dpEpsilon",
    "dpDelta",
    "credential",
    "credentialClaim",
]
Operator = Literal["eq", "neq", "lt", "lteq", "gt", "gteq", "isAnyOf", "isNoneOf", "isAllOf"]
TemplateName = Literal[
    "provide-access",
    "prohibit-access",
    "n-times-usage",
    "duration-usage",
    "usage-during-interval",
    "usage-until-deletion",
    "usage-logging",
    "usage-notification",
    "connector-restricted-usage",
]

ACTIONS: tuple[Action, ...] = get_args(Action)
OPERATORS: tuple[Operator, ...] = get_args(Operator)
TEMPLATE_NAMES: tuple[TemplateName, ...] = get_args(TemplateName)
LIST_OPERATORS = frozenset({"isAnyOf", "isNoneOf", "isAllOf"})

MAX_RULES = 64
MAX_CONSTRAINTS = 64
MAX_LIST = 256
MAX_TEXT = 200
MAX_EPSILON = 1e6


class Kind(StrEnum):
    """The value type of a left operand; it decides which operators and right operands fit."""

    TEXT = "text"
    ADDRESS = "address"
    MODE = "access mode"
    SET = "group set"
    TIME = "timestamp"
    DURATION = "duration"
    COUNT = "count"
    EPSILON = "privacy budget ε"
    DELTA = "privacy budget δ"


OPERAND_KINDS: dict[str, Kind] = {
    "purpose": Kind.TEXT,
    "participant": Kind.ADDRESS,
    "participantName": Kind.TEXT,
    "participantGroup": Kind.SET,
    "dateTime": Kind.TIME,
    "elapsedTime": Kind.DURATION,
    "count": Kind.COUNT,
    "region": Kind.TEXT,
    "accessMode": Kind.MODE,
    "dpEpsilon": Kind.EPSILON,
    "dpDelta": Kind.DELTA,
    # verified credentials (DCP): the types the requester holds from trusted issuers, and
    # their claims as "Type.claim=value" (e.g. "MembershipCredential.membership=gold")
    "credential": Kind.SET,
    "credentialClaim": Kind.SET,
}

_EQUALITY = ("eq", "neq", "isAnyOf", "isNoneOf")
_ORDER = ("lt", "lteq", "gt", "gteq")
# eq/neq on an instant or a duration would almost never hold (the request time is never
# exactly the right operand), so they are refused rather than silently useless.
KIND_OPERATORS: dict[Kind, tuple[str, ...]] = {
    Kind.TEXT: _EQUALITY,
    Kind.ADDRESS: _EQUALITY,
    Kind.MODE: _EQUALITY,
    Kind.SET: (*_EQUALITY, "isAllOf"),
    Kind.TIME: _ORDER,
    Kind.DURATION: _ORDER,
    Kind.COUNT: ("eq", "neq", *_ORDER),
    # a cap: the request's budget must stay below it (marketplace.policy.privacy)
    Kind.EPSILON: ("lt", "lteq"),
    Kind.DELTA: ("lt", "lteq"),
}


# values --------------------------------------------------------------------------------


def _fail(loc: tuple[str | int, ...], message: str, value: Any) -> NoReturn:
    """Raise a validation error at ``loc`` below the field being validated.

    pydantic prefixes the locations of a ``ValidationError`` raised inside a validator with
    the validator's own location, which is how errors get their exact field paths.
    """
    raise ValidationError.from_exception_data(
        "Policy",
        [
            {
                "type": PydanticCustomError("policy", "{detail}", {"detail": message}),
                "loc": loc,
                "input": value,
            }
        ],
    )


_ADDRESS = re.compile(r"^0x[0-9a-fA-F]{40}$")


def parse_address(value: Any) -> str:
    """An Ethereum address in its checksummed (EIP-55) form.

    All-lower or all-upper hex carries no checksum and is accepted; mixed case must match
    its checksum, because a mismatch means a typo that would silently name nobody.
    """
    if not isinstance(value, str) or not _ADDRESS.match(value.strip()):
        raise ValueError(f"not an address (0x and 40 hex digits): {value!r}")
    from eth_utils.address import to_checksum_address

    text = value.strip()
    checksummed = str(to_checksum_address(text))
    digits = text[2:]
    if digits != digits.lower() and digits != digits.upper() and text != checksummed:
        raise ValueError(f"address {text} has a wrong checksum (did you mean {checksummed}?)")
    return checksummed


def parse_timestamp(value: Any) -> datetime:
    """An ISO 8601 timestamp with a time zone (a YAML timestamp arrives as a datetime)."""
    if isinstance(value, datetime):
        moment = value
    elif isinstance(value, date):
        raise ValueError(f"{value.isoformat()} is a date; give a timestamp with time and zone")
    elif isinstance(value, str):
        try:
            moment = datetime.fromisoformat(value.strip())
        except ValueError:
            raise ValueError(f"not an ISO 8601 timestamp: {value!r}") from None
    else:
        raise ValueError(f"not an ISO 8601 timestamp: {value!r}")
    if moment.tzinfo is None or moment.utcoffset() is None:
        raise ValueError(f"timestamp {value!s} has no time zone (add Z or +01:00)")
    return moment


def format_timestamp(moment: datetime) -> str:
    """The canonical text of an instant: ISO 8601, seconds precision or finer, ``Z`` for UTC."""
    text = moment.isoformat()
    return text[:-6] + "Z" if text.endswith("+00:00") else text


_DURATION = re.compile(
    r"^P(?!$)(?:(?P<years>\d+)Y)?(?:(?P<months>\d+)M)?(?:(?P<weeks>\d+)W)?(?:(?P<days>\d+)D)?"
    r"(?:T(?=\d)(?:(?P<hours>\d+)H)?(?:(?P<minutes>\d+)M)?(?:(?P<seconds>\d+(?:\.\d+)?)S)?)?$"
)


@dataclass(frozen=True)
class Duration:
    """An ISO 8601 duration; years and months are calendar units, the rest exact.

    ``P1M`` after 31 January is the last day of February: a month is not 30 days, so a
    duration is added to its start date (:meth:`after`) rather than turned into seconds.
    """

    text: str
    years: int = 0
    months: int = 0
    days: int = 0
    seconds: Decimal = Decimal(0)

    @classmethod
    def parse(cls, value: Any) -> Duration:
        text = value.strip().upper() if isinstance(value, str) else ""
        match = _DURATION.match(text)
        if not match:
            raise ValueError(f"not an ISO 8601 duration such as P30D or PT12H: {value!r}")
        part = {k: v or "0" for k, v in match.groupdict().items()}
        seconds = Decimal(part["seconds"]) + 60 * int(part["minutes"]) + 3600 * int(part["hours"])
        return cls(
            text=text,
            years=int(part["years"]),
            months=int(part["months"]),
            days=7 * int(part["weeks"]) + int(part["days"]),
            seconds=seconds,
        )

    @property
    def fixed(self) -> timedelta:
        """The part that does not depend on the calendar (days and time)."""
        return timedelta(days=self.days, seconds=float(self.seconds))

    def after(self, start: datetime) -> datetime:
        """The instant this duration after ``start`` (month ends clamp: 31 Jan + P1M = 28/29 Feb)."""
        if self.years or self.months:
            total = start.month - 1 + self.months + 12 * self.years
            year, month = start.year + total // 12, total % 12 + 1
            day = min(start.day, calendar.monthrange(year, month)[1])
            start = start.replace(year=year, month=month, day=day)
        return start + self.fixed


def _text(value: Any) -> str:
    if isinstance(value, bool):
        raise ValueError(f"expected text, got {value!r} (in YAML, quote yes/no/on/off)")
    if not isinstance(value, str) or not value.strip():
        raise ValueError(f"expected non-empty text, got {value!r}")
    if len(value) > MAX_TEXT:
        raise ValueError(f"text longer than {MAX_TEXT} characters")
    return value.strip()


def _mode(value: Any) -> str:
    if value not in ACCESS_MODES:
        raise ValueError(f"{value!r} is not an access mode ({', '.join(ACCESS_MODES)})")
    return str(value)


def _count(value: Any) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < 0:
        raise ValueError(f"expected a whole number of uses (0 or more), got {value!r}")
    return value


_DECIMAL = re.compile(r"^[+-]?(?:\d+(?:\.\d*)?|\.\d+)(?:[eE][+-]?\d+)?$")


def _real(value: Any) -> float | None:
    """A finite number, or None. Decimal text counts: YAML 1.1 reads ``1e-5`` as a string."""
    if isinstance(value, str) and _DECIMAL.match(value.strip()):
        value = float(value)
    if isinstance(value, bool) or not isinstance(value, int | float):
        return None
    number = float(value)
    return number if math.isfinite(number) else None


def _epsilon(value: Any) -> float:
    number = _real(value)
    if number is None or not 0 < number <= MAX_EPSILON:
        raise ValueError(
            f"expected a privacy budget ε: a number above 0 and at most {MAX_EPSILON:,.0f}, got {value!r}"
        )
    return number


def _delta(value: Any) -> float:
    number = _real(value)
    if number is None or not 0 < number < 1:
        raise ValueError(f"expected δ: a number between 0 and 1 (exclusive) such as 1e-5, got {value!r}")
    return number


def _timestamp_text(value: Any) -> str:
    return format_timestamp(parse_timestamp(value))


def _duration_text(value: Any) -> str:
    return Duration.parse(value).text


_CANONICAL: dict[Kind, Any] = {
    Kind.TEXT: _text,
    Kind.SET: _text,
    Kind.ADDRESS: parse_address,
    Kind.MODE: _mode,
    Kind.TIME: _timestamp_text,
    Kind.DURATION: _duration_text,
    Kind.COUNT: _count,
    Kind.EPSILON: _epsilon,
    Kind.DELTA: _delta,
}


def _validated(parse: Any) -> Any:
    """A before-validator that turns ``parse``'s ValueError into a clean message (no prefix)."""

    def check(value: Any) -> Any:
        try:
            return parse(value)
        except ValueError as exc:
            raise PydanticCustomError("policy", "{detail}", {"detail": str(exc)}) from None

    return check


Address = Annotated[
    str,
    BeforeValidator(_validated(parse_address)),
    WithJsonSchema({"type": "string", "pattern": "^0x[0-9a-fA-F]{40}$", "description": "EIP-55 address"}),
]
Timestamp = Annotated[
    str,
    BeforeValidator(_validated(_timestamp_text)),
    WithJsonSchema({"type": "string", "format": "date-time", "description": "ISO 8601 with a time zone"}),
]
IsoDuration = Annotated[
    str,
    BeforeValidator(_validated(_duration_text)),
    WithJsonSchema({"type": "string", "pattern": "^P", "description": "ISO 8601 duration, e.g. P30D, PT12H"}),
]
Text = Annotated[str, BeforeValidator(_validated(_text)), Field(max_length=MAX_TEXT)]


def _url(value: Any) -> str:
    parts = urlsplit(value) if isinstance(value, str) else None
    if parts is None or parts.scheme not in ("http", "https") or not parts.netloc:
        raise ValueError(f"not an http(s) URL: {value!r}")
    return str(value)


Url = Annotated[str, BeforeValidator(_validated(_url)), WithJsonSchema({"type": "string", "format": "uri"})]


# rules ---------------------------------------------------------------------------------


class _Model(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True, serialize_by_alias=True)


class Constraint(_Model):
    """An atomic constraint: ``leftOperand operator rightOperand`` must hold for the request."""

    leftOperand: LeftOperand
    operator: Operator
    rightOperand: str | int | float | list[str] = Field(
        description="a scalar, or a non-empty list for isAnyOf / isNoneOf / isAllOf"
    )

    @property
    def kind(self) -> Kind:
        return OPERAND_KINDS[self.leftOperand]

    @field_validator("operator")
    @classmethod
    def _operator_fits(cls, operator: str, info: ValidationInfo) -> str:
        left = info.data.get("leftOperand")
        if left is None:
            return operator
        kind = OPERAND_KINDS[left]
        if operator not in KIND_OPERATORS[kind]:
            raise PydanticCustomError(
                "policy",
                "{detail}",
                {
                    "detail": f"{operator} does not fit {left} (compared as {kind}); "
                    f"use one of {', '.join(KIND_OPERATORS[kind])}"
                },
            )
        return operator

    @field_validator("rightOperand", mode="wrap")
    @classmethod
    def _right_fits(cls, value: Any, handler: ValidatorFunctionWrapHandler, info: ValidationInfo) -> Any:
        """Check and canonicalise the right operand for its operand and operator.

        The declared type only shapes the published schema: values are checked here, and
        not at all when the operand or operator was refused (one error, not a cascade).
        """
        if isinstance(value, datetime):  # an unquoted YAML timestamp
            value = format_timestamp(value) if value.tzinfo else value.isoformat()
        left, operator = info.data.get("leftOperand"), info.data.get("operator")
        if left is None or operator is None:
            return value
        kind = OPERAND_KINDS[left]
        canonical = _CANONICAL[kind]
        if operator in LIST_OPERATORS:
            if not isinstance(value, list) or not value:
                _fail((), f"{operator} needs a non-empty list, got {value!r}", value)
            if len(value) > MAX_LIST:
                _fail((), f"at most {MAX_LIST} values", value)
            items = []
            for index, item in enumerate(value):
                try:
                    items.append(canonical(item))
                except ValueError as exc:
                    _fail((index,), str(exc), item)
            return list(dict.fromkeys(items))
        if isinstance(value, list):
            _fail((), f"{operator} compares with one value, got a list (use isAnyOf for a list)", value)
        try:
            return canonical(value)
        except ValueError as exc:
            _fail((), str(exc), value)


def _constraint_node(value: Any, handler: Any) -> Any:
    """Pick the model of a constraint by its keys, so errors name the real fields.

    A plain union would try every member and report all their complaints (or, tagged, put
    the tag into the error path); choosing by the ``and``/``or``/``xone`` key keeps paths
    such as ``constraints.0.or.1.operator`` exactly as written.
    """
    if isinstance(value, Constraint | AndGroup | OrGroup | XoneGroup):
        return value
    if isinstance(value, dict):
        for key, model in (("and", AndGroup), ("or", OrGroup), ("xone", XoneGroup)):
            if key in value:
                return model.model_validate(value)
    return Constraint.model_validate(value)


ConstraintNode = Annotated[
    "Constraint | AndGroup | OrGroup | XoneGroup",
    WrapValidator(_constraint_node),
]
Constraints = Annotated[list[ConstraintNode], Field(max_length=MAX_CONSTRAINTS)]


class AndGroup(_Model):
    """Every member holds."""

    and_: list[ConstraintNode] = Field(alias="and", min_length=1, max_length=MAX_CONSTRAINTS)

    @property
    def members(self) -> list[ConstraintNode]:
        return self.and_


class OrGroup(_Model):
    """At least one member holds."""

    or_: list[ConstraintNode] = Field(alias="or", min_length=1, max_length=MAX_CONSTRAINTS)

    @property
    def members(self) -> list[ConstraintNode]:
        return self.or_


class XoneGroup(_Model):
    """Exactly one member holds."""

    xone: list[ConstraintNode] = Field(min_length=1, max_length=MAX_CONSTRAINTS)

    @property
    def members(self) -> list[ConstraintNode]:
        return self.xone


LogicalGroup = AndGroup | OrGroup | XoneGroup


def group_operator(group: LogicalGroup) -> Literal["and", "or", "xone"]:
    if isinstance(group, AndGroup):
        return "and"
    return "or" if isinstance(group, OrGroup) else "xone"


class Duty(_Model):
    """What the user of a permission must do: log each use, notify someone, delete the data."""

    action: DutyAction
    target: Url | None = Field(
        default=None, description="notify only: the endpoint to notify (default: the provider's)"
    )
    constraints: Constraints = Field(default_factory=list, description="e.g. delete by a date")

    @field_validator("target")
    @classmethod
    def _only_notify(cls, target: str | None, info: ValidationInfo) -> str | None:
        action = info.data.get("action")
        if target is not None and action is not None and action != "notify":
            raise PydanticCustomError("policy", "{detail}", {"detail": "only a notify duty has a target"})
        return target

    @field_validator("constraints")
    @classmethod
    def _no_privacy_budget(cls, constraints: list[ConstraintNode]) -> list[ConstraintNode]:
        from marketplace.policy.privacy import refuse_privacy_operands

        return refuse_privacy_operands(constraints, "a duty")


class Permission(_Model):
    """Allows ``action`` when all ``constraints`` hold; whoever uses it takes on the ``duties``."""

    action: Action = Field(description="use covers every access mode")
    constraints: Constraints = Field(default_factory=list, description="all must hold; empty = always")
    duties: list[Duty] = Field(default_factory=list, max_length=MAX_CONSTRAINTS)

    @field_validator("constraints")
    @classmethod
    def _privacy_in_place(
        cls, constraints: list[ConstraintNode], info: ValidationInfo
    ) -> list[ConstraintNode]:
        """dpEpsilon / dpDelta only where they cap federated learning; δ made explicit."""
        if "action" not in info.data:  # the action itself was refused
            return constraints
        from marketplace.policy.privacy import place_privacy_operands

        return place_privacy_operands(info.data["action"], constraints)


class Prohibition(_Model):
    """Forbids ``action`` when all ``constraints`` hold (empty = always); beats any permission."""

    action: Action
    constraints: Constraints = Field(default_factory=list)

    @field_validator("constraints")
    @classmethod
    def _no_privacy_budget(cls, constraints: list[ConstraintNode]) -> list[ConstraintNode]:
        from marketplace.policy.privacy import refuse_privacy_operands

        return refuse_privacy_operands(constraints, "a prohibition")


# template parameters -------------------------------------------------------------------

Purposes = Annotated[
    Annotated[list[Text], Field(min_length=1, max_length=MAX_LIST)] | None,
    Field(description="only for these purposes"),
]


class ProvideAccessParams(_Model):
    purposes: Purposes = None


class ProhibitAccessParams(_Model):
    pass


class NTimesUsageParams(_Model):
    count: StrictInt = Field(ge=1, description="how many uses in all")
    purposes: Purposes = None


class DurationUsageParams(_Model):
    duration: IsoDuration = Field(description="how long after the agreement, e.g. P30D")
    purposes: Purposes = None


class UsageDuringIntervalParams(_Model):
    start: Timestamp
    end: Timestamp
    purposes: Purposes = None

    @model_validator(mode="after")
    def _ordered(self) -> UsageDuringIntervalParams:
        if parse_timestamp(self.end) <= parse_timestamp(self.start):
            _fail(("end",), "the end must come after the start", self.end)
        return self


class UsageUntilDeletionParams(_Model):
    until: Timestamp = Field(description="use ends and deletion is due at this instant")
    purposes: Purposes = None


class UsageLoggingParams(_Model):
    purposes: Purposes = None


class UsageNotificationParams(_Model):
    target: Url | None = Field(default=None, description="endpoint to notify (default: the provider's)")
    purposes: Purposes = None


class ConnectorRestrictedUsageParams(_Model):
    participants: list[Address] = Field(min_length=1, max_length=MAX_LIST)
    purposes: Purposes = None


TEMPLATE_PARAMS: dict[str, type[_Model]] = {
    "provide-access": ProvideAccessParams,
    "prohibit-access": ProhibitAccessParams,
    "n-times-usage": NTimesUsageParams,
    "duration-usage": DurationUsageParams,
    "usage-during-interval": UsageDuringIntervalParams,
    "usage-until-deletion": UsageUntilDeletionParams,
    "usage-logging": UsageLoggingParams,
    "usage-notification": UsageNotificationParams,
    "connector-restricted-usage": ConnectorRestrictedUsageParams,
}


# the policy ----------------------------------------------------------------------------


class Policy(_Model):
    """A usage policy: a ``template`` with ``params``, or explicit ``permissions``/``prohibitions``.

    Access is allowed when some permission covering the access mode has all its
    constraints met and no prohibition covering it applies.
    """

    template: TemplateName | None = Field(default=None, description="a named usage-control pattern")
    params: dict[str, Any] | None = Field(
        default=None, validate_default=True, description="the template's parameters"
    )
    permissions: list[Permission] = Field(default_factory=list, max_length=MAX_RULES)
    prohibitions: list[Prohibition] = Field(default_factory=list, max_length=MAX_RULES)

    @field_validator("params")
    @classmethod
    def _params_fit(cls, params: dict[str, Any] | None, info: ValidationInfo) -> dict[str, Any] | None:
        if "template" not in info.data:  # the template name itself was refused
            return params
        template = info.data["template"]
        if template is None:
            if params is not None:
                _fail((), "params belong to a template; this policy names none", params)
            return None
        checked = TEMPLATE_PARAMS[template].model_validate(params or {})
        return checked.model_dump(mode="json", exclude_none=True)

    @model_validator(mode="after")
    def _one_form(self) -> Policy:
        if self.template is not None:
            for key in ("permissions", "prohibitions"):
                if getattr(self, key):
                    _fail((key,), "give either a template or explicit rules, not both", getattr(self, key))
        elif not self.permissions and not self.prohibitions:
            _fail(
                ("permissions",),
                "a policy needs at least one permission or prohibition "
                "(template: prohibit-access denies everyone)",
                [],
            )
        return self

    @property
    def is_template(self) -> bool:
        return self.template is not None

    def template_params(self) -> BaseModel:
        """The typed parameters of a template policy."""
        if self.template is None:
            raise ValueError("not a template policy")
        return TEMPLATE_PARAMS[self.template].model_validate(self.params or {})

    def to_data(self) -> dict[str, Any]:
        """The policy as JSON-ready data, as it would be written (defaults left out)."""
        return self.model_dump(mode="json", exclude_defaults=True)


for _model in (Constraint, AndGroup, OrGroup, XoneGroup, Duty, Permission, Prohibition, Policy):
    _model.model_rebuild()


# reading policies ----------------------------------------------------------------------


def parse_policy(data: Any, *, prefix: str = "") -> Policy:
    """Validate a policy given as data (a dict) or JSON text; bad input raises
    :class:`~kernel.errors.InvalidInput` whose errors carry the field paths."""
    return validate(Policy, data, prefix=prefix, what="policy")


def load_policy(text: str, *, source: str = "policy") -> Policy:
    """Read a policy written in YAML (or JSON, which YAML reads too); errors name the line."""
    from kernel.documents import parse_located

    return parse_located(text, source, "policy").validate(Policy, "policy")


def utc_now() -> datetime:
    return datetime.now(UTC)


# the published JSON Schema -------------------------------------------------------------

SCHEMA_ID = "https://agora.dev/schemas/policy.schema.json"
SCHEMA_PATH = Path(__file__).with_name("policy.schema.json")


def policy_json_schema() -> dict[str, Any]:
    """The JSON Schema (2020-12) of a policy, for editors and other implementations.

    Generated from the models, plus what they check in code and a schema can say: each
    template's ``params``, and template *or* rules. What a schema cannot say (operators that
    fit an operand, address checksums) only validation here enforces. The committed
    ``policy.schema.json`` must equal this; regenerate it with
    ``python -m marketplace.policy.language``.
    """
    schema = Policy.model_json_schema()
    defs: dict[str, Any] = schema.setdefault("$defs", {})
    branches: list[dict[str, Any]] = []
    for name, model in TEMPLATE_PARAMS.items():
        params = model.model_json_schema(ref_template="#/$defs/{model}")
        defs.update(params.pop("$defs", {}))
        defs[model.__name__] = params
        branches.append(
            {
                "if": {"properties": {"template": {"const": name}}, "required": ["template"]},
                "then": {
                    "properties": {"params": {"$ref": f"#/$defs/{model.__name__}"}},
                    **({"required": ["params"]} if params.get("required") else {}),
                },
            }
        )
    rules = ("permissions", "prohibitions")
    branches.append(
        {
            "if": {"properties": {"template": {"type": "string"}}, "required": ["template"]},
            "then": {"not": {"anyOf": [{"required": [key]} for key in rules]}},
            "else": {
                "not": {"required": ["params"]},
                "anyOf": [{"required": [key], "properties": {key: {"minItems": 1}}} for key in rules],
            },
        }
    )
    return {
        "$schema": "https://json-schema.org/draft/2020-12/schema",
        "$id": SCHEMA_ID,
        **schema,
        "title": "Agora usage policy",
        "allOf": branches,
        "$defs": dict(sorted(defs.items())),
    }


if __name__ == "__main__":
    import json

    SCHEMA_PATH.write_text(json.dumps(policy_json_schema(), indent=2) + "\n")
    print(f"wrote {SCHEMA_PATH}")
