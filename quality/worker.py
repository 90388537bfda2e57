"""Validating and profiling dataset versions beside the notary, never in a request.

A dataset version registered with a suite starts ``validating``; every dataset version starts
without a profile. :class:`QualityWorker` (a thread of ``agora serve``) takes such versions
one at a time, round-robin across offerings (the oldest waiting version of the offering
served least recently: one offering's backlog cannot hold up another's), and for each

0. a version stored without a schema (registered before schemas were kept) gets one first:
   the declared schema, else the one registration would infer (:func:`quality.schema.read_shape`),
   stored on the version, so an ``id`` column's values stay out of its profile;
1. runs ``python -m quality.run`` (:mod:`quality.run`) on the version's file in a process of
   its own, with a time limit: the DataFrame and the Great Expectations import never live in
   the server, and a crash or an out-of-memory kill ends that process only;
2. stores the validation result (canonical JSON) as an object in the node's store;
3. in one transaction: sets ``quality_status`` (passed / failed, or error with the reason),
   ``quality`` (the summary), ``profile``, ``validation_sha256``; queues the result's
   notarization (kind ``validation``, parent: the dataset version's asset id) and calls
   :meth:`OfferingService.validated`, which publishes or flags the version.

A node stopped half-way leaves the version ``validating`` with its old fields, and it is
taken again. :meth:`Validations.request` (``POST …/versions/{n}/validate``) puts a version
whose validation failed or could not run back to ``validating``, and has any other settled
version (passed, or without a suite) profiled again, its status and publication unchanged.
"""

from __future__ import annotations

import contextlib
import itertools
import json
import logging
import os
import subprocess
import sys
import tempfile
import threading
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import msgspec
from sqlalchemy import Engine, String, cast, func, or_
from sqlmodel import Session, col, select

from contracts.notary import enqueue
from contracts.registry import asset_id
from kernel import audit
from kernel.canonical import canonical_json
from kernel.db import fetch, transaction, utcnow
from kernel.errors import Conflict, FieldError, InvalidInput, NotFound
from kernel.storage import ObjectStore
from kernel.worker import BackgroundWorker
from marketplace.catalog import sync_local
from marketplace.models import Asset, Offering, OfferingVersion
from marketplace.services import OfferingService
from quality.spec import (
    QUALITY_ERROR,
    QUALITY_FAILED,
    QUALITY_PASSED,
    QUALITY_VALIDATING,
    declared,
)

log = logging.getLogger("agora.quality")
ACTOR = "quality validation"
MAX_OUTPUT_BYTES = 64 * 1024 * 1024  # what a run may write back (a profile of 2,000 columns fits)
CHILD_ENV = ("PATH", "LANG", "LC_ALL", "HOME")  # nothing of the node's own settings


class ValidationRequest(msgspec.Struct, kw_only=True):
    """A version put back to ``validating`` (the re-validate route's answer)."""

    offering_id: str
    version: int
    quality_status: str
    published: bool


class Validations:
    """Which versions wait, what one run finds, and how its outcome is recorded."""

    def __init__(
        self,
        engine: Engine,
        store: ObjectStore,
        offerings: OfferingService,
        *,
        min_count: int,
        timeout: float,
        max_memory: int = 0,
        on_queued: Callable[[], None] | None = None,
    ) -> None:
        self.engine = engine
        self.store = store
        self.offerings = offerings
        self.min_count = min_count
        self.timeout = timeout
        self.max_memory = max_memory
        self.on_queued = on_queued
        self.on_requested: Callable[[], None] | None = None
        self._child: subprocess.Popen[bytes] | None = None
        self._lock = threading.Lock()
        self._stopping = False
        self._served: dict[str, int] = {}  # offering id -> the turn its last version was taken
        self._turns = itertools.count()

    # Asking for a run -----------------------------------------------------------------

    def request(self, offering_id: str, number: int, actor: str) -> ValidationRequest:
        """Validate (and profile) a dataset version again when its validation failed or could
        not run; profile any other settled version again (passed, or without a suite: its
        status and publication stay as they are), e.g. after a column was declared an ``id``."""
        if not 1 <= number <= 2**31:
            raise NotFound(f"offering {offering_id} has no version {number}")
        with transaction(self.engine) as session:
            offering = fetch(session, Offering, offering_id, f"no offering {offering_id}", lock=True)
            if offering.kind != "dataset":
                raise InvalidInput(
                    f"offering {offering_id} is a {offering.kind}: only dataset versions are validated",
                    errors=[FieldError("offering_id", "not a dataset")],
                )
            version = session.exec(
                select(OfferingVersion).where(
                    OfferingVersion.offering_id == offering_id, OfferingVersion.version == number
                )
            ).first()
            if version is None:
                raise NotFound(f"offering {offering_id} has no version {number}")
            suite = declared(offering.quality_declared)["expectations"]
            status = version.quality_status
            if status == QUALITY_VALIDATING:
                raise Conflict(f"version {number} of offering {offering_id} is already being validated")
            if suite is not None and status in (QUALITY_FAILED, QUALITY_ERROR):
                version.quality_status, version.quality = QUALITY_VALIDATING, None
            version.profile = None
            offering.updated_at = utcnow()
            session.add(version)
            session.flush()
            audit.record(
                session,
                actor=actor,
                action="offering.revalidate",
                subject_type="offering",
                subject_id=offering_id,
                details={"version": number, "from": status},
            )
            sync_local(session, offering)
            answer = ValidationRequest(
                offering_id=offering_id,
                version=number,
                quality_status=version.quality_status,
                published=version.published,
            )
        if self.on_requested is not None:
            self.on_requested()
        return answer

    # One run --------------------------------------------------------------------------

    def waiting(self, limit: int = 1) -> list[int]:
        """Ids of dataset versions waiting for a validation or a profile, in the order they are
        taken: round-robin across offerings, the offering served least recently first (never
        served: the one waiting longest), each offering's versions oldest first."""
        profile = col(OfferingVersion.profile)
        with Session(self.engine) as session:
            rows = session.exec(
                select(OfferingVersion.id, OfferingVersion.offering_id)
                .join(Offering, col(Offering.id) == OfferingVersion.offering_id)
                .where(
                    Offering.kind == "dataset",
                    or_(
                        col(OfferingVersion.quality_status) == QUALITY_VALIDATING,
                        func.coalesce(cast(profile, String), "null") == "null",  # SQL or JSON null
                    ),
                )
                .order_by(col(OfferingVersion.id))
            ).all()
        queues: dict[str, list[int]] = {}
        for version_id, offering_id in rows:
            if version_id is not None:
                queues.setdefault(offering_id, []).append(version_id)
        turns = sorted(queues, key=lambda o: (self._served.get(o, -1), queues[o][0]))
        order: list[int] = []
        for depth in range(max((len(q) for q in queues.values()), default=0)):
            order += [queues[o][depth] for o in turns if depth < len(queues[o])]
            if len(order) >= limit:
                break
        return order[:limit]

    def run_once(self) -> int:
        """Validate or profile the next waiting version (:meth:`waiting`); returns how many
        were done (0 or 1)."""
        ids = self.waiting()
        if not ids:
            return 0
        self.process(ids[0])
        return 1

    def process(self, version_id: int) -> None:
        """Run one version's validation and profile and record the outcome (see the module)."""
        with Session(self.engine) as session:
            version = session.get(OfferingVersion, version_id)
            if version is None:
                return
            offering = fetch(session, Offering, version.offering_id, f"no offering {version.offering_id}")
            self._served[offering.id] = next(self._turns)
            asset = session.get(Asset, version.asset_sha256)
            validating = version.quality_status == QUALITY_VALIDATING
            suite = declared(offering.quality_declared)["expectations"] if validating else None
            stored, wanted = version.schema_doc, declared(offering.quality_declared)["schema"]
            job: dict[str, Any] = {
                "media_type": asset.media_type if asset is not None else offering.media_type,
                "schema": _columns(stored) or wanted,
                "suite": suite,
                "min_count": self.min_count,
                "max_memory": self.max_memory,
                "offering": offering.id,
                "version": version.version,
                "dataset_sha256": version.asset_sha256,
            }
        if validating and suite is None:
            output: dict[str, Any] = {"ok": False, "reason": "the offering declares no suite any more"}
        else:
            infer = (version_id, wanted) if stored is None else None
            output = self._run(version.asset_sha256, job, infer)
        self._record(version_id, validating, suite, output, job["schema"])

    def _run(
        self, sha256: str, job: dict[str, Any], infer: tuple[int, dict[str, Any] | None] | None = None
    ) -> dict[str, Any]:
        """``python -m quality.run`` on the version's file; its output, or a reason it has none.
        ``infer``: (version id, declared schema) of a version stored without a schema, which
        gets one (:meth:`_store_schema`) before the run."""
        staging = self.store.staging_dir  # the node's disk, not a /tmp that may live in memory
        staging.mkdir(parents=True, exist_ok=True)
        with (
            tempfile.TemporaryDirectory(prefix="quality-", dir=staging) as tmp,
            self._file(sha256, Path(tmp)) as data,
        ):
            if infer is not None:
                doc = self._store_schema(infer[0], data, str(job["media_type"]), infer[1])
                job["schema"] = _columns(doc) or job["schema"]
            job_path, out_path, err_path = Path(tmp, "job.json"), Path(tmp, "out.json"), Path(tmp, "stderr")
            job_path.write_text(json.dumps(job), encoding="utf-8")
            env = {k: os.environ[k] for k in CHILD_ENV if k in os.environ}
            env.update(GX_ANALYTICS_ENABLED="False", TMPDIR=tmp)  # what GX leaves behind goes with tmp
            with err_path.open("wb") as err:
                with self._lock:
                    if self._stopping:
                        return {"ok": False, "reason": "the node stopped", "retry": True}
                    self._child = subprocess.Popen(
                        [sys.executable, "-I", "-m", "quality.run", str(job_path), str(data), str(out_path)],
                        stdin=subprocess.DEVNULL,
                        stdout=subprocess.DEVNULL,
                        stderr=err,
                        cwd=tmp,
                        env=env,
                    )
                child = self._child
                try:
                    code = child.wait(self.timeout)
                except subprocess.TimeoutExpired:
                    child.kill()
                    child.wait()
                    return {"ok": False, "reason": f"the validation took longer than {self.timeout:g} s"}
                finally:
                    with self._lock:
                        self._child = None
            if self._stopping:
                return {"ok": False, "reason": "the node stopped", "retry": True}
            errors = err_path.read_bytes()[-20_000:].decode("utf-8", "replace").strip()
            if errors:
                log.warning("validation of %s wrote to stderr:\n%s", sha256, errors)
            if code != 0 or not out_path.is_file():
                how = f"was killed by signal {-code}" if code < 0 else f"exited with {code}"
                return {"ok": False, "reason": f"the validation process {how} (out of memory?)"}
            if out_path.stat().st_size > MAX_OUTPUT_BYTES:
                return {"ok": False, "reason": "the validation's output is larger than the node keeps"}
            output: dict[str, Any] = json.loads(out_path.read_bytes())
            if output.get("figures"):
                log.info("validated %s: %s", sha256, output["figures"])
            return output

    def _store_schema(
        self, version_id: int, data: Path, media_type: str, wanted: dict[str, Any] | None
    ) -> dict[str, Any] | None:
        """The schema of a version stored without one, as registration makes it (the declared
        one, else inferred from a bounded read of the file), stored on the version; None when
        the file has no schema the node can read (the run then says why it cannot profile it)."""
        from quality import schema
        from quality.sampling import DatasetProblem
        from quality.spec import DatasetSchema

        try:
            if wanted is not None:
                doc = schema.schema_doc(DatasetSchema.model_validate(wanted), "declared")
            else:
                doc = schema.schema_doc(schema.read_shape(data, media_type).schema(), "inferred")
        except (DatasetProblem, ValueError):  # unreadable, or a stored declaration that no longer reads
            return None
        with transaction(self.engine) as session:
            version = session.get(OfferingVersion, version_id, with_for_update=True)
            if version is not None and version.schema_doc is None:
                version.schema_doc = doc
                session.add(version)
        return doc

    @contextlib.contextmanager
    def _file(self, sha256: str, tmp: Path) -> Iterator[Path]:
        """The version's bytes as a local file: the store's own for local storage, else a copy."""
        local = self.store.local_path(sha256)
        if local is not None:
            yield local
            return
        copy = tmp / "data"
        with copy.open("wb") as f:
            for chunk in self.store.read(sha256):
                f.write(chunk)
        yield copy

    def _record(
        self,
        version_id: int,
        validating: bool,
        suite: dict[str, Any] | None,
        output: dict[str, Any],
        schema: dict[str, Any] | None,
    ) -> None:
        if output.get("retry"):
            return  # the node is stopping: the version stays as it was and is taken again
        result = output.get("result") if output.get("ok") else None
        info = self.store.put_bytes(canonical_json(result), "application/json") if result else None
        try:
            with transaction(self.engine) as session:
                version = session.get(OfferingVersion, version_id, with_for_update=True)
                if version is None:
                    return
                offering = fetch(session, Offering, version.offering_id, "offering gone", lock=True)
                still = (
                    version.quality_status == QUALITY_VALIDATING if validating else version.profile is None
                )
                if not still:
                    return  # recorded meanwhile (another replica)
                if (_columns(version.schema_doc) or declared(offering.quality_declared)["schema"]) != schema:
                    return  # the roles changed during the run: it is taken again with the new ones
                reason = None if output.get("ok") else str(output.get("reason") or "unknown")
                version.profile = output.get("profile") if reason is None else {"error": reason}
                if not validating:
                    offering.updated_at = utcnow()
                    session.add(version)
                    session.flush()
                    sync_local(session, offering)
                elif result is None or info is None:
                    self._failed_to_run(session, offering, version, suite, reason or "no result")
                else:
                    self._validated(session, offering, version, result, output["summary"], info.sha256)
        except BaseException:
            if info is not None and info.created:
                self.store.delete(info.sha256)
            raise
        if self.on_queued is not None:
            self.on_queued()

    def _validated(
        self,
        session: Session,
        offering: Offering,
        version: OfferingVersion,
        result: dict[str, Any],
        summary: dict[str, Any],
        sha256: str,
    ) -> None:
        passed = bool(result["success"])
        stats = result["statistics"]
        parent = "0x" + asset_id(offering.provider, offering.kind, bytes.fromhex(version.asset_sha256)).hex()
        notarization = enqueue(
            session,
            kind="validation",
            content_hash=sha256,
            owner=offering.provider,
            metadata={
                "title": f"validation of {offering.title} v{version.version}",
                "offering": offering.id,
                "version": version.version,
                "dataset_sha256": version.asset_sha256,
                "suite": result["suite"],
                "success": passed,
                "evaluated": stats["evaluated"],
                "passed": stats["passed"],
                "failed": stats["failed"],
                "failing_columns": list(summary.get("failing_columns") or []),
            },
            parents=[parent],
        )
        version.quality_status = QUALITY_PASSED if passed else QUALITY_FAILED
        version.quality = summary
        version.validation_sha256 = sha256
        version.validation_notarization_id = notarization.id
        self.offerings.validated(session, version, passed, actor=ACTOR)

    @staticmethod
    def _failed_to_run(
        session: Session,
        offering: Offering,
        version: OfferingVersion,
        suite: dict[str, Any] | None,
        reason: str,
    ) -> None:
        """The suite could not run: the version is ``error`` with the reason, and stays as
        published as it was (unpublished under ``reject``) until it is validated again."""
        version.quality_status = QUALITY_ERROR
        version.quality = {"suite": str((suite or {}).get("name") or "suite"), "error": reason}
        offering.updated_at = utcnow()
        session.add(version)
        session.flush()
        audit.record(
            session,
            actor=ACTOR,
            action="offering.validated",
            subject_type="offering",
            subject_id=offering.id,
            details={"version": version.version, "status": QUALITY_ERROR, "reason": reason},
        )
        sync_local(session, offering)

    def sweep(self) -> int:
        """Remove the working directories a run killed with the node left behind."""
        import shutil

        if not self.store.staging_dir.exists():
            return 0
        left = [p for p in self.store.staging_dir.glob("quality-*") if p.is_dir()]
        for path in left:
            shutil.rmtree(path, ignore_errors=True)
        return len(left)

    def stop(self) -> None:
        """End the run under way (its version stays waiting and is taken at the next start)."""
        with self._lock:
            self._stopping = True
            if self._child is not None and self._child.poll() is None:
                self._child.kill()


class QualityWorker(BackgroundWorker):
    """The thread of ``agora serve`` that runs :meth:`Validations.run_once` until nothing waits."""

    name = "agora-quality"

    def __init__(self, validations: Validations, interval: float = 10.0) -> None:
        super().__init__(interval)
        self.validations = validations
        validations.on_requested = self.wake

    def start(self) -> None:
        self.validations.sweep()
        super().start()

    def tick(self) -> float | None:
        return 0.0 if self.validations.run_once() else None

    def stop(self, timeout: float = 10.0) -> None:
        self.validations.stop()
        super().stop(timeout)


def _columns(schema_doc: dict[str, Any] | None) -> dict[str, Any] | None:
    """A version's stored schema (``quality.schema.schema_doc``) when it names columns."""
    return schema_doc if schema_doc and schema_doc.get("columns") else None
