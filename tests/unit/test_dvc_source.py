"""``dvc://`` sources as the node reads them: parsing (no DVC import) and holding what a
client reports to the manifest's text."""

from __future__ import annotations

import subprocess
import sys

import pytest

from kernel.errors import InvalidInput
from quality import dvc_source


@pytest.mark.parametrize(
    ("source", "location", "rev", "repo", "path"),
    [
        (
            "dvc://../sensors-repo/data/bearings.csv@main",
            "../sensors-repo/data/bearings.csv",
            "main",
            None,
            None,
        ),
        ("dvc://repo/./data//x.csv@feature/new-rows", "repo/data/x.csv", "feature/new-rows", None, None),
        ("dvc:///srv/repo/x.csv@0a1b2c3", "/srv/repo/x.csv", "0a1b2c3", None, None),
        (
            "dvc://https://host.example/org/repo.git/data/x.csv@v2",
            "https://host.example/org/repo.git/data/x.csv",
            "v2",
            "https://host.example/org/repo.git",
            "data/x.csv",
        ),
        (
            "dvc://https://user:s3cret@host.example:8443/org/repo.git/x.csv@v2",
            "https://user:s3cret@host.example:8443/org/repo.git/x.csv",
            "v2",
            "https://host.example:8443/org/repo.git",
            "x.csv",
        ),
        (
            "dvc://file:///tmp/r/repo.git/a/b/c.npz@main",
            "file:///tmp/r/repo.git/a/b/c.npz",
            "main",
            "file:///tmp/r/repo.git",
            "a/b/c.npz",
        ),
        (
            "dvc://git@host.example:org/repo.git/x.csv@main",
            "git@host.example:org/repo.git/x.csv",
            "main",
            "host.example:org/repo.git",
            "x.csv",
        ),
    ],
)
def test_parse(source: str, location: str, rev: str, repo: str | None, path: str | None) -> None:
    ref = dvc_source.parse(source)
    assert (ref.location, ref.rev, ref.repo, ref.path) == (location, rev, repo, path)
    assert "s3cret" not in str(ref.repo)


@pytest.mark.parametrize(
    ("source", "reason"),
    [
        ("dvc://repo/data/x.csv", "ends in @<rev>"),
        ("dvc://@main", "ends in @<rev>"),
        ("dvc://https://user@host/org/repo.git/x.csv", "ends in @<rev>"),
        ("dvc://repo/x.csv@", "not a git revision"),
        ("dvc://repo/x.csv@-x", "not a git revision"),
        ("dvc://repo/x.csv@a..b", "not a git revision"),
        ("dvc://repo/x.csv@main.lock", "not a git revision"),
        ("dvc://repo/x.csv@ma in", "not a git revision"),
        ("dvc://repo/x.csv@" + "a" * 201, "not a git revision"),
        ("dvc://https://host/org/repo/x.csv@main", "ends in .git"),
        ("dvc://https://host/org/repo.git/@main", "name a file inside"),
        ("dvc://https://host/org/repo.git/../../etc/passwd@main", "name a file inside"),
        ("dvc://repo/x\x00.csv@main", "NUL"),
        ("data/x.csv", "not a dvc:// source"),
    ],
)
def test_parse_refuses(source: str, reason: str) -> None:
    with pytest.raises(InvalidInput) as refused:
        dvc_source.parse(source)
    assert reason in refused.value.detail and "\n" not in refused.value.detail


GOOD = {"repo": "../sensors-repo", "path": "data/bearings.csv", "rev": "main"}


@pytest.mark.parametrize(
    ("reported", "problem"),
    [
        (GOOD, None),
        ({**GOOD, "repo": "..", "path": "sensors-repo/data/bearings.csv"}, None),
        ({**GOOD, "rev": "v2"}, "revision"),
        ({**GOOD, "path": "data/other.csv"}, "do not make up"),
        ({**GOOD, "repo": "../sensors-repo/data/x", "path": "../bearings.csv"}, "not inside"),
        ({**GOOD, "repo": "/", "path": "/etc/passwd"}, "not inside"),
    ],
)
def test_check_reported_local(reported: dict[str, str], problem: str | None) -> None:
    ref = dvc_source.parse("dvc://../sensors-repo/data/bearings.csv@main")
    found = dvc_source.check_reported(ref, reported)
    assert found is None if problem is None else problem in str(found)


def test_check_reported_url() -> None:
    ref = dvc_source.parse("dvc://https://u:p@host/org/repo.git/x.csv@v2")
    good = {"repo": "https://host/org/repo.git", "path": "x.csv", "rev": "v2"}
    assert dvc_source.check_reported(ref, good) is None
    assert dvc_source.check_reported(ref, {**good, "repo": "https://u:p@host/org/repo.git"}) is not None
    assert dvc_source.check_reported(ref, {**good, "path": "y.csv"}) is not None


def test_parsing_does_not_import_dvc() -> None:
    code = (
        "import sys; from quality import dvc_source; import marketplace.manifests.service; "
        "dvc_source.parse('dvc://r/x.csv@main'); print('dvc' in sys.modules)"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"


def test_messages_never_carry_a_urls_credentials() -> None:
    assert dvc_source.redact("dvc://x.csv@main") == "dvc://x.csv@main"
    assert dvc_source.redact("dvc://https://u:tok@h/o/r.git/x.csv@v2") == "dvc://https://h/o/r.git/x.csv@v2"
    for source in ("dvc://https://u:tok@h/o/r/x.csv@v2", "dvc://https://u:tok@h/o/r.git/x.csv"):
        with pytest.raises(InvalidInput) as refused:
            dvc_source.parse(source)
        assert "tok" not in refused.value.detail
    assert "tok" not in dvc_source.parse("dvc://https://u:tok@h/o/r.git/x.csv@v2").shown
