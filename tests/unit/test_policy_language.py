"""The policy language: parsing, canonical values, validation paths, the JSON Schema, sentences."""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from typing import Any

import jsonschema
import pytest

from kernel.errors import InvalidInput
from marketplace.policy import (
    AndGroup,
    Constraint,
    Duration,
    OrGroup,
    Permission,
    Policy,
    XoneGroup,
    describe,
    load_policy,
    parse_policy,
    policy_json_schema,
)
from marketplace.policy.explain import constraint_words, duration_words, elapsed_words
from marketplace.policy.language import SCHEMA_PATH, TEMPLATE_NAMES, TEMPLATE_PARAMS, parse_address
from marketplace.policy.templates import TEMPLATES

ADDR = "0x52908400098527886E0F7030069857D2E4169EE7"  # an EIP-55 test vector
ADDR2 = "0x5aAeb6053F3E94C9b9A09f33669435E7Ef1BeAed"  # another EIP-55 test vector

EXAMPLE = """
permissions:
  - action: use
    constraints:
      - {leftOperand: purpose, operator: isAnyOf, rightOperand: [predictive-maintenance, research]}
      - {leftOperand: participant, operator: eq, rightOperand: "0x52908400098527886e0f7030069857d2e4169ee7"}
      - or:
          - {leftOperand: region, operator: eq, rightOperand: EU}
          - {leftOperand: participantGroup, operator: isAnyOf, rightOperand: [partners]}
    duties:
      - {action: log}
      - {action: notify, target: "https://provider.example/usage"}
      - action: delete
        constraints: [{leftOperand: dateTime, operator: lteq, rightOperand: 2027-01-01T00:00:00Z}]
prohibitions:
  - action: download
    constraints: []
"""


def rule(*constraints: dict[str, Any], action: str = "use") -> dict[str, Any]:
    return {"permissions": [{"action": action, "constraints": list(constraints)}]}


def atom(left: str, operator: str, right: Any) -> dict[str, Any]:
    return {"leftOperand": left, "operator": operator, "rightOperand": right}


def errors_of(data: Any) -> list[tuple[str, str]]:
    with pytest.raises(InvalidInput) as info:
        parse_policy(data)
    return [(e.path, e.message) for e in info.value.errors]


# parsing and canonical values ------------------------------------------------------------


def test_the_documented_example_parses_into_rules() -> None:
    policy = load_policy(EXAMPLE)
    permission = policy.permissions[0]
    assert permission.action == "use"
    purpose, participant, group = permission.constraints
    assert isinstance(purpose, Constraint)
    assert purpose.rightOperand == ["predictive-maintenance", "research"]
    assert isinstance(participant, Constraint)
    assert participant.rightOperand == ADDR  # lower-case input, checksummed form stored
    assert isinstance(group, OrGroup)
    assert [m.leftOperand for m in group.members if isinstance(m, Constraint)] == [
        "region",
        "participantGroup",
    ]
    assert [d.action for d in permission.duties] == ["log", "notify", "delete"]
    assert permission.duties[1].target == "https://provider.example/usage"
    deadline = permission.duties[2].constraints[0]
    assert isinstance(deadline, Constraint) and deadline.rightOperand == "2027-01-01T00:00:00Z"
    assert [(p.action, p.constraints) for p in policy.prohibitions] == [("download", [])]
    assert not policy.is_template


def test_a_prohibition_may_omit_constraints_as_in_the_manifest() -> None:
    policy = parse_policy({"prohibitions": [{"action": "download"}]})
    assert policy.prohibitions[0].constraints == []


def test_logical_groups_nest_and_keep_their_keys_when_written_back() -> None:
    data = rule(
        {
            "xone": [
                {"and": [atom("region", "eq", "EU"), atom("purpose", "eq", "research")]},
                {"or": [atom("count", "lt", 3), atom("accessMode", "eq", "compute")]},
            ]
        }
    )
    policy = parse_policy(data)
    top = policy.permissions[0].constraints[0]
    assert isinstance(top, XoneGroup)
    assert isinstance(top.members[0], AndGroup) and isinstance(top.members[1], OrGroup)
    assert policy.to_data() == data
    assert parse_policy(json.dumps(data)) == policy  # JSON text takes the same path


def test_equivalent_spellings_are_stored_alike() -> None:
    a = parse_policy(
        rule(
            atom("dateTime", "lt", "2027-01-01T00:00Z"),
            atom("elapsedTime", "lteq", "p30d"),
            atom("participant", "isAnyOf", [ADDR.lower(), ADDR, ADDR.upper().replace("0X", "0x")]),
        )
    )
    b = parse_policy(
        rule(
            atom("dateTime", "lt", "2027-01-01T00:00:00+00:00"),
            atom("elapsedTime", "lteq", "P30D"),
            atom("participant", "isAnyOf", [ADDR]),
        )
    )
    assert a == b
    assert a.permissions[0].constraints[0].rightOperand == "2027-01-01T00:00:00Z"  # type: ignore[union-attr]


def test_unquoted_yaml_timestamps_read_like_quoted_ones() -> None:
    def right_operand(value: str) -> object:
        policy = load_policy(
            "permissions: [{action: use, constraints: "
            f"[{{leftOperand: dateTime, operator: lt, rightOperand: {value}}}]}}]"
        )
        constraint = policy.permissions[0].constraints[0]
        assert isinstance(constraint, Constraint)
        return constraint.rightOperand

    assert right_operand("2027-01-01T10:00:00+02:00") == "2027-01-01T10:00:00+02:00"
    assert right_operand("'2027-01-01T10:00:00+02:00'") == "2027-01-01T10:00:00+02:00"
    assert right_operand("2027-01-01T08:00:00Z") == "2027-01-01T08:00:00Z"
    with pytest.raises(InvalidInput, match="no time zone"):
        right_operand("2027-01-01 08:00:00")  # YAML reads it as a naive datetime


def test_policies_can_be_built_from_model_instances() -> None:
    purpose = Constraint(leftOperand="purpose", operator="eq", rightOperand="research")
    policy = Policy(permissions=[Permission(action="compute", constraints=[purpose])])
    assert policy.to_data() == rule(atom("purpose", "eq", "research"), action="compute")


def test_template_params_are_stored_checked_and_canonical() -> None:
    policy = parse_policy(
        {"template": "connector-restricted-usage", "params": {"participants": [ADDR.lower()]}}
    )
    assert policy.is_template
    assert policy.params == {"participants": [ADDR]}
    assert parse_policy({"template": "provide-access"}).params == {}
    assert parse_policy({"template": "duration-usage", "params": {"duration": "pt12h"}}).params == {
        "duration": "PT12H"
    }


def test_the_package_exports_its_public_names_lazily() -> None:
    import marketplace.policy as package

    for name in package.__all__:
        assert getattr(package, name) is not None, name
    with pytest.raises(AttributeError):
        _ = package.no_such_name


def test_every_template_name_has_params_and_a_builder() -> None:
    assert set(TEMPLATE_NAMES) == set(TEMPLATE_PARAMS) == set(TEMPLATES)


# validation: exact field paths ------------------------------------------------------------

BAD: list[tuple[str, Any, str, str]] = [
    ("unknown top-level key", {"permisions": []}, "permisions", "Extra inputs"),
    (
        "unknown rule key",
        {"permissions": [{"action": "use", "contraints": []}]},
        "permissions.0.contraints",
        "Extra",
    ),
    ("unknown action", {"permissions": [{"action": "read"}]}, "permissions.0.action", "'use'"),
    (
        "unknown left operand",
        rule(atom("colour", "eq", "red")),
        "permissions.0.constraints.0.leftOperand",
        "'purpose'",
    ),
    ("unknown operator", rule(atom("purpose", "like", "x")), "permissions.0.constraints.0.operator", "'eq'"),
    (
        "operator unfit for the operand",
        rule(atom("purpose", "eq", "a"), atom("purpose", "lt", "b")),
        "permissions.0.constraints.1.operator",
        "lt does not fit purpose",
    ),
    (
        "isAllOf on a scalar",
        rule(atom("region", "isAllOf", ["EU"])),
        "permissions.0.constraints.0.operator",
        "isAllOf",
    ),
    (
        "eq on a timestamp",
        rule(atom("dateTime", "eq", "2027-01-01T00:00:00Z")),
        "permissions.0.constraints.0.operator",
        "eq",
    ),
    (
        "list operator with a scalar",
        rule(atom("purpose", "isAnyOf", "research")),
        "permissions.0.constraints.0.rightOperand",
        "needs a non-empty list",
    ),
    (
        "empty list",
        rule(atom("purpose", "isNoneOf", [])),
        "permissions.0.constraints.0.rightOperand",
        "non-empty",
    ),
    (
        "scalar operator with a list",
        rule(atom("purpose", "eq", ["a", "b"])),
        "permissions.0.constraints.0.rightOperand",
        "use isAnyOf",
    ),
    (
        "malformed address in a list",
        rule(atom("participant", "isAnyOf", [ADDR, "0x1234"])),
        "permissions.0.constraints.0.rightOperand.1",
        "not an address",
    ),
    (
        "address with a wrong checksum",
        rule(atom("participant", "eq", ADDR.replace("E", "e", 1))),
        "permissions.0.constraints.0.rightOperand",
        f"did you mean {ADDR}",
    ),
    (
        "timestamp without a zone",
        rule(atom("dateTime", "lt", "2027-01-01T00:00:00")),
        "permissions.0.constraints.0.rightOperand",
        "no time zone",
    ),
    (
        "not a timestamp",
        rule(atom("dateTime", "gt", "next tuesday")),
        "permissions.0.constraints.0.rightOperand",
        "ISO 8601",
    ),
    (
        "a bare date",
        rule(atom("dateTime", "gt", "2027-01-01")),
        "permissions.0.constraints.0.rightOperand",
        "no time zone",
    ),
    (
        "bad duration",
        rule(atom("elapsedTime", "lt", "30 days")),
        "permissions.0.constraints.0.rightOperand",
        "P30D",
    ),
    (
        "empty duration",
        rule(atom("elapsedTime", "lt", "PT")),
        "permissions.0.constraints.0.rightOperand",
        "duration",
    ),
    (
        "count as text",
        rule(atom("count", "lt", "10")),
        "permissions.0.constraints.0.rightOperand",
        "whole number",
    ),
    (
        "negative count",
        rule(atom("count", "lt", -1)),
        "permissions.0.constraints.0.rightOperand",
        "whole number",
    ),
    (
        "count as a boolean",
        rule(atom("count", "lt", True)),
        "permissions.0.constraints.0.rightOperand",
        "whole number",
    ),
    (
        "YAML's no",
        rule(atom("region", "eq", False)),
        "permissions.0.constraints.0.rightOperand",
        "quote yes/no",
    ),
    (
        "unknown access mode",
        rule(atom("accessMode", "isAnyOf", ["compute", "stream"])),
        "permissions.0.constraints.0.rightOperand.1",
        "not an access mode",
    ),
    (
        "missing right operand",
        rule({"leftOperand": "count", "operator": "lt"}),
        "permissions.0.constraints.0.rightOperand",
        "required",
    ),
    ("constraint not an object", rule("purpose eq x"), "permissions.0.constraints.0", "dictionary"),  # type: ignore[arg-type]
    (
        "nested group member",
        rule({"or": [atom("region", "eq", "EU"), {"and": [atom("count", "isAnyOf", [1])]}]}),
        "permissions.0.constraints.0.or.1.and.0.operator",
        "isAnyOf does not fit count",
    ),
    ("empty group", rule({"or": []}), "permissions.0.constraints.0.or", "at least 1"),
    (
        "two groups in one",
        rule({"and": [atom("region", "eq", "EU")], "or": []}),
        "permissions.0.constraints.0.or",
        "Extra",
    ),
    (
        "atomic keys in a group",
        rule({"or": [atom("region", "eq", "EU")], "leftOperand": "purpose"}),
        "permissions.0.constraints.0.leftOperand",
        "Extra",
    ),
    (
        "unknown duty",
        {"permissions": [{"action": "use", "duties": [{"action": "pay"}]}]},
        "permissions.0.duties.0.action",
        "'log'",
    ),
    (
        "target on a log duty",
        {"permissions": [{"action": "use", "duties": [{"action": "log", "target": "https://x.example"}]}]},
        "permissions.0.duties.0.target",
        "only a notify duty",
    ),
    (
        "notify target not http",
        {"permissions": [{"action": "use", "duties": [{"action": "notify", "target": "ftp://x.example"}]}]},
        "permissions.0.duties.0.target",
        "http(s) URL",
    ),
    (
        "duties on a prohibition",
        {"prohibitions": [{"action": "use", "duties": []}]},
        "prohibitions.0.duties",
        "Extra",
    ),
    ("unknown template", {"template": "n-time-usage"}, "template", "'n-times-usage'"),
    ("missing template param", {"template": "n-times-usage"}, "params.count", "required"),
    (
        "template param as text",
        {"template": "n-times-usage", "params": {"count": "10"}},
        "params.count",
        "integer",
    ),
    (
        "zero uses",
        {"template": "n-times-usage", "params": {"count": 0}},
        "params.count",
        "greater than or equal to 1",
    ),
    (
        "unknown template param",
        {"template": "usage-logging", "params": {"level": 3}},
        "params.level",
        "Extra",
    ),
    (
        "bad participant in params",
        {"template": "connector-restricted-usage", "params": {"participants": [ADDR, "nope"]}},
        "params.participants.1",
        "not an address",
    ),
    (
        "no participants",
        {"template": "connector-restricted-usage", "params": {"participants": []}},
        "params.participants",
        "at least 1",
    ),
    (
        "bad duration param",
        {"template": "duration-usage", "params": {"duration": "a month"}},
        "params.duration",
        "ISO 8601",
    ),
    (
        "interval backwards",
        {
            "template": "usage-during-interval",
            "params": {"start": "2027-01-01T00:00:00Z", "end": "2026-01-01T00:00:00Z"},
        },
        "params.end",
        "after the start",
    ),
    (
        "params without a template",
        {"params": {}, "permissions": [{"action": "use"}]},
        "params",
        "belong to a template",
    ),
    (
        "template and rules",
        {"template": "provide-access", "permissions": [{"action": "use"}]},
        "permissions",
        "not both",
    ),
    ("no rules at all", {}, "permissions", "at least one permission or prohibition"),
]


@pytest.mark.parametrize(("data", "path", "fragment"), [c[1:] for c in BAD], ids=[c[0] for c in BAD])
def test_invalid_policies_are_refused_with_the_field_path(data: Any, path: str, fragment: str) -> None:
    errors = errors_of(data)
    assert path in [p for p, _ in errors], errors
    message = dict(errors)[path]
    assert fragment in message, message


def test_the_error_is_an_invalid_input_with_a_readable_detail() -> None:
    with pytest.raises(InvalidInput) as info:
        parse_policy(rule(atom("purpose", "lt", "b")), prefix="offerings.0.policy")
    assert info.value.status == 400
    assert info.value.errors[0].path == "offerings.0.policy.permissions.0.constraints.0.operator"
    assert info.value.detail.startswith(
        "invalid policy: offerings.0.policy.permissions.0.constraints.0.operator"
    )


def test_one_mistake_gives_one_error_not_a_cascade() -> None:
    assert len(errors_of(rule(atom("colour", "eq", {"weird": 1.5})))) == 1
    assert len(errors_of(rule(atom("purpose", "lt", 3.5)))) == 1


def test_yaml_syntax_errors_name_the_line() -> None:
    with pytest.raises(InvalidInput) as info:
        load_policy("permissions:\n  - action: use\n   constraints: [", source="p.yaml")
    assert info.value.errors[0].path == "(root)"
    assert "line 3" in info.value.detail and "p.yaml" in info.value.detail


def test_addresses() -> None:
    assert parse_address(ADDR.lower()) == ADDR
    assert parse_address(ADDR2.lower()) == ADDR2
    assert parse_address(ADDR2.upper().replace("0X", "0x")) == ADDR2
    for bad in (
        "0x123",
        ADDR + "0",
        "52908400098527886E0F7030069857D2E4169EE7",
        42,
        ADDR.replace("E", "e", 1),
    ):
        with pytest.raises(ValueError):
            parse_address(bad)


# durations ---------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "years", "months", "days", "seconds"),
    [
        ("P30D", 0, 0, 30, 0),
        ("PT12H", 0, 0, 0, 43200),
        ("P2W", 0, 0, 14, 0),
        ("P1Y2M3DT4H5M6.5S", 1, 2, 3, Decimal("14706.5")),
        ("pt90m", 0, 0, 0, 5400),
    ],
)
def test_durations_parse(text: str, years: int, months: int, days: int, seconds: Decimal) -> None:
    d = Duration.parse(text)
    assert (d.years, d.months, d.days, d.seconds) == (years, months, days, seconds)
    assert d.text == text.upper()


@pytest.mark.parametrize("text", ["P", "PT", "30D", "P1DT", "P-1D", "P1.5D", "", "P1H"])
def test_malformed_durations_are_refused(text: str) -> None:
    with pytest.raises(ValueError):
        Duration.parse(text)


def test_calendar_months_clamp_to_the_month_end() -> None:
    jan31 = datetime(2027, 1, 31, 12, tzinfo=UTC)
    assert Duration.parse("P1M").after(jan31) == datetime(2027, 2, 28, 12, tzinfo=UTC)
    assert Duration.parse("P1M").after(jan31.replace(year=2028)) == datetime(2028, 2, 29, 12, tzinfo=UTC)
    assert Duration.parse("P1Y").after(datetime(2028, 2, 29, tzinfo=UTC)) == datetime(2029, 2, 28, tzinfo=UTC)
    assert Duration.parse("P11M").after(datetime(2027, 3, 1, tzinfo=UTC)) == datetime(2028, 2, 1, tzinfo=UTC)
    assert Duration.parse("P1DT1H").after(jan31) == jan31 + timedelta(days=1, hours=1)


def test_durations_and_spans_in_words() -> None:
    assert duration_words("P30D") == "30 days"
    assert duration_words("P1Y2M") == "1 year and 2 months"
    assert duration_words("PT1H30M") == "1 hour and 30 minutes"
    assert duration_words("PT0.5S") == "0.5 seconds"
    assert elapsed_words(timedelta(days=3, hours=4, minutes=5, seconds=59)) == "3 days, 4 hours and 5 minutes"
    assert elapsed_words(timedelta(seconds=42)) == "42 seconds"
    assert elapsed_words(timedelta(hours=-2)) == "-2 hours"


# the published JSON Schema -----------------------------------------------------------------


def test_the_committed_schema_is_the_generated_one() -> None:
    committed = json.loads(SCHEMA_PATH.read_text())
    assert committed == policy_json_schema(), "regenerate: .venv/bin/python -m marketplace.policy.language"


VALID = [
    {"template": "n-times-usage", "params": {"count": 10}},
    {"template": "provide-access"},
    {"template": "connector-restricted-usage", "params": {"participants": [ADDR], "purposes": ["research"]}},
    json.loads(json.dumps(load_policy(EXAMPLE).to_data())),
]
INVALID_SHAPES = [
    {"template": "n-times-usage"},  # count missing
    {"template": "n-times-usage", "params": {"count": "ten"}},
    {"template": "nine-times-usage", "params": {"count": 9}},
    {"template": "provide-access", "permissions": [{"action": "use"}]},
    {"permissions": [{"action": "use", "contraints": []}]},
    {"permissions": []},
    {"params": {"count": 1}, "prohibitions": [{"action": "use"}]},
    {
        "permissions": [
            {"action": "use", "constraints": [{"leftOperand": "mood", "operator": "eq", "rightOperand": "x"}]}
        ]
    },
]


@pytest.mark.parametrize("data", VALID)
def test_the_schema_accepts_what_the_models_accept(data: dict[str, Any]) -> None:
    parse_policy(data)
    jsonschema.Draft202012Validator(policy_json_schema()).validate(data)


@pytest.mark.parametrize("data", INVALID_SHAPES)
def test_the_schema_refuses_what_the_models_refuse(data: dict[str, Any]) -> None:
    with pytest.raises(InvalidInput):
        parse_policy(data)
    assert not jsonschema.Draft202012Validator(policy_json_schema()).is_valid(data)


def test_the_schema_itself_is_valid_json_schema() -> None:
    jsonschema.Draft202012Validator.check_schema(policy_json_schema())


# plain sentences ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("data", "sentences"),
    [
        (
            rule(atom("purpose", "isAnyOf", ["predictive-maintenance", "research"])),
            ["Anyone may use it for predictive-maintenance or research."],
        ),
        (rule(atom("participant", "eq", ADDR)), [f"Only {ADDR} may use it."]),
        (
            rule(
                atom("participant", "isAnyOf", [ADDR, ADDR2]),
                atom("purpose", "eq", "research"),
                action="compute",
            ),
            [f"Only {ADDR} or {ADDR2} may run computations on it for research."],
        ),
        (rule(atom("participantGroup", "isAnyOf", ["partners"])), ["Only members of partners may use it."]),
        (rule(atom("participantName", "eq", "ACME")), ["Only ACME may use it."]),
        (
            rule(atom("purpose", "isNoneOf", ["marketing", "resale"])),
            ["Anyone may use it for any purpose except marketing or resale."],
        ),
        (rule(atom("count", "lt", 10)), ["Anyone may use it.", "It may be used at most 10 times."]),
        (
            rule(atom("count", "lteq", 1), action="download"),
            ["Anyone may download it.", "It may be downloaded at most 2 times."],
        ),
        (
            rule(
                atom("dateTime", "gteq", "2026-01-01T00:00:00Z"),
                atom("dateTime", "lt", "2027-01-01T00:00:00Z"),
            ),
            [
                "Anyone may use it.",
                "It may be used from 2026-01-01T00:00:00Z and before 2027-01-01T00:00:00Z.",
            ],
        ),
        (
            rule(atom("dateTime", "lteq", "2027-01-01T00:00:00Z")),
            ["Anyone may use it.", "It may be used until 2027-01-01T00:00:00Z."],
        ),
        (
            rule(atom("elapsedTime", "lteq", "P30D")),
            ["Anyone may use it.", "It may be used for 30 days after the agreement."],
        ),
        (
            rule(atom("region", "isAnyOf", ["EU", "CH"])),
            ["Anyone may use it.", "It may be used only in region EU or CH."],
        ),
        (
            rule(atom("accessMode", "eq", "compute")),
            ["Anyone may use it.", "It may be used only for compute access."],
        ),
        (
            rule({"or": [atom("region", "eq", "EU"), atom("participantGroup", "eq", "partners")]}),
            ["Anyone may use it.", "It may be used only if region is EU or groups include partners."],
        ),
        (
            {
                "permissions": [{"action": "use", "duties": [{"action": "log"}]}],
                "prohibitions": [{"action": "download"}],
            },
            ["Anyone may use it.", "Each use is logged.", "Downloading it is prohibited."],
        ),
        (
            {
                "permissions": [
                    {"action": "download", "duties": [{"action": "notify", "target": "https://p.example/n"}]}
                ]
            },
            ["Anyone may download it.", "Each download is reported to https://p.example/n."],
        ),
        (
            {
                "permissions": [{"action": "use"}],
                "prohibitions": [{"action": "compute", "constraints": [atom("purpose", "eq", "marketing")]}],
            },
            ["Anyone may use it.", "Running computations on it is prohibited when purpose is marketing."],
        ),
        ({"prohibitions": [{"action": "download"}]}, ["Nobody may use it."]),
        ({"permissions": [{"action": "use"}], "prohibitions": [{"action": "use"}]}, ["Nobody may use it."]),
    ],
)
def test_describe_speaks_plainly(data: dict[str, Any], sentences: list[str]) -> None:
    assert describe(parse_policy(data)) == sentences


def test_describe_renders_the_documented_example() -> None:
    assert describe(load_policy(EXAMPLE)) == [
        f"Only {ADDR} may use it for predictive-maintenance or research.",
        "It may be used only if region is EU or groups include one of partners.",
        "Each use is logged.",
        "Each use is reported to https://provider.example/usage.",
        "It must be deleted by 2027-01-01T00:00:00Z.",
        "Downloading it is prohibited.",
    ]


def test_constraint_words() -> None:
    assert constraint_words(Constraint(leftOperand="count", operator="lt", rightOperand=10)) == (
        "the use count is less than 10"
    )
    xone = parse_policy(rule({"xone": [atom("region", "eq", "EU"), {"and": [atom("purpose", "eq", "a")]}]}))
    assert (
        constraint_words(xone.permissions[0].constraints[0]) == "exactly one of: region is EU; (purpose is a)"
    )
