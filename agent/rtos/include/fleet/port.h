/* fleetd RTOS shim: the port interface.
 *
 * Everything hardware-specific is reached through the function pointers in
 * fleet_port_t, which the integrator fills in and owns. The shim keeps no
 * globals; every piece of state lives in structs the caller allocates. */
#ifndef FLEET_PORT_H
#define FLEET_PORT_H

#include <stddef.h>
#include <stdint.h>

/* Return codes shared by the whole shim: 0 is success, negative is an error. */
enum {
    FLEET_OK = 0,
    FLEET_E_IO = -1,         /* the port failed (flash, transport) */
    FLEET_E_INVALID = -2,    /* bad argument or malformed input */
    FLEET_E_FORMAT = -3,     /* image header or TLV malformed, truncated */
    FLEET_E_HASH = -4,       /* SHA-256 does not match */
    FLEET_E_SIGNATURE = -5,  /* no signature verifies with a trusted key */
    FLEET_E_DEVICE_TYPE = -6,/* image is for another device type */
    FLEET_E_DOWNGRADE = -7,  /* security counter below the device's minimum */
    FLEET_E_NO_IMAGE = -8,   /* no bootable image */
    FLEET_E_STATE = -9,      /* operation not allowed in the current state */
    FLEET_E_SPACE = -10,     /* does not fit (slot, buffer) */
    FLEET_E_HTTP = -11,      /* unexpected HTTP status from the server */
    FLEET_E_PROTOCOL = -12,  /* server answer not understood */
    FLEET_E_CONFLICT = -13   /* Enroll: the hardware id is enrolled with another key (409); an admin
                                re-keys the device ('fleetd devices rekey') or deletes it */
};

/* Flash: one device holding both slots, the scratch sector and the state area.
 * Offsets are absolute within this device. */
typedef struct fleet_flash {
    void *ctx;
    uint32_t sector_size;   /* erase unit, a power of two */
    uint32_t write_align;   /* program unit (1, 4, 8, 16, ...); writes are aligned and a multiple of it */
    uint8_t erased_value;   /* what an erased byte reads as, usually 0xFF */
    int (*read)(void *ctx, uint32_t off, void *buf, uint32_t len);
    int (*write)(void *ctx, uint32_t off, const void *buf, uint32_t len);
    int (*erase)(void *ctx, uint32_t off, uint32_t len); /* sector aligned */
} fleet_flash_t;

/* Crypto. Only one SHA-256 runs at a time, so the port owns its context. */
typedef struct fleet_crypto {
    void *ctx;
    void (*sha256_init)(void *ctx);
    void (*sha256_update)(void *ctx, const void *data, size_t len);
    void (*sha256_final)(void *ctx, uint8_t out[32]);
    /* 0 when sig is a valid Ed25519 (RFC 8032) signature of msg by pk. */
    int (*ed25519_verify)(void *ctx, const uint8_t sig[64], const uint8_t *msg, size_t len,
                          const uint8_t pk[32]);
    /* Sign with the device's own key (device authentication). May be NULL on
     * the boot side. The device's public key is fleet_client_config_t.device_public_key. */
    int (*ed25519_sign)(void *ctx, uint8_t sig[64], const uint8_t *msg, size_t len);
} fleet_crypto_t;

/* HTTP transport. The port owns TLS and pins the fleet CA. */
typedef int (*fleet_body_cb)(void *user, const uint8_t *data, size_t len); /* nonzero aborts */

typedef struct fleet_http_request {
    const char *method;        /* "POST", "GET" */
    const char *path;          /* "/fleetd.v1.DeviceService/CheckIn", "/v1/blobs/<sha256>" */
    const char *bearer;        /* NULL, or the bearer token */
    const char *content_type;  /* NULL, or "application/json" */
    const uint8_t *body;
    size_t body_len;
    uint32_t range_start;      /* nonzero: send "Range: bytes=<range_start>-" */
    uint32_t range_end;        /* nonzero: send "Range: bytes=<range_start>-<range_end>" (inclusive) */
} fleet_http_request_t;

typedef struct fleet_transport {
    void *ctx;
    /* Sends req; streams the response body to on_body; sets *status to the
     * HTTP status (before the first on_body call, so the callback can tell a
     * 206 body from an error body). Returns FLEET_OK when an answer arrived
     * (any status). */
    int (*request)(void *ctx, const fleet_http_request_t *req, int *status, fleet_body_cb on_body,
                   void *user);
} fleet_transport_t;

typedef struct fleet_port {
    fleet_flash_t flash;
    fleet_crypto_t crypto;
    fleet_transport_t transport;        /* unused by the boot side */
    uint32_t (*now_ms)(void *ctx);      /* monotonic milliseconds */
    void (*reboot)(void *ctx);          /* does not return on hardware */
    void *sys_ctx;                      /* passed to now_ms and reboot */
} fleet_port_t;

#endif
