/* CRC-32 (IEEE 802.3, reflected, as zlib's crc32), bitwise: no table, so it
 * costs a few dozen bytes of flash; state records are short. */
#include "internal.h"

uint32_t fleet_crc32(const uint8_t *data, uint32_t len) {
    uint32_t crc = 0xFFFFFFFFu;
    while (len--) {
        crc ^= *data++;
        for (int i = 0; i < 8; i++) crc = (crc >> 1) ^ (0xEDB88320u & (0u - (crc & 1u)));
    }
    return ~crc;
}
