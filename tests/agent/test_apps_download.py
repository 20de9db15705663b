"""Resumable downloads (fleet_agent.download) against a blob server that answers Range/If-Range like fleetd."""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

import pytest

from fleet_agent.download import DownloadError, download
from tests.agent.apps_support import BASE_URL, BlobServer, FakeClient, make_artifact

DATA = os.urandom(200_000)


@pytest.fixture
def server() -> BlobServer:
    s = BlobServer()
    s.add(DATA)
    return s


@pytest.fixture
def client(server: BlobServer) -> FakeClient:
    return FakeClient(server)


def test_a_download_lands_complete_under_its_sha256(client: FakeClient, server: BlobServer, tmp_path: Path) -> None:
    art = make_artifact(DATA)
    seen: list[int] = []
    path = download(client, art, tmp_path, lambda done, total: seen.append(done))
    assert path == tmp_path / art["sha256"]
    assert path.read_bytes() == DATA
    assert not (tmp_path / f"{art['sha256']}.part").exists()
    assert seen[-1] == len(DATA) and seen == sorted(seen)
    [req] = server.requests
    # The artifact names the server's public URL; the token goes only to the server we talk to.
    assert str(req.url) == f"{BASE_URL}/v1/blobs/{art['sha256']}"
    assert "range" not in req.headers


def test_a_download_cut_half_way_resumes_from_where_it_stopped(client: FakeClient, server: BlobServer,
                                                               tmp_path: Path) -> None:
    art = make_artifact(DATA)
    server.cuts = [len(DATA) // 2]
    with pytest.raises(DownloadError) as e:
        download(client, art, tmp_path, deadline=0)  # no retry: the agent "stops" here
    assert e.value.transient and "interrupted after 100000 of 200000 bytes" in e.value.message
    part = tmp_path / f"{art['sha256']}.part"
    assert part.read_bytes() == DATA[:100_000]

    path = download(client, art, tmp_path)  # a new attempt, e.g. after the agent restarted
    assert path.read_bytes() == DATA
    resumed = server.requests[-1]
    assert resumed.headers["range"] == "bytes=100000-"
    assert resumed.headers["if-range"] == f'"{art["sha256"]}"'


def test_a_transient_cut_is_retried_within_one_call(client: FakeClient, server: BlobServer, tmp_path: Path) -> None:
    art = make_artifact(DATA)
    server.cuts = [30_000]
    assert download(client, art, tmp_path, deadline=30).read_bytes() == DATA
    assert [r.headers.get("range") for r in server.requests] == [None, "bytes=30000-"]


def test_a_server_that_ignores_the_range_is_followed_from_byte_zero(client: FakeClient, server: BlobServer,
                                                                    tmp_path: Path) -> None:
    art = make_artifact(DATA)
    (tmp_path / f"{art['sha256']}.part").write_bytes(DATA[:5000])
    server.honour_range = False  # as fleetd does when If-Range does not match: 200 and the whole file
    assert download(client, art, tmp_path).read_bytes() == DATA
    assert server.requests[0].headers["range"] == "bytes=5000-"


def test_a_part_that_is_not_a_prefix_of_the_blob_fails_and_is_discarded(client: FakeClient, tmp_path: Path) -> None:
    art = make_artifact(DATA)
    part = tmp_path / f"{art['sha256']}.part"
    part.write_bytes(b"x" * 5000)
    with pytest.raises(DownloadError, match="SHA-256"):
        download(client, art, tmp_path)
    assert part.stat().st_size == 0
    assert download(client, art, tmp_path).read_bytes() == DATA


def test_more_bytes_than_the_manifest_says_are_refused(client: FakeClient, server: BlobServer,
                                                       tmp_path: Path) -> None:
    server.extra = b"and more"
    with pytest.raises(DownloadError, match="more than the 200000 bytes") as e:
        download(client, make_artifact(DATA), tmp_path)
    assert not e.value.transient
    assert not (tmp_path / make_artifact(DATA)["sha256"]).exists()


def test_a_refused_download_says_why(client: FakeClient, server: BlobServer, tmp_path: Path) -> None:
    server.statuses = [403]
    with pytest.raises(DownloadError, match=r"HTTP 403: you may not download this blob") as e:
        download(client, make_artifact(DATA), tmp_path)
    assert not e.value.transient


def test_an_expired_token_is_renewed_once(client: FakeClient, server: BlobServer, tmp_path: Path) -> None:
    server.statuses = [401]
    assert download(client, make_artifact(DATA), tmp_path).read_bytes() == DATA
    assert client.token_resets == 1


def test_an_unavailable_server_is_retried(client: FakeClient, server: BlobServer, tmp_path: Path) -> None:
    server.statuses = [503]
    assert download(client, make_artifact(DATA), tmp_path, deadline=30).read_bytes() == DATA
    assert len(server.requests) == 2


def test_a_full_disk_keeps_a_valid_part_for_later(client: FakeClient, tmp_path: Path) -> None:
    small = tmp_path / "small"
    small.mkdir()
    if os.geteuid() != 0 or subprocess.run(["mount", "-t", "tmpfs", "-o", "size=64k", "tmpfs", str(small)],
                                           capture_output=True).returncode != 0:
        pytest.skip("needs root and permission to mount a small tmpfs")
    art = make_artifact(DATA)
    try:
        with pytest.raises(DownloadError, match="no space left on the device") as e:
            download(client, art, small)
        assert "free some space and deploy again" in e.value.message
        part = small / f"{art['sha256']}.part"
        kept = part.read_bytes()
        assert 0 < len(kept) < len(DATA) and DATA.startswith(kept)
        roomy = tmp_path / "roomy"
        roomy.mkdir()
        shutil.copy(part, roomy / part.name)
    finally:
        subprocess.run(["umount", str(small)], check=True)
    assert download(client, art, roomy).read_bytes() == DATA
    assert client.server.requests[-1].headers["range"] == f"bytes={len(kept)}-"


@pytest.mark.parametrize(("server", "location", "followed"), [
    ("https://fleet.lan:8420", "https://bucket.example.net/b/k?X-Amz-Signature=ab", True),
    ("http://127.0.0.1:8420", "http://127.0.0.1:8333/b/k", True),  # the server's own scheme
    ("https://fleet.lan:8420", "/v1/blobs/elsewhere", True),  # relative: the server itself
    ("https://fleet.lan:8420", "http://bucket.example.net/b/k", False),
    ("http://127.0.0.1:8420", "ftp://bucket.example.net/k", False),
])
def test_a_download_redirect_is_followed_only_to_https_or_the_servers_scheme(
        server: str, location: str, followed: bool) -> None:
    from fleet_agent.download import redirect_target
    from fleetd.cli.devclient import DeviceError
    from fleetd.cli.devclient import redirect_target as simulator_target

    url = f"{server}/v1/blobs/{'ab' * 32}"
    if followed:
        assert redirect_target(server, url, location) == simulator_target(server, url, location)
        assert redirect_target(server, url, location).endswith(location.rpartition("/")[2])
    else:
        with pytest.raises(DownloadError, match="not https: refused"):
            redirect_target(server, url, location)
        with pytest.raises(DeviceError, match="not https: refused"):
            simulator_target(server, url, location)
