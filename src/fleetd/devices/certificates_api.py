"""CertificateService: device certificates and the manufacturer CAs of factory provisioning, for admins
(docs/pki.md). The certificate code loads on the first call, not at start."""

from __future__ import annotations

import datetime as dt

import msgspec

from ..core import clock
from ..core.clock import to_dt
from ..http.rpc import Context, Service
from . import registry, storage

service = Service("CertificateService", "Device client certificates and the manufacturer CAs trusted for factory "
                  "provisioning.")


class DeviceCertificate(msgspec.Struct, kw_only=True):
    # The certificate's serial number, lowercase hex.
    serial: str
    device_id: str
    not_before: dt.datetime
    not_after: dt.datetime
    revoked_at: dt.datetime | None = None
    # valid, expired or revoked
    state: str
    # SHA-256 of the certified key's SubjectPublicKeyInfo, hex.
    key_sha256: str


class ListDeviceCertificatesRequest(msgspec.Struct, kw_only=True):
    # Device id, hardware id or unique name.
    id: str


class ListDeviceCertificatesResponse(msgspec.Struct, kw_only=True):
    device_id: str
    # Newest first.
    certificates: list[DeviceCertificate]


@service.method(auth="viewer", readonly=True)
async def ListDeviceCertificates(ctx: Context, req: ListDeviceCertificatesRequest) -> ListDeviceCertificatesResponse:
    """The client certificates issued to a device (also after it was deleted, by its id), and whether each is
    valid, expired or revoked."""
    at = clock.now()

    def read(conn):  # type: ignore[no-untyped-def]
        rows = storage.certificates_of(conn, req.id)
        device_id = req.id if rows else registry.find_device_row(conn, req.id, prefix=True)["id"]
        return device_id, rows or storage.certificates_of(conn, device_id)

    device_id, rows = await ctx.fleet.store.read(read)
    out = []
    for r in rows:
        state = "revoked" if r["revoked_at"] is not None else "expired" if r["not_after"] <= at else "valid"
        nb, na = to_dt(r["not_before"]), to_dt(r["not_after"])
        assert nb is not None and na is not None
        out.append(DeviceCertificate(serial=r["serial"], device_id=r["device_id"], not_before=nb, not_after=na,
                                     revoked_at=to_dt(r["revoked_at"]), state=state, key_sha256=r["key_sha256"]))
    return ListDeviceCertificatesResponse(device_id=device_id, certificates=out)


class TrustManufacturerRequest(msgspec.Struct, kw_only=True):
    # The manufacturer CA certificate, PEM.
    certificate: str
    # Tags every device enrolled through it gets.
    tags: dict[str, str] = {}
    # Devices enrol active at once; otherwise pending, claimed by code (fleetd devices claim).
    auto_activate: bool = False


class ManufacturerCa(msgspec.Struct, kw_only=True):
    id: str
    # SHA-256 of the CA certificate (DER), hex.
    fingerprint: str
    subject: str
    tags: dict[str, str] = {}
    auto_activate: bool = False
    # ISO 8601.
    not_after: str = ""
    # ISO 8601.
    created_at: str = ""


def _out(ca: dict[str, object]) -> ManufacturerCa:
    return msgspec.convert(ca, ManufacturerCa)


@service.method(auth="admin")
async def TrustManufacturer(ctx: Context, req: TrustManufacturerRequest) -> ManufacturerCa:
    """Trust a manufacturer CA: devices with a factory certificate from it enrol without a join token."""
    from . import factory

    return _out(await ctx.fleet.store.write(lambda c: factory.trust(c, ctx.actor, req.certificate, tags=req.tags,
                                                                    auto_activate=req.auto_activate)))


class ListManufacturersResponse(msgspec.Struct, kw_only=True):
    manufacturers: list[ManufacturerCa]


class ListManufacturersRequest(msgspec.Struct, kw_only=True):
    pass


@service.method(auth="viewer", readonly=True)
async def ListManufacturers(ctx: Context, req: ListManufacturersRequest) -> ListManufacturersResponse:
    """The manufacturer CAs trusted for factory provisioning."""
    from . import factory

    found = await ctx.fleet.store.read(factory.list_cas)
    return ListManufacturersResponse(manufacturers=[_out(ca) for ca in found])


class RemoveManufacturerRequest(msgspec.Struct, kw_only=True):
    # Its id or fingerprint.
    id: str


@service.method(auth="admin")
async def RemoveManufacturer(ctx: Context, req: RemoveManufacturerRequest) -> ManufacturerCa:
    """Stop trusting a manufacturer CA; the devices it enrolled stay enrolled."""
    from . import factory

    return _out(await ctx.fleet.store.write(lambda c: factory.remove(c, ctx.actor, req.id)))
