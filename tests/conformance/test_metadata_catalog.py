"""DSP TCK cases MET:01-01 and CAT:01-01 … 01-03: the version metadata and the catalog, the
TCK as consumer (``Metadata01Test``, ``Catalog01Test``)."""

from __future__ import annotations

import httpx

from tests.conformance.conftest import Conformance
from tests.conformance.peer import CONTEXT, TOKEN, TckPeer, check_schema, new_id


def test_MET_01_01_version_metadata(tck: Conformance) -> None:
    """MET:01-01: ``/.well-known/dspace-version`` names version 2025-1 with a path and a binding."""
    response = httpx.get(f"{tck.node.url}/.well-known/dspace-version", headers={"Authorization": TOKEN})
    assert response.status_code == 200
    versions = response.json()["protocolVersions"]
    found = [v for v in versions if v["version"] == "2025-1"]
    assert found and found[0]["path"] is not None and found[0]["binding"] is not None


def test_CAT_01_01_catalog_request(peer: TckPeer) -> None:
    """CAT:01-01: a CatalogRequestMessage is answered with a Catalog that lists CAT0101."""
    catalog = peer.post(
        "/catalog/request", {"@context": CONTEXT, "@id": new_id(), "@type": "CatalogRequestMessage"}
    ).json()
    check_schema(catalog, "Catalog")
    assert "CAT0101" in [d["@id"] for d in catalog["dataset"]]


def test_CAT_01_02_dataset_request(peer: TckPeer) -> None:
    """CAT:01-02: ``GET /catalog/datasets/CAT0102`` answers that Dataset."""
    dataset = peer.get("/catalog/datasets/CAT0102")
    check_schema(dataset, "Dataset")
    assert dataset["@id"] == "CAT0102"


def test_CAT_01_03_unknown_dataset(peer: TckPeer) -> None:
    """CAT:01-03: a dataset that does not exist (CAT0103) is a CatalogError, not a crash."""
    response = httpx.get(f"{peer.node_dsp}/catalog/datasets/CAT0103", headers={"Authorization": TOKEN})
    assert 400 <= response.status_code < 500
    check_schema(response.json(), "CatalogError")
