"""Job specs, code bundles and the provider's held-out split."""

from __future__ import annotations

import io
import json
import tarfile
from pathlib import Path

import numpy as np
import pytest

from kernel.errors import InvalidInput
from tests import services
from training_jobs import bundle as bundles
from training_jobs import holdout
from training_jobs.spec import SCHEMA_FILE, JobSpec, load_spec

EXAMPLES = services.REPO / "examples" / "jobs"


@pytest.mark.parametrize(
    "path", sorted(EXAMPLES.glob("*/job*.yaml")), ids=lambda p: f"{p.parent.name}/{p.name}"
)
def test_the_examples_are_valid_specs(path: Path) -> None:
    spec = load_spec(path.read_text(), path.name)
    assert spec.code.entrypoint and (path.parent / spec.code.entrypoint).is_file()


def test_sizes_and_durations_are_read_in_units() -> None:
    spec = load_spec((EXAMPLES / "digits-cnn" / "job.yaml").read_text())
    assert int(spec.resources.memory) == 2 * 1024**3
    assert spec.resources.wall_time == 300.0
    assert int(spec.resources.max_output) == 20 * 1024**2


@pytest.mark.parametrize(
    ("change", "field", "words"),
    [
        ("name: Digits CNN", "name", "pattern"),
        ("  format: keras", "output.format", "torchscript"),
        ("onnx: {input_shape: [0, 64]}", "onnx", "positive"),
        ("resources: {wall_time: soon}", "resources.wall_time", "duration"),
        ("  image: python:3.12", "code", "digest"),
    ],
)
def test_bad_specs_name_the_line_and_field(change: str, field: str, words: str) -> None:
    base = (EXAMPLES / "digits-sklearn" / "job.yaml").read_text().splitlines()
    key = change.split(":")[0]
    lines = [change if line.split(":")[0] == key else line for line in base]
    if change not in lines:
        lines.insert(5, change)  # a key the example does not have (code.image)
    text = "\n".join(lines) + "\n"
    with pytest.raises(InvalidInput) as caught:
        load_spec(text, "job.yaml")
    error = caught.value
    assert any(e.path.startswith(field) for e in error.errors), error.errors
    assert "job.yaml:" in error.detail and words in error.detail


def test_state_dict_output_needs_a_factory() -> None:
    text = (
        (EXAMPLES / "digits-cnn" / "job.yaml")
        .read_text()
        .replace("format: torchscript", "format: torch-state-dict")
    )
    with pytest.raises(InvalidInput, match="factory"):
        load_spec(text)


def test_the_published_schema_is_current() -> None:
    regenerate = "python -c 'from training_jobs.spec import write_schema; write_schema()'"
    assert json.loads(SCHEMA_FILE.read_text()) == JobSpec.model_json_schema(), regenerate


def test_packing_is_reproducible_and_skips_caches(tmp_path: Path) -> None:
    source = tmp_path / "bundle"
    (source / "pkg" / "__pycache__").mkdir(parents=True)
    (source / "train.py").write_text("print('hi')\n")
    (source / "pkg" / "model.py").write_text("X = 1\n")
    (source / "pkg" / "__pycache__" / "model.cpython-311.pyc").write_bytes(b"\0")
    first = bundles.pack(source)
    (source / "train.py").touch()  # a newer mtime changes nothing
    assert bundles.pack(source) == first
    assert bundles.list_members(first) == ["pkg/model.py", "train.py"]
    (source / "train.py").write_text("print('changed')\n")
    assert bundles.digest(bundles.pack(source)) != bundles.digest(first)
    unpacked = tmp_path / "out"
    bundles.unpack(first, unpacked)
    assert (unpacked / "train.py").read_text() == "print('hi')\n"


def test_bundles_with_links_or_escapes_are_refused(tmp_path: Path) -> None:
    source = tmp_path / "bundle"
    source.mkdir()
    (source / "train.py").write_text("")
    (source / "secret").symlink_to("/etc/passwd")
    with pytest.raises(bundles.BundleRejected, match="symlink"):
        bundles.pack(source)

    def archive(member: tarfile.TarInfo, data: bytes = b"") -> bytes:
        buffer = io.BytesIO()
        with tarfile.open(fileobj=buffer, mode="w:gz") as tar:
            member.size = len(data)
            tar.addfile(member, io.BytesIO(data))
        return buffer.getvalue()

    with pytest.raises(bundles.BundleRejected, match="outside"):
        bundles.list_members(archive(tarfile.TarInfo("../../evil.py"), b"x"))
    link = tarfile.TarInfo("train.py")
    link.type, link.linkname = tarfile.SYMTYPE, "/etc/passwd"
    with pytest.raises(bundles.BundleRejected, match="not a regular file"):
        bundles.list_members(archive(link))
    with pytest.raises(bundles.BundleRejected, match="not a readable"):
        bundles.list_members(b"not a tarball")


def test_the_split_is_fixed_per_dataset_and_disjoint() -> None:
    features = np.arange(200, dtype=np.float32).reshape(100, 2)
    labels = np.arange(100) % 3
    a = holdout.split(features, labels, fraction=0.2, seed_hex="ab" * 32)
    b = holdout.split(features, labels, fraction=0.2, seed_hex="ab" * 32)
    c = holdout.split(features, labels, fraction=0.2, seed_hex="cd" * 32)
    assert len(a.holdout_y) == 20 and len(a.train_y) == 80
    assert np.array_equal(a.holdout_X, b.holdout_X) and not np.array_equal(a.holdout_X, c.holdout_X)
    assert not set(a.train_X[:, 0]) & set(a.holdout_X[:, 0])


def test_datasets_are_read_from_npz_or_csv() -> None:
    buffer = io.BytesIO()
    np.savez(buffer, X=np.ones((12, 3)), y=np.arange(12) % 2)
    features, labels = holdout.read_dataset(buffer.getvalue())
    assert features.shape == (12, 3) and features.dtype == np.float32 and labels.dtype == np.int64
    csv = "a,b,label\n" + "".join(f"{i},{i * 2},{i % 2}\n" for i in range(12))
    features, labels = holdout.read_dataset(csv.encode())
    assert features.shape == (12, 2) and list(labels[:3]) == [0, 1, 0]
    for bad, words in [
        (b"a,b\n1,x\n", "numbers"),
        ("a,label\n" + "1,0\n" * 3, "at least"),
        (b"\xff\xfe", "neither"),
    ]:
        with pytest.raises(holdout.UnusableDataset, match=words):
            holdout.read_dataset(bad if isinstance(bad, bytes) else bad.encode())


def test_image_jobs_need_a_digest_and_a_command_and_no_bundle() -> None:
    base = {
        "name": "img",
        "output": {"format": "sklearn", "path": "m.joblib"},
        "onnx": {"input_shape": [1, 4]},
    }
    image = "registry.example/train@sha256:" + "a" * 64
    with pytest.raises(InvalidInput, match="command"):
        load_spec(json.dumps({**base, "code": {"image": image}}))
    with pytest.raises(InvalidInput, match="not both"):
        load_spec(json.dumps({**base, "code": {"image": image, "command": ["python"], "bundle": "."}}))
    spec = JobSpec.model_validate({**base, "code": {"image": image, "command": ["python", "/app/train.py"]}})
    assert spec.code.entrypoint is None and spec.wire()["code"]["image"] == image
