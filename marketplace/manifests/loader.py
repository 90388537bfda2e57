"""Read a manifest from YAML or JSON text, keeping the line of every field for error messages."""

from __future__ import annotations

from dataclasses import dataclass

from kernel.documents import Located, parse_located
from kernel.errors import FieldError, InvalidInput
from marketplace.manifests.schema import Manifest


@dataclass
class LoadedManifest:
    manifest: Manifest
    document: Located

    @property
    def source_name(self) -> str:
        return self.document.source_name


def load_manifest(text: str, source_name: str = "manifest") -> LoadedManifest:
    """Parse and validate; errors name the file, the line and the field."""
    document = parse_located(text, source_name, "manifest")
    return LoadedManifest(document.validate(Manifest, "manifest"), document)


def locate(error: InvalidInput, loaded: LoadedManifest, prefix: str) -> InvalidInput:
    """Re-anchor an error raised for one part of the manifest (e.g. a policy) at its lines."""
    errors = [FieldError(f"{prefix}.{e.path}" if e.path else prefix, e.message) for e in error.errors] or [
        FieldError(prefix, error.detail)
    ]
    return loaded.document.error(errors, "manifest")
