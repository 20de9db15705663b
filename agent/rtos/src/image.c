/* Image verification: header, TLV trailer, streaming SHA-256 over flash,
 * Ed25519 signature by a trusted key, device type, security counter.
 * Every length read from flash is untrusted and checked before use. */
#include <string.h>

#include "fleet/image.h"
#include "internal.h"

#define TLV_INFO_SIZE 4u

static int dtype_char_ok(uint8_t c) {
    return (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9') || c == '.' ||
           c == '_' || c == '-' || c == '*';
}

int fleet_image_parse_header(const uint8_t raw[FLEET_IMAGE_HEADER_SIZE], fleet_image_header_t *out) {
    uint32_t n = 0;
    if (fleet_rd32(raw) != FLEET_IMAGE_MAGIC || fleet_rd16(raw + 4) != FLEET_IMAGE_FORMAT_VERSION ||
        fleet_rd16(raw + 6) != FLEET_IMAGE_HEADER_SIZE || fleet_rd32(raw + 8) != 0 || fleet_rd32(raw + 60) != 0)
        return FLEET_E_FORMAT;
    while (n <= FLEET_DEVICE_TYPE_MAX && raw[28 + n] != 0) {
        if (!dtype_char_ok(raw[28 + n])) return FLEET_E_FORMAT;
        n++;
    }
    if (n == 0 || n > FLEET_DEVICE_TYPE_MAX) return FLEET_E_FORMAT;
    for (uint32_t i = n; i <= FLEET_DEVICE_TYPE_MAX; i++)
        if (raw[28 + i] != 0) return FLEET_E_FORMAT;
    out->magic = FLEET_IMAGE_MAGIC;
    out->format_version = FLEET_IMAGE_FORMAT_VERSION;
    out->header_size = FLEET_IMAGE_HEADER_SIZE;
    out->flags = 0;
    out->payload_size = fleet_rd32(raw + 12);
    out->security_counter = fleet_rd32(raw + 16);
    out->version.major = fleet_rd16(raw + 20);
    out->version.minor = fleet_rd16(raw + 22);
    out->version.patch = fleet_rd32(raw + 24);
    memcpy(out->device_type, raw + 28, FLEET_DEVICE_TYPE_MAX + 1);
    return FLEET_OK;
}

int fleet_image_size(const fleet_port_t *port, uint32_t off, uint32_t max_len, fleet_image_header_t *hdr,
                     uint32_t *size) {
    uint8_t raw[FLEET_IMAGE_HEADER_SIZE];
    uint32_t room, total;
    int rc;
    if (max_len < FLEET_IMAGE_HEADER_SIZE + TLV_INFO_SIZE) return FLEET_E_FORMAT;
    if ((rc = fleet_flash_read(port, off, raw, sizeof raw)) != FLEET_OK) return rc;
    if ((rc = fleet_image_parse_header(raw, hdr)) != FLEET_OK) return rc;
    room = max_len - FLEET_IMAGE_HEADER_SIZE;
    if (hdr->payload_size > room - TLV_INFO_SIZE) return FLEET_E_FORMAT;
    room -= hdr->payload_size;
    if ((rc = fleet_flash_read(port, off + FLEET_IMAGE_HEADER_SIZE + hdr->payload_size, raw, TLV_INFO_SIZE)) !=
        FLEET_OK)
        return rc;
    total = fleet_rd16(raw + 2);
    if (fleet_rd16(raw) != FLEET_TLV_INFO_MAGIC || total < TLV_INFO_SIZE || total > FLEET_TLV_MAX_SIZE ||
        total > room)
        return FLEET_E_FORMAT;
    *size = FLEET_IMAGE_HEADER_SIZE + hdr->payload_size + total;
    return FLEET_OK;
}

/* The trusted key whose SHA-256 is keyhash, or -1. Uses the port's one
 * SHA-256 context, so only call it once the image digest is final. */
static int find_key(const fleet_port_t *port, const fleet_config_t *cfg, const uint8_t keyhash[32]) {
    uint8_t h[32];
    for (uint32_t i = 0; i < cfg->trusted_key_count; i++) {
        port->crypto.sha256_init(port->crypto.ctx);
        port->crypto.sha256_update(port->crypto.ctx, cfg->trusted_keys[i], 32);
        port->crypto.sha256_final(port->crypto.ctx, h);
        if (memcmp(h, keyhash, 32) == 0) return (int)i;
    }
    return -1;
}

/* Walks the trailer at off (total bytes, info header included). Without a
 * digest it only checks the structure and copies the SHA256 value to sha;
 * with one it checks the signatures: FLEET_OK when one verifies. */
static int tlv_walk(const fleet_port_t *port, const fleet_config_t *cfg, uint32_t off, uint32_t total,
                    const uint8_t *digest, uint8_t *sha) {
    uint8_t e[TLV_INFO_SIZE], val[64];
    uint32_t pos = TLV_INFO_SIZE, count = 0;
    uint16_t prev = 0, type, len;
    int key = -1, signed_ok = 0, rc;
    while (pos < total) {
        if (total - pos < TLV_INFO_SIZE) return FLEET_E_FORMAT;
        if ((rc = fleet_flash_read(port, off + pos, e, TLV_INFO_SIZE)) != FLEET_OK) return rc;
        type = fleet_rd16(e);
        len = fleet_rd16(e + 2);
        pos += TLV_INFO_SIZE;
        if (len > total - pos) return FLEET_E_FORMAT;
        if ((count == 0) != (type == FLEET_TLV_SHA256)) return FLEET_E_FORMAT; /* exactly one, first */
        if ((prev == FLEET_TLV_KEYHASH) != (type == FLEET_TLV_ED25519)) return FLEET_E_FORMAT;
        if ((type == FLEET_TLV_SHA256 || type == FLEET_TLV_KEYHASH) && len != 32) return FLEET_E_FORMAT;
        if (type == FLEET_TLV_ED25519 && len != 64) return FLEET_E_FORMAT;
        if (type == FLEET_TLV_SHA256 || type == FLEET_TLV_KEYHASH || type == FLEET_TLV_ED25519) {
            if ((rc = fleet_flash_read(port, off + pos, val, len)) != FLEET_OK) return rc;
            if (digest) {
                if (type == FLEET_TLV_KEYHASH) key = find_key(port, cfg, val);
                if (type == FLEET_TLV_ED25519 && key >= 0 &&
                    port->crypto.ed25519_verify(port->crypto.ctx, val, digest, 32, cfg->trusted_keys[key]) == 0)
                    signed_ok = 1;
            } else if (type == FLEET_TLV_SHA256) {
                memcpy(sha, val, 32);
            }
        }
        pos += len;
        prev = type;
        count++;
    }
    if (count == 0 || prev == FLEET_TLV_KEYHASH) return FLEET_E_FORMAT;
    if (digest && !signed_ok) return FLEET_E_SIGNATURE;
    return FLEET_OK;
}

int fleet_image_verify(const fleet_port_t *port, const fleet_config_t *cfg, uint32_t off, uint32_t max_len,
                       uint32_t min_counter, uint8_t *buf, uint32_t buf_len, fleet_image_header_t *hdr) {
    uint8_t want[32], digest[32];
    uint32_t size, hashed, pos, n;
    int rc;
    if (!buf || buf_len < FLEET_IMAGE_HEADER_SIZE || !cfg->device_type) return FLEET_E_INVALID;
    if ((rc = fleet_image_size(port, off, max_len, hdr, &size)) != FLEET_OK) return rc;
    hashed = FLEET_IMAGE_HEADER_SIZE + hdr->payload_size;
    if ((rc = tlv_walk(port, cfg, off + hashed, size - hashed, NULL, want)) != FLEET_OK) return rc;
    port->crypto.sha256_init(port->crypto.ctx);
    for (pos = 0; pos < hashed; pos += n) {
        n = hashed - pos < buf_len ? hashed - pos : buf_len;
        if ((rc = fleet_flash_read(port, off + pos, buf, n)) != FLEET_OK) return rc;
        port->crypto.sha256_update(port->crypto.ctx, buf, n);
    }
    port->crypto.sha256_final(port->crypto.ctx, digest);
    if (memcmp(digest, want, 32) != 0) return FLEET_E_HASH;
    if ((rc = tlv_walk(port, cfg, off + hashed, size - hashed, digest, NULL)) != FLEET_OK) return rc;
    if (!fleet_device_type_matches(hdr->device_type, cfg->device_type)) return FLEET_E_DEVICE_TYPE;
    if (hdr->security_counter < min_counter) return FLEET_E_DOWNGRADE;
    return FLEET_OK;
}

int fleet_version_cmp(const fleet_version_t *a, const fleet_version_t *b) {
    if (a->major != b->major) return a->major < b->major ? -1 : 1;
    if (a->minor != b->minor) return a->minor < b->minor ? -1 : 1;
    if (a->patch != b->patch) return a->patch < b->patch ? -1 : 1;
    return 0;
}
