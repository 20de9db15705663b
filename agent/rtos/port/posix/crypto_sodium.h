/* fleet_crypto_t over libsodium (host port). */
#ifndef FLEET_CRYPTO_SODIUM_H
#define FLEET_CRYPTO_SODIUM_H

#include <sodium.h>

#include "fleet/port.h"

typedef struct fleet_sodium {
    crypto_hash_sha256_state sha;
    uint8_t secret_key[crypto_sign_SECRETKEYBYTES];
    uint8_t public_key[crypto_sign_PUBLICKEYBYTES];
    int has_key;
} fleet_sodium_t;

/* Initialises libsodium and fills *out. seed (32 bytes, or NULL for a
 * verify-only port) derives the device's own Ed25519 key pair; its public
 * key is then in s->public_key. Returns 0, or -1 when libsodium fails. */
int fleet_sodium_init(fleet_sodium_t *s, const uint8_t *seed, fleet_crypto_t *out);

#endif
