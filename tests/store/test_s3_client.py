"""The S3 client (store/s3.py, store/sigv4.py): AWS's published SigV4 examples, then every operation against a
real S3-compatible server (SeaweedFS, the ``s3_bucket`` fixture of tests/conftest.py)."""

from __future__ import annotations

import hashlib
import os
import ssl
import subprocess
import sys
import threading
import time
import xml.etree.ElementTree as ET
from collections.abc import Iterator
from datetime import UTC, datetime
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from urllib.parse import parse_qsl, urlsplit

import httpx
import pytest

from fleetd.core.errors import InvalidArgument
from fleetd.core.pki import FleetKeys, load_or_create
from fleetd.store.s3 import MIN_PART, S3Client, S3Config, S3Error, parse_xml
from fleetd.store.sigv4 import EMPTY_SHA256, Credentials, presign, sign_headers
from tests.support.services import Bucket

ROOT = Path(__file__).resolve().parents[2]

# --- SigV4: the worked examples of the S3 API reference ("Signature Calculations for the Authorization Header:
# Transferring Payload in a Single Chunk" and "Authenticating Requests: Using Query Parameters") ------------------

AWS = Credentials("AKIAIOSFODNN7EXAMPLE", "wJalrXUtnFEMI/K7MDENG/bPxRfiCYEXAMPLEKEY")
HOST = "examplebucket.s3.amazonaws.com"
WHEN = datetime(2013, 5, 24, tzinfo=UTC)


def _signature(headers: dict[str, str]) -> str:
    return headers["authorization"].rpartition("Signature=")[2]


@pytest.mark.parametrize(("method", "path", "query", "headers", "body", "signed", "signature"), [
    pytest.param("GET", "/test.txt", [], {"Range": "bytes=0-9"}, b"", "host;range;x-amz-content-sha256;x-amz-date",
                 "f0e8bdb87c964420e857bd35b5d6ed310bd44f0170aba48dd91039c6036bdb41", id="GET Object"),
    pytest.param("PUT", "/test$file.text", [], {"Date": "Fri, 24 May 2013 00:00:00 GMT",
                                                 "x-amz-storage-class": "REDUCED_REDUNDANCY"},
                 b"Welcome to Amazon S3.", "date;host;x-amz-content-sha256;x-amz-date;x-amz-storage-class",
                 "98ad721746da40c64f1a55b78f14c238d841ea1380cd77a1b5971af0ece108bd", id="PUT Object"),
    pytest.param("GET", "/", [("lifecycle", "")], {}, b"", "host;x-amz-content-sha256;x-amz-date",
                 "fea454ca298b7da1c68078a5d1bdbfbbe0d65c699e0f91ac7a200a0136783543", id="GET Bucket Lifecycle"),
    pytest.param("GET", "/", [("prefix", "J"), ("max-keys", "2")], {}, b"", "host;x-amz-content-sha256;x-amz-date",
                 "34b48302e7b5fa45bde8084f4b7868a86f0a534bc59db6670ed5711ef69dc6f7", id="Get Bucket (List Objects)"),
])
def test_header_signing_reproduces_the_aws_examples(method: str, path: str, query: list[tuple[str, str]],
                                                    headers: dict[str, str], body: bytes, signed: str,
                                                    signature: str) -> None:
    payload = hashlib.sha256(body).hexdigest()
    out = sign_headers(method, HOST, path, query, headers, payload, AWS, "us-east-1", now=WHEN)
    assert out["authorization"] == (f"AWS4-HMAC-SHA256 Credential=AKIAIOSFODNN7EXAMPLE/20130524/us-east-1/s3/"
                                    f"aws4_request, SignedHeaders={signed}, Signature={signature}")
    assert out["x-amz-content-sha256"] == payload and out["x-amz-date"] == "20130524T000000Z"


def test_presigning_reproduces_the_aws_example() -> None:
    url = presign("GET", f"https://{HOST}", HOST, "/test.txt", AWS, "us-east-1", 86400, now=WHEN)
    assert url == (
        "https://examplebucket.s3.amazonaws.com/test.txt?X-Amz-Algorithm=AWS4-HMAC-SHA256"
        "&X-Amz-Credential=AKIAIOSFODNN7EXAMPLE%2F20130524%2Fus-east-1%2Fs3%2Faws4_request"
        "&X-Amz-Date=20130524T000000Z&X-Amz-Expires=86400&X-Amz-SignedHeaders=host"
        "&X-Amz-Signature=aeeed9bbccd4d02ee5c0109b86d86835f995330da4c265957d157751f604d404")
    for expires in (0, 604801):
        with pytest.raises(ValueError, match="604800"):
            presign("GET", f"https://{HOST}", HOST, "/test.txt", AWS, "us-east-1", expires, now=WHEN)


def test_session_tokens_are_signed_in_the_header_and_in_presigned_urls() -> None:
    temporary = Credentials(AWS.access_key, AWS.secret_key, "token/with+chars")
    plain = sign_headers("GET", HOST, "/test.txt", [], {}, EMPTY_SHA256, AWS, "us-east-1", now=WHEN)
    out = sign_headers("GET", HOST, "/test.txt", [], {}, EMPTY_SHA256, temporary, "us-east-1", now=WHEN)
    assert out["x-amz-security-token"] == "token/with+chars"
    assert "x-amz-security-token" in out["authorization"].partition("SignedHeaders=")[2].split(",")[0]
    assert _signature(out) != _signature(plain)
    url = presign("GET", f"https://{HOST}", HOST, "/test.txt", temporary, "us-east-1", 60, now=WHEN)
    assert "X-Amz-Security-Token=token%2Fwith%2Bchars&" in url


def test_keys_are_encoded_once_per_segment() -> None:
    out = sign_headers("GET", HOST, "/a b/c+d/é", [], {}, EMPTY_SHA256, AWS, "us-east-1", now=WHEN)
    url = presign("GET", f"https://{HOST}", HOST, "/a b/c+d/é", AWS, "us-east-1", 60, now=WHEN)
    assert urlsplit(url).path == "/a%20b/c%2Bd/%C3%A9"
    assert _signature(out) != _signature(sign_headers("GET", HOST, "/a%20b/c%2Bd/%C3%A9", [], {}, EMPTY_SHA256,
                                                      AWS, "us-east-1", now=WHEN))


def test_xml_with_a_doctype_is_refused_before_its_entities_expand() -> None:
    laughs = b'<?xml version="1.0"?><!DOCTYPE a [<!ENTITY x "xxxxxxxx">]><Error><Code>&x;</Code></Error>'
    with pytest.raises(ValueError, match="DOCTYPE"):
        parse_xml(laughs)
    assert ET.fromstring(laughs).findtext("Code") == "xxxxxxxx"  # what plain ElementTree would have done
    assert parse_xml(b"<Error><Code>NoSuchKey</Code></Error>").findtext("Code") == "NoSuchKey"


# --- configuration ----------------------------------------------------------------------------------------------

def test_config_from_the_aws_environment_and_settings_first() -> None:
    env = {"AWS_ACCESS_KEY_ID": "AK", "AWS_SECRET_ACCESS_KEY": "SK", "AWS_SESSION_TOKEN": "TOK",
           "AWS_REGION": "eu-west-3", "AWS_ENDPOINT_URL": "http://127.0.0.1:9000"}
    config = S3Config.from_env("b", env)
    assert config.credentials == Credentials("AK", "SK", "TOK")
    assert (config.region, config.endpoint) == ("eu-west-3", "http://127.0.0.1:9000")
    given = S3Config.from_env("b", env, access_key="mine", secret_key="mine2", region=None, endpoint="https://x")
    assert (given.credentials.access_key, given.region, given.endpoint) == ("mine", "eu-west-3", "https://x")
    with pytest.raises(InvalidArgument, match="AWS_ACCESS_KEY_ID"):
        S3Config.from_env("b", {})
    with S3Client(config) as client:  # an endpoint: path-style
        assert client.presigned_get_url("k", 60).startswith("http://127.0.0.1:9000/b/k?")
    with S3Client(S3Config("b", AWS, region="eu-west-3")) as aws:  # AWS itself: virtual-hosted
        assert aws.presigned_get_url("d/k", 60).startswith("https://b.s3.eu-west-3.amazonaws.com/d/k?")
    with pytest.raises(InvalidArgument, match="CA bundle"):
        S3Client(S3Config("b", AWS, ca_bundle="/nonexistent.pem"))
    with pytest.raises(InvalidArgument, match="endpoint"):
        S3Client(S3Config("b", AWS, endpoint="ftp://x"))


def test_the_default_server_loads_no_s3_client(tmp_path: Path) -> None:
    """The S3 client is imported when an s3:// blob store is configured, never at start nor with the default
    blobs folder (footprint targets)."""
    code = f"""
import sys
import fleetd.cli.serve
from fleetd.app import asgi_app
from fleetd.core.config import load_settings
from fleetd.fleet import Fleet
fleet = Fleet(load_settings({{"data_dir": {str(tmp_path / "data")!r}, "mdns": False}}, None), first_admin=True)
asgi_app(fleet)
fleet.close()
print(sorted(m for m in sys.modules if m.startswith(("fleetd.store.s3", "fleetd.store.sigv4"))))
"""
    p = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120, cwd=ROOT,
                       env={**os.environ, "PYTHONPATH": f"{ROOT / 'src'}:{ROOT / 'agent'}"})
    assert p.returncode == 0, p.stderr
    assert p.stdout.strip() == "[]"


# --- against SeaweedFS ------------------------------------------------------------------------------------------

@pytest.fixture
def s3(s3_bucket: Bucket) -> Iterator[S3Client]:
    config = S3Config(s3_bucket.name, Credentials(s3_bucket.access_key, s3_bucket.secret_key),
                      region=s3_bucket.region, endpoint=s3_bucket.endpoint)
    with S3Client(config) as client:
        yield client


def test_put_get_head_delete(s3: S3Client) -> None:
    body = os.urandom(1000)
    etag = s3.put_object("dir/a b+c.bin", body, content_type="application/octet-stream")
    assert etag.strip('"') == hashlib.md5(body).hexdigest()
    with s3.get_object("dir/a b+c.bin") as obj:
        assert (obj.size, obj.total, obj.first) == (1000, 1000, 0)
        assert obj.read() == body
    info = s3.head_object("dir/a b+c.bin")
    assert info is not None and (info.size, info.etag) == (1000, etag)
    assert info.last_modified is not None and abs(info.last_modified.timestamp() - time.time()) < 300
    assert s3.head_object("dir/missing") is None
    s3.delete_object("dir/a b+c.bin")
    s3.delete_object("dir/a b+c.bin")  # idempotent
    assert s3.head_object("dir/a b+c.bin") is None
    with pytest.raises(S3Error) as missing:
        s3.get_object("dir/a b+c.bin")
    assert (missing.value.status, missing.value.code) == (404, "NoSuchKey")


def test_ranged_gets(s3: S3Client) -> None:
    body = bytes(range(256)) * 40  # 10240 bytes
    s3.put_object("r", body)
    for kwargs, first, last in [({"start": 0, "end": 9}, 0, 9), ({"start": 5000, "end": 5999}, 5000, 5999),
                                ({"suffix": 100}, 10140, 10239), ({"start": 10000}, 10000, 10239),
                                ({"start": 10000, "end": 99999}, 10000, 10239)]:
        with s3.get_object("r", **kwargs) as obj:
            assert (obj.first, obj.size, obj.total) == (first, last - first + 1, len(body)), kwargs
            assert obj.read() == body[first:last + 1], kwargs
    with pytest.raises(S3Error) as past:
        s3.get_object("r", start=len(body))
    assert (past.value.status, past.value.code) == (416, "InvalidRange")
    with pytest.raises(InvalidArgument):
        s3.get_object("r", start=5, end=4)


def _chunks(total: int, size: int = 300_001, fail_after: int | None = None) -> Iterator[bytes]:
    sent = 0
    while sent < total:
        if fail_after is not None and sent >= fail_after:
            raise OSError("the upload's source broke")
        chunk = os.urandom(min(size, total - sent))
        sent += len(chunk)
        yield chunk


def test_multipart_upload_hashes_on_the_way(s3: S3Client) -> None:
    source = list(_chunks(11 * 1024 * 1024 + 12345))
    data = b"".join(source)
    result = s3.upload("big", iter(source), part_size=MIN_PART, digests=("sha256", "md5"))
    assert (result.size, result.sha256) == (len(data), hashlib.sha256(data).hexdigest())
    assert result.digests["md5"] == hashlib.md5(data).hexdigest()
    assert result.etag.strip('"').endswith("-3")  # three parts: 5 + 5 + 1 MiB
    with s3.get_object("big") as obj:
        assert hashlib.sha256(b"".join(obj)).hexdigest() == result.sha256
    small = s3.upload("small", iter([b"ab", b"", b"cd"]))  # under one part: one PUT
    assert (small.size, small.sha256) == (4, hashlib.sha256(b"abcd").hexdigest())
    assert s3.get_object("small").read() == b"abcd"
    assert s3.upload("empty", iter([])).size == 0 and s3.get_object("empty").read() == b""


def test_a_failed_upload_is_aborted(s3: S3Client) -> None:
    with pytest.raises(OSError, match="broke"):
        s3.upload("broken", _chunks(20 * 1024 * 1024, fail_after=12 * 1024 * 1024), part_size=MIN_PART)
    assert s3.head_object("broken") is None
    assert list(s3.list_multipart_uploads()) == []
    # Without the abort the upload would stay (what the assertion above relies on SeaweedFS to show).
    upload_id = s3.create_multipart_upload("left")
    assert [(u.key, u.upload_id) for u in s3.list_multipart_uploads()] == [("left", upload_id)]
    s3.abort_multipart_upload("left", upload_id)
    assert list(s3.list_multipart_uploads()) == []


def test_list_with_prefix_and_pages(s3: S3Client) -> None:
    keys = [f"p/{i:02d}" for i in range(7)] + ["q/0", "p0"]
    for key in keys:
        s3.put_object(key, key.encode())
    listed = list(s3.list_objects("p/", page_size=2))  # four pages
    assert [o.key for o in listed] == sorted(k for k in keys if k.startswith("p/"))
    assert all(o.size == 4 and o.last_modified is not None for o in listed)
    assert [o.key for o in s3.list_objects()] == sorted(keys)
    assert list(s3.list_objects("none/")) == []


def test_presigned_urls(s3: S3Client) -> None:
    s3.put_object("dl/fw.bin", b"firmware")
    url = s3.presigned_get_url("dl/fw.bin", 300)
    answer = httpx.get(url)
    assert (answer.status_code, answer.content) == (200, b"firmware")
    parts = urlsplit(url)
    query = dict(parse_qsl(parts.query))
    tampered = url.replace("dl/fw.bin", "dl/fw.bim")
    other = url.replace(query["X-Amz-Expires"], "600")
    for bad in (tampered, other):
        assert httpx.get(bad).status_code == 403
    short = s3.presigned_get_url("dl/fw.bin", 1)
    time.sleep(2.1)
    refused = httpx.get(short)
    assert refused.status_code == 403 and b"AccessDenied" in refused.content
    with pytest.raises(InvalidArgument, match="604800"):
        s3.presigned_get_url("dl/fw.bin", 604801)


def test_wrong_credentials_give_the_parsed_s3_error(s3_bucket: Bucket) -> None:
    config = S3Config(s3_bucket.name, Credentials(s3_bucket.access_key, "not-the-secret"),
                      region=s3_bucket.region, endpoint=s3_bucket.endpoint)
    with S3Client(config) as client, pytest.raises(S3Error) as refused:
        client.put_object("x", b"x")
    error = refused.value
    assert error.status == 403 and error.code in ("SignatureDoesNotMatch", "AccessDenied")
    assert error.s3_message and "AWS_SECRET_ACCESS_KEY" in str(error)
    assert str(error).startswith(f"S3 PUT x failed (HTTP 403, {error.code}: ")


# --- failures SeaweedFS does not produce on demand: a scripted HTTP server on loopback ---------------------------

class Scripted:
    """An HTTP server that answers each request with the next (status, headers, body) of ``answers`` and records
    (method, path, headers) of every request."""

    def __init__(self, tls: FleetKeys | None = None) -> None:
        self.answers: list[tuple[int, dict[str, str], bytes]] = []
        self.seen: list[tuple[str, str, dict[str, str]]] = []
        scripted = self

        class Handler(BaseHTTPRequestHandler):
            def _answer(self) -> None:
                length = int(self.headers.get("content-length") or 0)
                self.rfile.read(length)
                scripted.seen.append((self.command, self.path, {k.lower(): v for k, v in self.headers.items()}))
                status, headers, body = scripted.answers.pop(0)
                self.send_response(status)
                for k, v in {"content-length": str(len(body)), **headers}.items():
                    self.send_header(k, v)
                self.end_headers()
                if self.command != "HEAD":
                    self.wfile.write(body)

            do_GET = do_PUT = do_POST = do_DELETE = do_HEAD = _answer

            def log_message(self, *args: object) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        if tls is not None:
            context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
            context.load_cert_chain(tls.server_cert_path, tls.server_key_path)
            self.server.socket = context.wrap_socket(self.server.socket, server_side=True)
        scheme = "https" if tls else "http"
        self.endpoint = f"{scheme}://127.0.0.1:{self.server.server_address[1]}"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()


@pytest.fixture
def scripted() -> Iterator[Scripted]:
    server = Scripted()
    yield server
    server.server.shutdown()
    server.server.server_close()


def _client(endpoint: str, sleeps: list[float], retries: int = 3) -> S3Client:
    return S3Client(S3Config("b", AWS, endpoint=endpoint, retries=retries), sleep=sleeps.append)


ERROR = (b"<?xml version='1.0' encoding='UTF-8'?><Error><Code>%s</Code><Message>%s</Message>"
         b"<RequestId>req-1</RequestId></Error>")


def test_idempotent_calls_are_retried_with_backoff_on_5xx_and_429(scripted: Scripted) -> None:
    sleeps: list[float] = []
    scripted.answers = [(503, {}, ERROR % (b"SlowDown", b"Reduce your rate")), (429, {}, b""),
                        (500, {}, b""), (200, {}, b"ok")]
    with _client(scripted.endpoint, sleeps) as client:
        assert client.get_object("k").read() == b"ok"
        assert [m for m, _, _ in scripted.seen] == ["GET"] * 4 and len(sleeps) == 3
        assert sleeps[0] < 0.11 and sleeps[2] >= 0.2  # doubling
        # each attempt is signed afresh and carries the same request
        assert all(h["authorization"].startswith("AWS4-HMAC-SHA256 ") for _, _, h in scripted.seen)
        scripted.answers = [(503, {}, ERROR % (b"SlowDown", b"Reduce your rate"))] * 4
        with pytest.raises(S3Error) as gave_up:
            client.head_object("k")
        assert (gave_up.value.status, len(scripted.seen)) == (503, 8)


def test_other_errors_and_non_idempotent_calls_are_not_retried(scripted: Scripted) -> None:
    sleeps: list[float] = []
    with _client(scripted.endpoint, sleeps) as client:
        scripted.answers = [(403, {"x-amz-request-id": "r"}, ERROR % (b"AccessDenied", b"Access Denied."))]
        with pytest.raises(S3Error) as denied:
            client.delete_object("k")
        assert (denied.value.code, denied.value.s3_message, denied.value.request_id) == (
            "AccessDenied", "Access Denied.", "req-1")
        scripted.answers = [(500, {}, ERROR % (b"InternalError", b"boom"))]
        with pytest.raises(S3Error, match="InternalError: boom"):
            client.create_multipart_upload("k")
        # CompleteMultipartUpload can fail in the body of a 200
        scripted.answers = [(200, {}, ERROR % (b"InvalidPart", b"One or more of the parts was not found."))]
        with pytest.raises(S3Error, match="InvalidPart"):
            client.complete_multipart_upload("k", "u1", ['"e1"'])
        assert len(scripted.seen) == 3 and sleeps == []


def test_part_uploads_are_retried(scripted: Scripted) -> None:
    sleeps: list[float] = []
    scripted.answers = [(502, {}, b""), (200, {"etag": '"p1"'}, b"")]
    with _client(scripted.endpoint, sleeps) as client:
        assert client.upload_part("k", "u/1", 1, b"x" * 10) == '"p1"'
    assert [(m, p) for m, p, _ in scripted.seen] == [("PUT", "/b/k?partNumber=1&uploadId=u%2F1")] * 2
    assert scripted.seen[0][2]["x-amz-content-sha256"] == "UNSIGNED-PAYLOAD"


def test_connection_errors_are_retried_then_reported(scripted: Scripted) -> None:
    endpoint = scripted.endpoint
    scripted.server.shutdown()
    scripted.server.server_close()  # nothing listens there now
    sleeps: list[float] = []
    with _client(endpoint, sleeps, retries=2) as client, pytest.raises(S3Error) as down:
        client.head_object("k")
    assert (down.value.status, down.value.code, len(sleeps)) == (0, "ConnectError", 2)
    assert endpoint in str(down.value)


def test_a_server_ignoring_the_range_still_gives_the_asked_bytes(scripted: Scripted) -> None:
    body = bytes(range(100))
    with _client(scripted.endpoint, []) as client:
        for kwargs, want in [({"start": 10, "end": 19}, body[10:20]), ({"suffix": 5}, body[95:]),
                             ({"start": 90}, body[90:])]:
            scripted.answers = [(200, {}, body)]
            with client.get_object("k", **kwargs) as obj:
                assert (obj.read(), obj.total) == (want, 100)
            assert scripted.seen[-1][2]["range"].startswith("bytes=")
        scripted.answers = [(200, {}, body)]
        with pytest.raises(S3Error) as past:
            client.get_object("k", start=100)
        assert past.value.status == 416


def test_tls_is_verified_against_the_system_or_the_given_ca_bundle(tmp_path: Path) -> None:
    keys = load_or_create(tmp_path)  # a CA of our own and a server certificate for 127.0.0.1
    server = Scripted(tls=keys)
    try:
        sleeps: list[float] = []
        server.answers = [(200, {}, b"ok")]
        with _client(server.endpoint, sleeps, retries=0) as untrusting, pytest.raises(S3Error) as refused:
            untrusting.get_object("k")
        assert refused.value.status == 0 and "CERTIFICATE_VERIFY_FAILED" in str(refused.value)
        config = S3Config("b", AWS, endpoint=server.endpoint, ca_bundle=str(keys.ca_path))
        with S3Client(config) as trusting:
            assert trusting.get_object("k").read() == b"ok"
        assert len(server.seen) == 1
    finally:
        server.server.shutdown()
        server.server.server_close()
