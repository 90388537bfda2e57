"""DVC-sourced datasets through plan/apply: a real git + DVC repository with a local remote.

The repository (built once for the module) holds three commits of ``data/bearings.csv``:
``v1``, ``docs`` (only a notes file changed) and ``v2`` (new rows), all pushed to a local DVC
remote. The manifest names ``dvc://../sensors-repo/data/bearings.csv@release``; each test
moves the ``release`` branch where it needs it, as a provider's repository moves.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from sqlmodel import Session, select

from kernel.canonical import canonical_hash
from kernel.errors import InvalidInput
from marketplace.manifests.cli import prepared
from tests import services
from tests.integration.test_manifests import detail, send

DVC = str(Path(sys.executable).with_name("dvc"))
ENV = {
    **os.environ,
    "GIT_AUTHOR_NAME": "Acme Data",
    "GIT_AUTHOR_EMAIL": "data@acme.example",
    "GIT_COMMITTER_NAME": "Acme Data",
    "GIT_COMMITTER_EMAIL": "data@acme.example",
    "DVC_NO_ANALYTICS": "1",
}
V1 = "bearing,rpm,temperature_c\nB001,1500,41.5\nB002,1480,43.0\n"
V2 = V1 + "B003,1510,40.2\n"
MANIFEST = """apiVersion: agora/v1
offerings:
  - name: bearings
    title: Bearing temperatures
    source: {source}
    access_modes: [download]
"""


@dataclass
class DvcRepo:
    root: Path
    repo: Path
    remote: Path
    commits: dict[str, str]
    md5s: dict[str, str]

    def release(self, tag: str) -> None:
        git(self.repo, "branch", "-f", "release", tag)

    def manifest(self, source: str, name: str = "manifest.yaml") -> Path:
        directory = self.root / "manifests"
        directory.mkdir(exist_ok=True)
        path = directory / name
        path.write_text(MANIFEST.format(source=source))
        return path


def git(cwd: Path, *args: str) -> str:
    return run(cwd, "git", *args)


def run(cwd: Path, *args: str) -> str:
    done = subprocess.run(args, cwd=cwd, env=ENV, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, f"{' '.join(args)}: {done.stderr}"
    return done.stdout.strip()


def md5_of(repo: Path) -> str:
    dvc_file = (repo / "data" / "bearings.csv.dvc").read_text()
    return next(line.split(":")[1].strip() for line in dvc_file.splitlines() if "md5:" in line)


@pytest.fixture(scope="module")
def dvc_repo(tmp_path_factory: pytest.TempPathFactory) -> DvcRepo:
    root = tmp_path_factory.mktemp("dvc")
    repo, remote = root / "sensors-repo", root / "remote"
    (repo / "data").mkdir(parents=True)
    git(repo, "init", "-q", "-b", "main")
    run(repo, DVC, "init", "-q")
    run(repo, DVC, "config", "core.analytics", "false")
    run(repo, DVC, "remote", "add", "-d", "local", str(remote))
    commits, md5s = {}, {}
    for tag, change in (("v1", V1), ("docs", None), ("v2", V2)):
        if change is None:
            (repo / "NOTES.md").write_text("sensor calibration notes\n")
            git(repo, "add", "NOTES.md")
        else:
            (repo / "data" / "bearings.csv").write_text(change)
            run(repo, DVC, "add", "-q", "data/bearings.csv")
            git(repo, "add", "-A")
        git(repo, "commit", "-q", "-m", tag)
        git(repo, "tag", tag)
        commits[tag], md5s[tag] = git(repo, "rev-parse", "HEAD"), md5_of(repo)
    run(repo, DVC, "push", "-q", "--all-tags")
    return DvcRepo(root, repo, remote, commits, md5s)


def test_a_moving_rev_publishes_a_version_only_when_the_data_changes(
    client, auth, runtime, dvc_repo: DvcRepo
) -> None:
    from contracts.models import Notarization

    dvc_repo.release("v1")
    manifest = dvc_repo.manifest("dvc://../sensors-repo/data/bearings.csv@release")
    first = send(client, auth, manifest)
    assert [c["action"] for c in first["changes"]] == ["create"]
    send(client, auth, manifest, apply=True)
    offering = detail(client, auth, "bearings")
    expected = {
        "kind": "dvc",
        "repo": "../sensors-repo",
        "path": "data/bearings.csv",
        "rev": "release",
        "commit": dvc_repo.commits["v1"],
        "md5": dvc_repo.md5s["v1"],
    }
    assert [v["source"] for v in offering["versions"]] == [expected]
    assert offering["media_type"] == "text/csv"
    with Session(runtime.engine) as session:
        sha = offering["sha256"].removeprefix("sha256:")
        notarization = session.exec(select(Notarization).where(Notarization.content_hash == sha)).one()
    assert notarization.metadata_doc["source"] == expected
    assert notarization.metadata_doc["version"] == 1
    assert notarization.metadata_hash == canonical_hash(notarization.metadata_doc)

    dvc_repo.release("docs")  # a commit that touches another file
    moved = send(client, auth, manifest)
    assert moved["changes"] == [] and moved["unchanged"] == ["bearings"]
    short = dvc_repo.commits["docs"][:12]
    assert any("moved from commit" in n and short in n for n in moved["notes"]), moved["notes"]

    dvc_repo.release("v2")
    changed = send(client, auth, manifest)
    assert [(c["action"], c["target"]) for c in changed["changes"]] == [("new-version", "bearings")]
    assert "version 2" in changed["changes"][0]["detail"]
    send(client, auth, manifest, apply=True)
    versions = detail(client, auth, "bearings")["versions"]
    assert [v["version"] for v in versions] == [1, 2]
    assert versions[1]["source"] == {**expected, "commit": dvc_repo.commits["v2"], "md5": dvc_repo.md5s["v2"]}
    assert versions[1]["size"] == len(V2)
    assert send(client, auth, manifest)["changes"] == []


def test_data_only_in_the_remote_and_git_urls_still_resolve(dvc_repo: DvcRepo, tmp_path: Path) -> None:
    from quality import dvc_source

    copy = tmp_path / "copy"
    shutil.copytree(dvc_repo.repo, copy)
    shutil.rmtree(copy / ".dvc" / "cache")
    resolved = dvc_source.resolve(
        dvc_source.parse("dvc://copy/data/bearings.csv@v2"), tmp_path, tmp_path / "a"
    )
    assert (resolved.commit, resolved.md5, resolved.repo) == (
        dvc_repo.commits["v2"],
        dvc_repo.md5s["v2"],
        "copy",
    )
    assert (tmp_path / "a").read_text() == V2

    bare = tmp_path / "bare.git"
    git(tmp_path, "clone", "-q", "--bare", str(dvc_repo.repo), str(bare))
    ref = dvc_source.parse(f"dvc://file://{bare}/data/bearings.csv@v1")
    by_url = dvc_source.resolve(ref, tmp_path, tmp_path / "b")
    assert (by_url.repo, by_url.path, by_url.commit) == (
        f"file://{bare}",
        "data/bearings.csv",
        dvc_repo.commits["v1"],
    )
    assert (tmp_path / "b").read_text() == V1

    shutil.rmtree(copy / ".dvc" / "cache", ignore_errors=True)
    run(copy, DVC, "remote", "modify", "local", "url", str(tmp_path / "gone"))
    with pytest.raises(InvalidInput) as gone:
        dvc_source.resolve(dvc_source.parse("dvc://copy/data/bearings.csv@v2"), tmp_path, tmp_path / "c")
    assert "neither in the DVC cache nor in the repository's DVC remote" in gone.value.detail


@pytest.mark.parametrize(
    ("source", "reason"),
    [
        ("dvc://../nowhere/data/bearings.csv@main", "no DVC repository"),
        ("dvc://../sensors-repo/data/bearings.csv@no-such-rev", "unknown git revision 'no-such-rev'"),
        ("dvc://../sensors-repo/NOTES.md@docs", "not tracked by DVC"),
        ("dvc://../sensors-repo/data/other.csv@v2", "no file data/other.csv at revision v2"),
        ("dvc://../sensors-repo/data@v2", "name a file"),
        ("dvc://file:///nonexistent/repo.git/data/bearings.csv@v1", "cannot be cloned"),
    ],
)
def test_bad_dvc_sources_are_one_line_errors(dvc_repo: DvcRepo, source: str, reason: str) -> None:
    manifest = dvc_repo.manifest(source, name="bad.yaml")
    with pytest.raises(InvalidInput) as refused, prepared(manifest):
        pass
    detail = refused.value.detail
    assert detail.startswith("bad.yaml:5: offerings.0.source: ") and source in detail, detail
    assert reason in detail and "\n" not in detail


@pytest.mark.parametrize(
    ("reported", "fragment"),
    [
        (None, "needs what the client resolved it to"),
        ({"rev": "main"}, "not the manifest's 'release'"),
        ({"path": "data/other.csv"}, "do not make up"),
        ({"repo": "/elsewhere", "path": "../../etc/passwd"}, "not inside its repository"),
        ({"commit": "not-a-commit"}, "commit"),
        ({"md5": "0" * 31}, "md5"),
        ({"extra": 1}, "extra"),
    ],
)
def test_the_node_holds_a_reported_dvc_source_to_the_manifest(
    client, auth, reported: dict[str, Any] | None, fragment: str
) -> None:
    good = {
        "kind": "dvc",
        "repo": "../sensors-repo",
        "path": "data/bearings.csv",
        "rev": "release",
        "commit": "a" * 40,
        "md5": "b" * 32,
    }
    source = None if reported is None else {**good, **reported}
    text = MANIFEST.format(source="dvc://../sensors-repo/data/bearings.csv@release")
    sources = {"bearings": {"sha256": "c" * 64, "size": 10, "source": source}}
    r = client.post("/api/v1/manifests/plan", json={"manifest": text, "sources": sources}, headers=auth())
    assert r.status_code == 400, r.text
    assert fragment in json.dumps(r.json())
    file_text = MANIFEST.format(source="data/bearings.csv")
    r = client.post(
        "/api/v1/manifests/plan",
        json={"manifest": file_text, "sources": {"bearings": {**sources["bearings"], "source": good}}},
        headers=auth(),
    )
    assert r.status_code == 400 and "reported for a file source" in r.json()["detail"]
    assert client.get("/api/v1/offerings", headers=auth()).json()["items"] == []


def test_cli_apply_from_a_dvc_repository(live_node: services.LiveNode, dvc_repo: DvcRepo) -> None:
    dvc_repo.release("v1")
    manifest = str(dvc_repo.manifest("dvc://../sensors-repo/data/bearings.csv@release", name="cli.yaml"))
    home = str(live_node.home)
    assert "applied: 1 create" in live_node.cli("apply", "-f", manifest, "--home", home).stdout
    dvc_repo.release("docs")
    planned = live_node.cli("plan", "-f", manifest, "--home", home).stdout
    assert "no changes" in planned and "note" in planned and "same data" in planned
