"""Publishing a job's or a federation's model as a version of a model offering, in one step.

The node that holds the released ONNX model — a training job's consumer (which fetched and
checked it; the model is the consumer's, so the job's provider may not publish it) or a
federation's coordinator — registers those bytes as
the next version of one of its model offerings (creating the offering when asked). The
version's anchor (kind ``model``) names the job's or federation's own ``onnx-model`` asset as
its parent, so ``agora verify`` on a download of the version walks the whole lineage: model
← job run ← dataset version ← … or model ← federation rounds ← federation.

A consumer's node did not notarize the job's lineage itself (the provider did). It holds the
provider's provenance document, checked against the chain when the model was fetched, and
:func:`imported_lineage` lends it to the provenance service as the parent's document.
"""

from __future__ import annotations

import re
from typing import TYPE_CHECKING, Any, Literal

import msgspec
from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator
from sqlmodel import Session

from contracts.models import Notarization
from kernel.errors import FieldError, Forbidden, InvalidInput, NotFound, ServiceUnavailable
from kernel.storage import ObjectStore, StagedObject
from marketplace.aliases import ALIAS_PATTERN, AliasService, check_name, find_offering
from marketplace.schemas import OfferingMetadata
from marketplace.services import OfferingService

if TYPE_CHECKING:
    from federation.coordinator import Coordinator
    from training_jobs.services import JobService

ONNX_MEDIA_TYPE = "application/onnx"
_NAME = re.compile(r"^[a-z0-9][a-z0-9._-]{0,99}$")


class PublishRequest(BaseModel):
    """What to publish (one job or one federation), an alias to point at the new version,
    and the metadata of the model offering to create when it does not exist yet."""

    model_config = ConfigDict(extra="forbid")

    job: str | None = Field(default=None, min_length=1, max_length=100)
    federation: str | None = Field(default=None, min_length=1, max_length=100)
    alias: str | None = Field(default=None, pattern=ALIAS_PATTERN)
    create: OfferingMetadata | None = Field(
        default=None, description="create the model offering with this metadata when it does not exist"
    )

    @field_validator("create", mode="before")
    @classmethod
    def _a_model(cls, value: Any) -> Any:
        """A created offering is a model unless it says otherwise (and is then refused)."""
        return {"kind": "model", **value} if isinstance(value, dict) else value

    @model_validator(mode="after")
    def _one_source(self) -> PublishRequest:
        if (self.job is None) == (self.federation is None):
            raise ValueError("give exactly one of job and federation")
        if self.create is not None and self.create.kind != "model":
            raise ValueError("create: a published model's offering is a model (kind: model)")
        return self

    @property
    def source_kind(self) -> Literal["job", "federation"]:
        return "job" if self.job is not None else "federation"


class PublishService:
    def __init__(
        self,
        offerings: OfferingService,
        aliases: AliasService,
        store: ObjectStore,
        *,
        jobs: JobService | None,
        coordinator: Coordinator | None,
    ) -> None:
        self.offerings = offerings
        self.aliases = aliases
        self.store = store
        self.jobs = jobs
        self.coordinator = coordinator

    def publish(self, key: str, request: PublishRequest, actor: str) -> dict[str, Any]:
        """Register the model as the next version of offering ``key`` (id or name); answers the
        offering, the new version, where it came from and the alias moved."""
        if request.alias is not None:
            check_name(request.alias, field="alias")  # before anything is written
        existing = self._existing(key)  # a dataset offering is refused before the job is looked at
        sha256, source = self._released(request)
        if existing is None and request.create is None:
            raise NotFound(f"no offering {key[:100]} (give create, or --create --title …, to create it)")
        with self._staged(sha256) as staged:
            if existing is None:
                assert request.create is not None
                out = self.offerings.register(
                    staged, self._metadata(key, request.create), actor, source=source
                )
            else:
                out = self.offerings.add_version(existing, staged, actor, source=source)
        moved = self.aliases.move(out.id, request.alias, out.version, actor) if request.alias else None
        return {
            "offering": msgspec.to_builtins(out),
            "version": out.version,
            "source": source,
            "alias": moved,
        }

    # Where the bytes come from -----------------------------------------------------------

    def _released(self, request: PublishRequest) -> tuple[str, dict[str, Any]]:
        """(sha256, source) of the released ONNX model; the source names its own asset id."""
        if request.job is not None:
            if self.jobs is None:
                raise ServiceUnavailable("training jobs are not enabled on this node")
            if self.jobs.get(request.job, refresh=False)["role"] == "provider":
                raise Forbidden(
                    f"job {request.job} trained a model for its consumer: only the consumer may publish it"
                )
            record, doc = self.jobs.result(request.job, "onnx")
            sha256 = str(record["sha256"])
            what = f"job {request.job}"
        else:
            assert request.federation is not None
            if self.coordinator is None:
                raise ServiceUnavailable("federations are not enabled on this node")
            sha256, _ = self.coordinator.artifact(request.federation, "onnx")
            doc = self.coordinator.provenance(request.federation, "onnx")
            what = f"federation {request.federation}"
        asset = doc.get("asset") or {}
        if asset.get("kind") != "onnx-model" or asset.get("sha256") != sha256 or not asset.get("id"):
            raise Forbidden(f"the provenance of {what}'s ONNX model does not name these bytes")
        if not self.store.exists(sha256):
            raise NotFound(f"the ONNX model of {what} is not in this node's store")
        source = {
            "kind": request.source_kind,
            request.source_kind: request.job or request.federation,
            "asset_id": str(asset["id"]),
        }
        return sha256, source

    def _staged(self, sha256: str) -> StagedObject:
        """The stored model's bytes as an upload the offering service takes (hashed again)."""
        staged = self.store.stage()
        try:
            for chunk in self.store.read(sha256):
                staged.write(chunk)
            staged.finish()
        except BaseException:
            staged.discard()
            raise
        if staged.sha256 != sha256:
            staged.discard()
            raise InvalidInput(f"the stored model {sha256} reads back as {staged.sha256}")
        return staged

    def _existing(self, key: str) -> str | None:
        with Session(self.offerings.engine) as session:
            try:
                offering = find_offering(session, self.offerings.provider, key)
            except NotFound:
                return None
        if offering.kind != "model":
            raise InvalidInput(
                f"offering {offering.id} is a {offering.kind}: models are published to model offerings",
                errors=[FieldError("offering", "not a model")],
            )
        return offering.id

    @staticmethod
    def _metadata(key: str, create: OfferingMetadata) -> OfferingMetadata:
        """The new offering's metadata: ONNX bytes; named after ``key`` unless a name is given."""
        changes: dict[str, Any] = {}
        if create.media_type == "application/octet-stream":
            changes["media_type"] = ONNX_MEDIA_TYPE
        if create.name is None:
            if not _NAME.fullmatch(key):
                raise InvalidInput(
                    f"{key[:100]!r} is not an offering name to create (lower-case, digits, . _ -)",
                    errors=[FieldError("offering", "not a name")],
                )
            changes["name"] = key
        return create.model_copy(update=changes)


def imported_lineage(session: Session, child: Notarization, parent_id: str) -> dict[str, Any] | None:
    """The provenance document of a parent this node did not notarize: a consumer's copy of
    the job's ONNX model lineage (the provider's, checked against the chain when fetched)."""
    source = (child.metadata_doc or {}).get("source") or {}
    if source.get("kind") != "job" or str(source.get("asset_id", "")).lower() != parent_id.lower():
        return None
    from training_jobs.models import Job

    job = session.get(Job, str(source.get("job", "")))
    if job is None:
        return None
    doc = ((job.result.get("fetched") or {}).get("onnx") or {}).get("provenance")
    if not isinstance(doc, dict) or str((doc.get("asset") or {}).get("id", "")).lower() != parent_id.lower():
        return None
    return doc
