/* fleetd RTOS shim: base64 (RFC 4648) for keys and signatures in the protocol. */
#ifndef FLEET_BASE64_H
#define FLEET_BASE64_H

#include <stdint.h>

/* Length of the padded standard encoding of n bytes. */
#define FLEET_B64_LEN(n) ((((uint32_t)(n) + 2u) / 3u) * 4u)

/* Writes the padded standard encoding of data (no NUL); returns its length,
 * or FLEET_E_SPACE when cap is too small. */
int32_t fleet_b64_encode(char *out, uint32_t cap, const uint8_t *data, uint32_t n);

/* Decodes standard or URL-safe base64, padded or not. Returns the number of
 * bytes, FLEET_E_INVALID for a bad character, length or padding, or
 * FLEET_E_SPACE when the result does not fit in cap. */
int32_t fleet_b64_decode(uint8_t *out, uint32_t cap, const char *in, uint32_t n);

#endif
