"""Code bundles: a job's Python code packed into a reproducible ``.tar.gz`` and hashed.

Packing the same directory twice gives the same bytes (sorted names, zeroed times and
owners, fixed modes, no gzip timestamp), so the sha256 names the code. Symlinks, devices
and anything outside the directory are refused; ``__pycache__`` and dot-directories are
left out. Unpacking refuses links, absolute paths and ``..``.
"""

from __future__ import annotations

import base64
import binascii
import gzip
import io
import tarfile
from pathlib import Path

from kernel.errors import InvalidInput
from kernel.hashing import sha256_bytes

MAX_BUNDLE_BYTES = 8 * 1024 * 1024
MAX_UNPACKED_BYTES = 64 * 1024 * 1024
MAX_MEMBERS = 10_000  # a gzip of empty-file headers would otherwise list millions
SKIPPED = {"__pycache__", ".git", ".venv", ".mypy_cache", ".pytest_cache"}


class BundleRejected(InvalidInput):
    type_slug = "bundle-rejected"
    title = "The code bundle is not acceptable"


def pack(source: Path) -> bytes:
    """A directory packed reproducibly, or an existing ``.tar.gz`` read (and checked) as is."""
    if source.is_file():
        data = source.read_bytes()
        _check_size(data)
        list_members(data)
        return data
    if not source.is_dir():
        raise BundleRejected(f"bundle {source} is neither a directory nor a .tar.gz file")
    buffer = io.BytesIO()
    with (
        gzip.GzipFile(fileobj=buffer, mode="wb", mtime=0, compresslevel=6) as gz,
        tarfile.open(fileobj=gz, mode="w", format=tarfile.PAX_FORMAT) as tar,
    ):
        for path in sorted(_files(source)):
            relative = path.relative_to(source).as_posix()
            info = tarfile.TarInfo(relative)
            info.size = path.stat().st_size
            info.mode = 0o644
            info.mtime = 0
            with path.open("rb") as handle:
                tar.addfile(info, handle)
    data = buffer.getvalue()
    _check_size(data)
    return data


def _files(root: Path) -> list[Path]:
    found = []
    for path in root.rglob("*"):
        relative = path.relative_to(root)
        if any(part in SKIPPED or part.startswith(".") for part in relative.parts):
            continue
        if path.is_symlink():
            raise BundleRejected(f"bundle {root}: {relative} is a symlink; bundles hold plain files only")
        if path.is_file():
            found.append(path)
        elif not path.is_dir():
            raise BundleRejected(f"bundle {root}: {relative} is not a regular file")
    if not found:
        raise BundleRejected(f"bundle {root} holds no files")
    return found


def _check_size(data: bytes) -> None:
    if len(data) > MAX_BUNDLE_BYTES:
        raise BundleRejected(
            f"the bundle is {len(data)} bytes packed; bundles are limited to {MAX_BUNDLE_BYTES} bytes "
            "(put large dependencies in an OCI image instead)"
        )


def list_members(data: bytes) -> list[str]:
    """The file names in a bundle; refuses anything but regular files and directories inside it."""
    names = []
    total = members = 0
    try:
        with tarfile.open(fileobj=io.BytesIO(data), mode="r:gz") as tar:
            for member in tar:
                name = member.name
                if name.startswith("/") or ".." in Path(name).parts:
                    raise BundleRejected(f"bundle member {name!r} points outside the bundle")
                members += 1
                if members > MAX_MEMBERS:
                    raise BundleRejected(f"the bundle has more than {MAX_MEMBERS} members")
                if member.isdir():
                    continue
                if not member.isfile():
                    raise BundleRejected(f"bundle member {name!r} is not a regular file")
                total += member.size
                if total > MAX_UNPACKED_BYTES:
                    raise BundleRejected(f"the bundle unpacks to more than {MAX_UNPACKED_BYTES} bytes")
                names.append(name.removeprefix("./"))
    except (tarfile.TarError, OSError, EOFError) as exc:
        raise BundleRejected(f"the bundle is not a readable .tar.gz: {exc}") from None
    return names


def unpack(data: bytes, destination: Path) -> list[str]:
    """Extract a checked bundle into ``destination`` (read-only files)."""
    names = list_members(data)
    destination.mkdir(parents=True, exist_ok=True)
    with tarfile.open(fileobj=io.BytesIO(data), mode="r:gz") as tar:
        tar.extractall(destination, filter="data")
    for path in destination.rglob("*"):
        if path.is_file():
            path.chmod(0o444)
    return names


def decode(text: object) -> bytes:
    """A bundle as it travels in JSON (base64), or :class:`BundleRejected`."""
    if not isinstance(text, str):
        raise BundleRejected("the bundle must be a base64 string")
    try:
        return base64.b64decode(text, validate=True)
    except (binascii.Error, ValueError):
        raise BundleRejected("the bundle is not base64") from None


def digest(data: bytes) -> str:
    return sha256_bytes(data)
