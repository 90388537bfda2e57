"""The podman/docker command line carries every isolation guarantee, and unpinned images are refused."""

from __future__ import annotations

import itertools
from pathlib import Path

import pytest

from kernel.errors import ConfigurationError
from training_jobs.sandbox import (
    ImageRejected,
    Limits,
    Mount,
    OciSandbox,
    SandboxRun,
    SandboxUnavailable,
    detect_sandbox,
    make_sandbox,
)

DIGEST = "sha256:" + "ab" * 32
IMAGE = f"registry.example/trainer@{DIGEST}"


def pairs(argv: list[str]) -> set[tuple[str, str]]:
    """(flag, value) pairs of an argv, so each guarantee can be looked up."""
    return {(a, b) for a, b in itertools.pairwise(argv) if a.startswith("-")}


@pytest.fixture
def run(tmp_path: Path) -> SandboxRun:
    for sub in ("data", "code", "out"):
        (tmp_path / sub).mkdir()
    return SandboxRun(
        command=["python", "/job/main.py", "--epochs", "3"],
        mounts=[Mount(tmp_path / "data", "/data"), Mount(tmp_path / "code", "/job")],
        output_dir=tmp_path / "out",
        env={"SEED": "7"},
        limits=Limits(memory_bytes=512 * 1024**2, max_processes=32, tmp_bytes=64 * 1024**2, cpu_seconds=60),
        image=IMAGE,
        name="Job 42/Train!",
    )


@pytest.mark.parametrize("binary", ["podman", "docker"])
def test_command_carries_every_guarantee(binary: str, run: SandboxRun, tmp_path: Path) -> None:
    argv = OciSandbox(binary, cpus=2).build_command(run)
    flags = pairs(argv)
    assert argv[:3] == [binary, "run", "--rm"]
    assert ("--network", "none") in flags
    assert "--read-only" in argv
    assert ("--cap-drop", "ALL") in flags
    assert ("--security-opt", "no-new-privileges") in flags
    assert ("--user", "65534:65534") in flags
    assert ("--pids-limit", "32") in flags
    assert ("--memory", str(512 * 1024**2)) in flags
    assert ("--memory-swap", str(512 * 1024**2)) in flags  # equal to --memory: no swap
    assert ("--cpus", "2") in flags
    assert ("--ulimit", "cpu=60:65") in flags
    assert ("--ulimit", "core=0:0") in flags
    assert ("--tmpfs", f"/tmp:rw,nosuid,nodev,size={64 * 1024**2}") in flags
    assert ("-v", f"{tmp_path / 'data'}:/data:ro") in flags
    assert ("-v", f"{tmp_path / 'code'}:/job:ro") in flags
    assert ("-v", f"{tmp_path / 'out'}:/out:rw") in flags
    assert [v for f, v in flags if f == "-v" and v.endswith(":rw")] == [f"{tmp_path / 'out'}:/out:rw"]
    assert ("--workdir", "/job") in flags
    assert ("-e", "SEED=7") in flags
    assert ("--name", "job-42-train") in flags
    assert "--privileged" not in argv and "--network=host" not in argv
    assert argv[-5:] == [IMAGE, "python", "/job/main.py", "--epochs", "3"]


@pytest.mark.parametrize(
    "image",
    [None, "python:3.11", "registry.example/trainer:latest", "trainer@sha256:short", "x@md5:" + "a" * 32],
)
def test_image_without_a_digest_is_refused(run: SandboxRun, image: str | None) -> None:
    unpinned = SandboxRun(
        command=run.command, mounts=run.mounts, output_dir=run.output_dir, image=image, name=run.name
    )
    with pytest.raises(ImageRejected, match=r"digest|names none"):
        OciSandbox("docker").build_command(unpinned)


def test_paths_that_would_break_the_volume_syntax_are_refused(run: SandboxRun, tmp_path: Path) -> None:
    odd = tmp_path / "a:b"
    odd.mkdir()
    bad = SandboxRun(
        command=run.command, mounts=[Mount(odd, "/data")], output_dir=run.output_dir, image=IMAGE
    )
    with pytest.raises(ConfigurationError):
        OciSandbox("podman").build_command(bad)
    over_out = SandboxRun(
        command=run.command, mounts=[Mount(tmp_path / "data", "/out")], output_dir=run.output_dir, image=IMAGE
    )
    with pytest.raises(ConfigurationError):
        OciSandbox("podman").build_command(over_out)


def test_check_reports_a_missing_binary_or_engine(tmp_path: Path) -> None:
    with pytest.raises(SandboxUnavailable, match="not installed"):
        OciSandbox(str(tmp_path / "no-such-podman")).check()
    failing = tmp_path / "docker"
    failing.write_text("#!/bin/sh\necho 'Cannot connect to the Docker daemon' >&2\nexit 1\n")
    failing.chmod(0o755)
    with pytest.raises(SandboxUnavailable, match="Cannot connect to the Docker daemon"):
        OciSandbox(str(failing)).check()


def test_factory_and_detection_report_what_was_tried() -> None:
    assert make_sandbox("docker").kind == "docker"
    assert make_sandbox("podman").kind == "podman"
    with pytest.raises(SandboxUnavailable, match="unknown sandbox kind"):
        make_sandbox("chroot")
    with pytest.raises(SandboxUnavailable) as info:
        detect_sandbox("podman", binary="/nonexistent/podman")
    assert info.value.status == 503
    assert "Tried: podman:" in info.value.detail
