/* fleetd RTOS shim: the image format (docs/rtos.md, "Image format").
 *
 *   header (64 bytes, little-endian) | payload (payload_size bytes) | TLV trailer
 *
 * The SHA-256 TLV is over header+payload; every signature TLV is an Ed25519
 * signature of that 32-byte digest. */
#ifndef FLEET_IMAGE_H
#define FLEET_IMAGE_H

#include <stdint.h>
#include "fleet/layout.h"
#include "fleet/port.h"

#define FLEET_IMAGE_MAGIC 0x4D494446u      /* "FDIM" read as a little-endian u32 */
#define FLEET_IMAGE_FORMAT_VERSION 1u
#define FLEET_IMAGE_HEADER_SIZE 64u
#define FLEET_DEVICE_TYPE_MAX 31u          /* + NUL in a 32-byte field */

#define FLEET_TLV_INFO_MAGIC 0x6F74u       /* "to" */
#define FLEET_TLV_MAX_SIZE 1024u           /* whole trailer, info header included */
#define FLEET_TLV_SHA256 0x0010u           /* 32 bytes */
#define FLEET_TLV_KEYHASH 0x0011u          /* 32 bytes: SHA-256 of the signing public key */
#define FLEET_TLV_ED25519 0x0020u          /* 64 bytes; follows the KEYHASH it belongs to */

typedef struct fleet_version {
    uint16_t major;
    uint16_t minor;
    uint32_t patch;
} fleet_version_t;

typedef struct fleet_image_header {
    uint32_t magic;
    uint16_t format_version;
    uint16_t header_size;
    uint32_t flags;               /* none defined yet: must be 0 */
    uint32_t payload_size;
    uint32_t security_counter;
    fleet_version_t version;
    char device_type[FLEET_DEVICE_TYPE_MAX + 1];
} fleet_image_header_t;

/* Parses and checks a 64-byte header (magic, format version, header size,
 * flags, device type NUL-terminated and printable). */
int fleet_image_parse_header(const uint8_t raw[FLEET_IMAGE_HEADER_SIZE], fleet_image_header_t *out);

/* 1 if the header's device type (a name, or a pattern in which '*' matches any
 * run of characters) covers this device's type, else 0 (src/dtype.c). */
int fleet_device_type_matches(const char *pattern, const char *device_type);

/* Verifies the image stored at flash offset off (at most max_len bytes):
 * header, hash, a signature by one of cfg's trusted keys, device type (see
 * fleet_device_type_matches), and
 * security counter >= min_counter. buf (>= 64 bytes) is scratch for reads.
 * Fills *hdr on success. Returns FLEET_OK or a FLEET_E_* code. */
int fleet_image_verify(const fleet_port_t *port, const fleet_config_t *cfg, uint32_t off,
                       uint32_t max_len, uint32_t min_counter, uint8_t *buf, uint32_t buf_len,
                       fleet_image_header_t *hdr);

/* Reads the header at off and the TLV info behind the payload: the whole
 * image's size (header + payload + trailer), checked against max_len. No
 * hash or signature check; fleet_image_verify does those. */
int fleet_image_size(const fleet_port_t *port, uint32_t off, uint32_t max_len, fleet_image_header_t *hdr,
                     uint32_t *size);

/* <0, 0, >0 like memcmp. */
int fleet_version_cmp(const fleet_version_t *a, const fleet_version_t *b);

#endif
