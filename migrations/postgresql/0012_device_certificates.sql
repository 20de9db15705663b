-- Device client certificates issued by the fleet CA (docs/pki.md). Rows stay after their device is deleted:
-- deleting or revoking a device sets revoked_at on every certificate of it, and the CRL lists those until they
-- expire. The serial is the certificate's, in lowercase hex (up to 159 bits: too wide for an bigint column).
CREATE TABLE device_certificates (
    serial      text PRIMARY KEY,
    device_id   text NOT NULL,
    key_sha256  text NOT NULL,  -- SHA-256 of the certified key's SubjectPublicKeyInfo, hex
    not_before  double precision NOT NULL,
    not_after   double precision NOT NULL,
    revoked_at  double precision
);
CREATE INDEX device_certificates_device ON device_certificates(device_id);
CREATE INDEX device_certificates_revoked ON device_certificates(revoked_at) WHERE revoked_at IS NOT NULL;

-- Manufacturer CAs an operator trusts for factory provisioning (fleetd ca trust-manufacturer): a device whose
-- factory certificate chains to one enrols without a join token, pending or active as set here, with these tags.
CREATE TABLE manufacturer_cas (
    id            text PRIMARY KEY,
    fingerprint   text NOT NULL UNIQUE,  -- SHA-256 of the CA certificate's DER, hex
    subject       text NOT NULL,
    pem           text NOT NULL,
    tags          text NOT NULL DEFAULT '{}',
    auto_activate bigint NOT NULL,  -- 1: devices enrol active; 0: pending, claimed by code
    created_at    double precision NOT NULL
);
