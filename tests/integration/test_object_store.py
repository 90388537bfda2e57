"""One suite, every object store: local files and S3 (a real S3 server on loopback)."""

from __future__ import annotations

import hashlib
import os
from pathlib import Path

import pytest
from pydantic import SecretStr

from kernel.errors import NotFound
from kernel.storage import ObjectStore
from node.settings import Settings
from node.storage import LocalObjectStore, S3ObjectStore, make_object_store


class ObjectStoreSuite:
    """Behaviour every :class:`ObjectStore` must have; subclasses provide the ``store`` fixture."""

    def test_put_and_read_back(self, store: ObjectStore) -> None:
        data = os.urandom(3 * 1024 * 1024 + 17)
        info = store.put_bytes(data)
        assert info.sha256 == hashlib.sha256(data).hexdigest()
        assert info.size == len(data)
        assert info.created
        assert store.exists(info.sha256)
        assert store.size(info.sha256) == len(data)
        assert b"".join(store.read(info.sha256)) == data

    def test_same_bytes_are_stored_once(self, store: ObjectStore) -> None:
        first = store.put_bytes(b"same bytes")
        second = store.put_bytes(b"same bytes")
        assert first.sha256 == second.sha256
        assert first.created and not second.created
        assert list(store.digests()).count(first.sha256) == 1

    def test_ranges(self, store: ObjectStore) -> None:
        data = bytes(range(256)) * 4096
        info = store.put_bytes(data)
        assert b"".join(store.read(info.sha256, 10, 20)) == data[10:20]
        assert b"".join(store.read(info.sha256, len(data) - 5)) == data[-5:]
        assert b"".join(store.read(info.sha256, 100, 100)) == b""

    def test_missing_object(self, store: ObjectStore) -> None:
        digest = hashlib.sha256(b"never stored").hexdigest()
        assert not store.exists(digest)
        with pytest.raises(NotFound):
            store.size(digest)
        with pytest.raises(NotFound):
            list(store.read(digest))

    def test_delete(self, store: ObjectStore) -> None:
        info = store.put_bytes(b"to delete")
        store.delete(info.sha256)
        assert not store.exists(info.sha256)

    def test_failed_write_leaves_nothing(self, store: ObjectStore) -> None:
        before = set(store.digests())
        with pytest.raises(RuntimeError), store.stage() as staged:
            staged.write(b"half an upload")
            raise RuntimeError("client went away")
        assert set(store.digests()) == before
        assert list(store.staging_dir.glob("*.part")) == []

    def test_streaming_put_file(self, store: ObjectStore, tmp_path: Path) -> None:
        path = tmp_path / "big.bin"
        with path.open("wb") as f:
            for i in range(8):
                f.write(bytes([i]) * (1024 * 1024))
        info = store.put_file(path)
        assert info.sha256 == hashlib.sha256(path.read_bytes()).hexdigest()
        chunks = list(store.read(info.sha256))
        assert len(chunks) >= 8, "reads must stream in chunks, not return the object whole"

    def test_sweep_staging(self, store: ObjectStore) -> None:
        staged = store.stage()
        staged.write(b"left behind by a crash")
        staged.finish()
        assert store.sweep_staging() == 1
        assert not staged.path.exists()

    def test_check_passes(self, store: ObjectStore) -> None:
        store.check()


class TestLocalObjectStore(ObjectStoreSuite):
    @pytest.fixture
    def store(self, tmp_path: Path) -> ObjectStore:
        return LocalObjectStore(tmp_path / "objects")

    def test_layout_is_content_addressed(self, tmp_path: Path) -> None:
        store = LocalObjectStore(tmp_path / "objects")
        info = store.put_bytes(b"layout")
        assert (tmp_path / "objects" / info.sha256[:2] / info.sha256).read_bytes() == b"layout"

    def test_factory_default_is_local(self, tmp_path: Path) -> None:
        store = make_object_store(Settings(home=tmp_path))
        assert isinstance(store, LocalObjectStore)
        assert store.root == tmp_path / "objects"


@pytest.mark.s3
class TestS3ObjectStore(ObjectStoreSuite):
    @pytest.fixture
    def store(self, tmp_path: Path, s3, request) -> ObjectStore:  # type: ignore[no-untyped-def]
        bucket = f"agora-{request.node.name.lower().replace('_', '-')[:40]}"
        settings = Settings(
            home=tmp_path,
            storage_url=f"s3://{bucket}",
            s3_endpoint=s3.endpoint,
            s3_access_key=SecretStr(s3.access_key),
            s3_secret_key=SecretStr(s3.secret_key),
        )
        store = make_object_store(settings)
        assert isinstance(store, S3ObjectStore)
        return store

    def test_unreachable_server_is_503(self, tmp_path: Path) -> None:
        from kernel.errors import ServiceUnavailable
        from tests.services import free_port

        settings = Settings(home=tmp_path, storage_url="s3://nowhere", s3_endpoint=f"127.0.0.1:{free_port()}")
        with pytest.raises(ServiceUnavailable):
            make_object_store(settings)


def test_background_staging_hashes_in_order(tmp_path: Path) -> None:
    from kernel.storage import StagedObject

    chunks = [os.urandom(70_000) for _ in range(50)]
    with StagedObject(tmp_path, background=True) as staged:
        for chunk in chunks:
            staged.write(memoryview(chunk)[5:])
        staged.finish()
        expected = hashlib.sha256(b"".join(c[5:] for c in chunks)).hexdigest()
        assert staged.sha256 == expected
        assert staged.path.read_bytes() == b"".join(c[5:] for c in chunks)


def test_background_staging_reports_a_failed_disk(tmp_path: Path) -> None:
    import errno

    from kernel.storage import StagedObject

    staged = StagedObject(tmp_path, background=True)

    def full(data: bytes | memoryview) -> None:
        raise OSError(errno.ENOSPC, "No space left on device")

    staged._write_now = full  # type: ignore[method-assign]
    with pytest.raises(OSError, match="No space left"):
        for _ in range(100):
            staged.write(b"x" * 1000)
        staged.finish()
    staged.discard()
    assert not staged.path.exists()
