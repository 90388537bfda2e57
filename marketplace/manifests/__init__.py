"""Declarative manifests: ``agora plan`` shows, ``agora apply`` carries out.

A manifest declares offerings (source file, metadata, access modes, policy) and peers. The
plan compares it with what the node holds — create, new version, metadata update, retire —
and changes nothing; apply carries the plan out, and a second apply finds nothing to do.
"""

from marketplace.manifests.loader import LoadedManifest, load_manifest
from marketplace.manifests.schema import Manifest, ManifestOffering, manifest_json_schema

__all__ = ["LoadedManifest", "Manifest", "ManifestOffering", "load_manifest", "manifest_json_schema"]
