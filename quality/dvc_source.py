"""DVC-tracked files as offering sources: ``dvc://<repository>/<path>@<rev>``.

A manifest names a file in a git + DVC repository at a revision:

* ``dvc://../sensors-repo/data/bearings.csv@main`` — a local repository; a relative path is
  relative to the manifest, and the repository is the nearest enclosing directory that
  holds ``.dvc``;
* ``dvc://https://host/org/repo.git/data/x.csv@v2`` or ``dvc://file:///srv/repo.git/…`` — a
  git URL; the repository ends at ``.git/``.

The machine that runs ``agora plan/apply`` resolves it (:func:`resolve`): the git commit the
revision names, the DVC md5 that the ``.dvc`` file or ``dvc.lock`` records for the path, and
the bytes, read from the DVC cache or pulled from the repository's DVC remote. The node
only sees what the client reports (:func:`check_reported` holds it to the manifest's
text) and the bytes, which it hashes itself.

:func:`parse` is plain string work and imports nothing heavy: the node calls it on every
plan. DVC itself is imported inside :func:`resolve` only.
"""

from __future__ import annotations

import hashlib
import os
import posixpath
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit, urlunsplit

from kernel.errors import InvalidInput

SCHEME = "dvc://"
CHUNK = 1024 * 1024
_REV = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._/+~^-]{0,199}$")
_USERINFO = re.compile(r"(://)[^/@\s]*@")
_SCP = re.compile(r"^[A-Za-z0-9._-]+@[A-Za-z0-9.-]+:")  # git@host:org/repo.git


@dataclass(frozen=True)
class DvcRef:
    """A parsed ``dvc://`` source. ``repo``/``path`` are set for a git URL; a local
    ``location`` is split into repository and path only on disk (:func:`resolve`)."""

    source: str
    location: str
    rev: str
    repo: str | None = None
    path: str | None = None

    @property
    def is_url(self) -> bool:
        return self.repo is not None

    @property
    def shown(self) -> str:
        """The source as messages name it: without a git URL's credentials."""
        return redact(self.source)


@dataclass(frozen=True)
class Resolved:
    """A resolved source: what the asset records, and the bytes in ``file``."""

    repo: str  # a git URL without credentials, or the local path as the manifest wrote it
    path: str
    rev: str
    commit: str
    md5: str
    sha256: str
    size: int
    file: Path

    def source(self) -> dict[str, Any]:
        """The ``source`` a version records (and its notarized metadata covers)."""
        return {
            "kind": "dvc",
            "repo": self.repo,
            "path": self.path,
            "rev": self.rev,
            "commit": self.commit,
            "md5": self.md5,
        }


def is_dvc(source: str) -> bool:
    return source.startswith(SCHEME)


def parse(source: str) -> DvcRef:
    """Split a ``dvc://`` source into location and revision (and, for a git URL, its
    repository and path); :class:`InvalidInput` says what is wrong with it."""
    shown = redact(source)
    if not is_dvc(source):
        raise InvalidInput(f"{shown}: not a dvc:// source")
    body = source.removeprefix(SCHEME)
    location, at, rev = body.rpartition("@")
    if not at or not location or ".git/" in rev:
        raise InvalidInput(f"{shown}: a DVC source ends in @<rev> (a branch, tag or commit)")
    if not _REV.match(rev) or ".." in rev or rev.endswith((".lock", "/", ".")):
        raise InvalidInput(f"{shown}: {rev!r} is not a git revision name")
    if "://" in location or _SCP.match(location):
        repo, marker, path = location.partition(".git/")
        if not marker:
            raise InvalidInput(f"{shown}: a git URL's repository part ends in .git (…/repo.git/<path>)")
        return DvcRef(source, location, rev, repo=public_url(repo + ".git"), path=_inner(shown, path))
    if "\x00" in location:
        raise InvalidInput(f"{shown}: the path holds a NUL character")
    return DvcRef(source, posixpath.normpath(location), rev)


def redact(text: str) -> str:
    """``text`` with the ``user:password@`` of any URL in it removed (a ``dvc://`` source's
    own scheme is no URL: ``dvc://x.csv@main`` stays as it is)."""
    if is_dvc(text):
        return SCHEME + redact(text.removeprefix(SCHEME))
    return _USERINFO.sub(r"\1", text)


def public_url(url: str) -> str:
    """A git URL without the user name and password it may carry (never recorded or sent)."""
    if _SCP.match(url):
        return url.split("@", 1)[1]
    parts = urlsplit(url)
    host = parts.hostname or ""
    netloc = f"{host}:{parts.port}" if parts.port else host
    return urlunsplit((parts.scheme, netloc, parts.path, "", ""))


def check_reported(ref: DvcRef, reported: dict[str, Any]) -> str | None:
    """Why the ``source`` a client reported does not describe ``ref`` (None: it does)."""
    if reported.get("rev") != ref.rev:
        return f"the reported revision {reported.get('rev')!r} is not the manifest's {ref.rev!r}"
    if ref.is_url:
        if (reported.get("repo"), reported.get("path")) != (ref.repo, ref.path):
            return "the reported repository and path are not the manifest's"
        return None
    path = str(reported.get("path"))
    if posixpath.isabs(path) or ".." in path.split("/"):
        return f"the reported path {path!r} is not inside its repository"
    if posixpath.normpath(posixpath.join(str(reported.get("repo")), path)) != ref.location:
        return f"the reported repository and path do not make up {ref.location}"
    return None


def resolve(ref: DvcRef, base: Path, dest: Path) -> Resolved:
    """Resolve ``ref`` (local paths relative to ``base``) and stream its bytes into the file
    ``dest``; every failure is one :class:`InvalidInput` naming the source."""
    if ref.is_url:
        target, path, recorded = _url_target(ref)
    else:
        target, path, recorded = _local_target(ref, base)
    from dvc.api import DVCFileSystem
    from dvc.exceptions import DvcException

    try:
        fs = DVCFileSystem(target, rev=ref.rev)
        info = fs.info(path)
        commit = str(fs.repo.get_rev())
        md5, algorithm = _dvc_md5(ref, path, info)
        digest, size, seen_md5 = _stream(fs, path, dest, ref)
    except FileNotFoundError:
        raise InvalidInput(f"{ref.shown}: no file {path} at revision {ref.rev}") from None
    except DvcException as exc:
        raise InvalidInput(f"{ref.shown}: {_dvc_reason(exc, ref)}") from None
    if algorithm == "md5" and seen_md5 != md5:
        raise InvalidInput(f"{ref.shown}: the bytes read have md5 {seen_md5}, DVC records {md5}")
    return Resolved(recorded, path, ref.rev, commit, md5, digest, size, dest)


def _inner(source: str, path: str) -> str:
    """A path inside a repository: relative, normalised, never above the repository."""
    inner = posixpath.normpath(path) if path else ""
    if not inner or inner == "." or inner.startswith(("/", "../")) or inner == "..":
        raise InvalidInput(f"{source}: name a file inside the repository (…/repo.git/<path>@<rev>)")
    return inner


def _url_target(ref: DvcRef) -> tuple[str, str, str]:
    assert ref.repo is not None and ref.path is not None
    url = ref.location.partition(".git/")[0] + ".git"  # with credentials, for git alone
    return url, ref.path, ref.repo


def _local_target(ref: DvcRef, base: Path) -> tuple[str, str, str]:
    full = Path(os.path.abspath(base / ref.location))
    root = next((p for p in full.parents if (p / ".dvc").is_dir()), None)
    if root is None:
        raise InvalidInput(f"{ref.shown}: no DVC repository (a directory holding .dvc) encloses {full}")
    inner = full.relative_to(root).as_posix()
    absolute = posixpath.isabs(ref.location)
    recorded = root.as_posix() if absolute else os.path.relpath(root, os.path.abspath(base))
    return str(root), inner, Path(recorded).as_posix()


def _dvc_md5(ref: DvcRef, path: str, info: dict[str, Any]) -> tuple[str, str]:
    if info.get("type") != "file":
        raise InvalidInput(f"{ref.shown}: {path} is a {info.get('type')}; name a file")
    dvc_info = info.get("dvc_info") or {}
    md5 = dvc_info.get("md5")
    if not md5:
        raise InvalidInput(
            f"{ref.shown}: {path} is not tracked by DVC at revision {ref.rev} (no .dvc file or "
            "dvc.lock output records it)"
        )
    entry = dvc_info.get("entry")
    hash_info = getattr(entry, "hash_info", None)
    return str(md5), str(getattr(hash_info, "name", "") or "md5")


def _stream(fs: Any, path: str, dest: Path, ref: DvcRef) -> tuple[str, int, str]:
    sha, md5, size = hashlib.sha256(), hashlib.md5(usedforsecurity=False), 0
    try:
        with fs.open(path, "rb") as src, dest.open("wb") as out:
            while chunk := src.read(CHUNK):
                sha.update(chunk)
                md5.update(chunk)
                size += len(chunk)
                out.write(chunk)
    except FileNotFoundError:
        raise InvalidInput(
            f"{ref.shown}: the data of {path} is neither in the DVC cache nor in the repository's "
            "DVC remote (is the remote reachable, and was `dvc push` run?)"
        ) from None
    except OSError as exc:
        raise InvalidInput(f"{ref.shown}: reading {path} failed: {exc.strerror or exc}") from None
    if size == 0:
        raise InvalidInput(f"{ref.shown}: {path} is empty")
    return sha.hexdigest(), size, md5.hexdigest()


def _dvc_reason(exc: Exception, ref: DvcRef) -> str:
    """DVC's and scmrepo's errors in one line (their messages can span several)."""
    from dvc.exceptions import NotDvcRepoError
    from dvc.scm import CloneError, RevError

    if isinstance(exc, RevError):
        return f"unknown git revision {ref.rev!r}"
    if isinstance(exc, CloneError):
        return "the git repository cannot be cloned (no such repository, or not reachable)"
    if isinstance(exc, NotDvcRepoError):
        return "not a DVC repository"
    text = redact(" ".join(str(exc).split()))
    return text[:300] or type(exc).__name__
