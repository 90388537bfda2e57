"""What a provider declares about a dataset's quality: its schema, its expectation suite and
what a failing or untrainable version does. Shared by the offerings API and the manifest.

Nothing here imports pandas or Great Expectations: these shapes are read on every request.
"""

from __future__ import annotations

import re
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from quality.expectations import check_type

ColumnType = Literal["integer", "float", "string", "boolean", "category", "datetime"]
ColumnRole = Literal["feature", "label", "id", "ignored"]
ArrayRole = Literal["feature", "label", "ignored"]
OnFailure = Literal["reject", "publish-flagged"]
OnUntrainable = Literal["reject", "register-flagged"]

# a version's quality status (OfferingVersion.quality_status)
QUALITY_NONE = "none"  # no suite declared
QUALITY_VALIDATING = "validating"
QUALITY_PASSED = "passed"
QUALITY_FAILED = "failed"
QUALITY_ERROR = "error"  # the validation itself could not run (the reason is kept)
QUALITY_STATUSES = (QUALITY_NONE, QUALITY_VALIDATING, QUALITY_PASSED, QUALITY_FAILED, QUALITY_ERROR)

MAX_COLUMNS = 2_000
MAX_EXPECTATIONS = 500
_NAME = r"^[^\x00-\x1f]{1,200}$"
_EXPECTATION = re.compile(r"^expect_[a-z0-9_]{1,120}$")
CONDITION_KWARGS = ("row_condition", "condition_parser")  # GX's filters on the rows an expectation sees


class ColumnSpec(BaseModel):
    """One column of a table (CSV, Parquet)."""

    model_config = ConfigDict(extra="forbid", str_strip_whitespace=True)

    name: str = Field(pattern=_NAME)
    type: ColumnType
    role: ColumnRole = "feature"
    unit: str = Field(default="", max_length=64)
    description: str = Field(default="", max_length=2_000)
    categories: list[str] | None = Field(
        default=None,
        max_length=1_000,
        description="category columns: the known values, in the order ordinal encoding numbers them",
    )
    encoding: Literal["onehot", "ordinal"] | None = Field(
        default=None, description="how a category feature becomes numbers (default: onehot)"
    )

    @model_validator(mode="after")
    def _category_only(self) -> ColumnSpec:
        if (self.categories is not None or self.encoding is not None) and self.type not in (
            "category",
            "string",
        ):
            raise ValueError(f"column {self.name}: categories and encoding apply to category columns")
        return self


class ArraySpec(BaseModel):
    """One array of an ``.npz``."""

    model_config = ConfigDict(extra="forbid", str_strip_whitespace=True)

    name: str = Field(pattern=r"^[A-Za-z0-9_.-]{1,100}$")
    dtype: str = Field(pattern=r"^[a-z]+[0-9]*$", max_length=20)
    shape: list[int | None] = Field(
        default_factory=list, max_length=32, description="None: any length (the first axis: rows)"
    )
    role: ArrayRole = "feature"
    unit: str = Field(default="", max_length=64)
    description: str = Field(default="", max_length=2_000)


class DatasetSchema(BaseModel):
    """A dataset's columns (tables) or arrays (``.npz``), declared or inferred."""

    model_config = ConfigDict(extra="forbid")

    columns: list[ColumnSpec] = Field(default_factory=list, max_length=MAX_COLUMNS)
    arrays: list[ArraySpec] = Field(default_factory=list, max_length=64)

    @model_validator(mode="after")
    def _one_kind(self) -> DatasetSchema:
        if self.columns and self.arrays:
            raise ValueError("a schema declares columns (a table) or arrays (an .npz), not both")
        if not self.columns and not self.arrays:
            raise ValueError("a schema declares at least one column or array")
        names = [c.name for c in self.columns] + [a.name for a in self.arrays]
        repeated = sorted({n for n in names if names.count(n) > 1})
        if repeated:
            raise ValueError(f"names repeat: {', '.join(repeated)}")
        labels = [c.name for c in self.columns if c.role == "label"] + [
            a.name for a in self.arrays if a.role == "label"
        ]
        if len(labels) > 1:
            raise ValueError(f"one label at most (found {', '.join(labels)})")
        return self


class Expectation(BaseModel):
    """One Great Expectations expectation, as a GX 1.x suite file writes it."""

    model_config = ConfigDict(extra="ignore")

    type: str = Field(
        description="the expectation's snake-case name, e.g. expect_column_values_to_not_be_null"
    )
    kwargs: dict[str, Any] = Field(default_factory=dict)
    meta: dict[str, Any] = Field(default_factory=dict)

    @field_validator("type")
    @classmethod
    def _known_type(cls, value: str) -> str:
        if not _EXPECTATION.match(value):
            raise ValueError(f"not an expectation name (expect_…): {value!r}")
        return check_type(value)  # the committed list of GX's names: GX itself is not imported

    @field_validator("kwargs")
    @classmethod
    def _no_condition(cls, value: dict[str, Any]) -> dict[str, Any]:
        found = [k for k in CONDITION_KWARGS if k in value]
        if found:
            raise ValueError(
                f"{' and '.join(found)} cannot be declared: a condition on the rows can single out "
                "records (the max of one person's salary, counts that search for an id)"
            )
        return value


class ExpectationSuite(BaseModel):
    """A suite: a name and its expectations (the shape of a GX 1.x suite JSON file)."""

    model_config = ConfigDict(extra="ignore")

    name: str = Field(default="suite", min_length=1, max_length=200)
    expectations: list[Expectation] = Field(min_length=1, max_length=MAX_EXPECTATIONS)


class SuiteFile(BaseModel):
    """A suite kept in a GX suite JSON file beside the manifest (read by the client)."""

    model_config = ConfigDict(extra="forbid")

    suite: str = Field(min_length=1, max_length=4096, description="file, relative to the manifest")


class QualityFields(BaseModel):
    """The quality declarations an offering carries (dataset offerings)."""

    model_config = ConfigDict(extra="forbid", populate_by_name=True)

    dataset_schema: DatasetSchema | None = Field(
        default=None, alias="schema", description="columns or arrays; inferred at registration when absent"
    )
    expectations: ExpectationSuite | list[Expectation] | SuiteFile | None = Field(
        default=None,
        description="a Great Expectations suite: inline (a list, or name + expectations) or "
        "{suite: file} in a manifest",
    )
    on_failure: OnFailure = Field(
        default="reject",
        description="a version failing its suite: rejected (never offered) or published flagged",
    )
    on_untrainable: OnUntrainable = Field(
        default="reject",
        description="a compute or federate offering the node cannot build a training set from: "
        "refused, or registered with the reason shown",
    )

    def quality(self) -> dict[str, Any]:
        """These fields as the offering stores them (``Offering.quality_declared``)."""
        return {
            "schema": self.dataset_schema.model_dump(exclude_defaults=True) if self.dataset_schema else None,
            "expectations": suite_of(self.expectations),
            "on_failure": self.on_failure,
            "on_untrainable": self.on_untrainable,
        }


def suite_of(value: ExpectationSuite | list[Expectation] | SuiteFile | None) -> dict[str, Any] | None:
    """An inline suite as stored (``{"name", "expectations"}``); a file reference must have been
    read by the caller (the manifest client inlines it)."""
    if value is None:
        return None
    if isinstance(value, SuiteFile):
        raise ValueError(f"the suite file {value.suite} was not read: send the suite inline")
    suite = value if isinstance(value, ExpectationSuite) else ExpectationSuite(expectations=value)
    return suite.model_dump()


DEFAULT_QUALITY: dict[str, Any] = {
    "schema": None,
    "expectations": None,
    "on_failure": "reject",
    "on_untrainable": "reject",
}


def declared(stored: dict[str, Any] | None) -> dict[str, Any]:
    """An offering's stored quality declarations with the defaults filled in."""
    return {**DEFAULT_QUALITY, **(stored or {})}
