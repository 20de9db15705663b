/* fleet_crypto_t over libsodium: SHA-256 and Ed25519. */
#include "crypto_sodium.h"

#include <string.h>

static void sha_init(void *ctx) { crypto_hash_sha256_init(&((fleet_sodium_t *)ctx)->sha); }

static void sha_update(void *ctx, const void *data, size_t len) {
    crypto_hash_sha256_update(&((fleet_sodium_t *)ctx)->sha, data, len);
}

static void sha_final(void *ctx, uint8_t out[32]) { crypto_hash_sha256_final(&((fleet_sodium_t *)ctx)->sha, out); }

static int verify(void *ctx, const uint8_t sig[64], const uint8_t *msg, size_t len, const uint8_t pk[32]) {
    (void)ctx;
    return crypto_sign_verify_detached(sig, msg, len, pk) == 0 ? 0 : -1;
}

static int sign(void *ctx, uint8_t sig[64], const uint8_t *msg, size_t len) {
    fleet_sodium_t *s = ctx;
    if (!s->has_key) return -1;
    return crypto_sign_detached(sig, NULL, msg, len, s->secret_key) == 0 ? 0 : -1;
}

int fleet_sodium_init(fleet_sodium_t *s, const uint8_t *seed, fleet_crypto_t *out) {
    memset(s, 0, sizeof *s);
    if (sodium_init() < 0) return -1;
    if (seed) {
        if (crypto_sign_seed_keypair(s->public_key, s->secret_key, seed) != 0) return -1;
        s->has_key = 1;
    }
    out->ctx = s;
    out->sha256_init = sha_init;
    out->sha256_update = sha_update;
    out->sha256_final = sha_final;
    out->ed25519_verify = verify;
    out->ed25519_sign = sign;
    return 0;
}
