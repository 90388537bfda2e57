"""Read a manifest from YAML or JSON text, keeping the line of every field for error messages."""

from __future__ import annotations

from dataclasses import dataclass

from kernel.documents import Located, parse_located
from kernel.errors import InvalidInput
from marketplace.manifests.schema import Manifest


@dataclass
class LoadedManifest:
    manifest: Manifest
    document: Located


def load_manifest(text: str, source_name: str = "manifest") -> LoadedManifest:
    """Parse and validate; errors name the file, the line and the field."""
    document = parse_located(text, source_name, "manifest")
    return LoadedManifest(document.validate(Manifest, "manifest"), document)


def locate(error: InvalidInput, loaded: LoadedManifest, prefix: str) -> InvalidInput:
    """Re-anchor an error raised for one part of the manifest (e.g. a policy) at its lines."""
    return loaded.document.error(error.under(prefix).errors, "manifest")
