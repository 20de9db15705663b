/* C test program for the core, built with ASan/UBSan (make host):
 *   test_core vectors  DIR DEVICE_TYPE MIN_COUNTER   shared vectors: exact error codes
 *   test_core fuzz     DIR DEVICE_TYPE MIN_COUNTER   mutated/truncated good vectors: defined codes only
 *   test_core powercut OLD NEW KEY_HEX DEVICE_TYPE   a power cut at every flash operation
 * Prints one summary line per check; exit status 0 when everything passed. */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "harness.h"

#define SECTOR 512u
#define ALIGN 8u
#define BUF_LEN 128u

static int failures;

static void check(int ok, const char *what, const char *name, int got, int want) {
    if (ok) return;
    failures++;
    fprintf(stderr, "FAIL %s %s: got %d, want %d\n", what, name, got, want);
}

static uint8_t *read_file(const char *path, uint32_t *len) {
    FILE *f = fopen(path, "rb");
    uint8_t *data = NULL;
    long n;
    if (!f) return NULL;
    if (fseek(f, 0, SEEK_END) == 0 && (n = ftell(f)) >= 0 && fseek(f, 0, SEEK_SET) == 0 &&
        (data = malloc((size_t)n + 1)) && fread(data, 1, (size_t)n, f) == (size_t)n) {
        *len = (uint32_t)n;
    } else {
        free(data);
        data = NULL;
    }
    fclose(f);
    return data;
}

static int parse_hex32(const char *s, uint8_t out[32]) {
    for (int i = 0; i < 32; i++) {
        unsigned v;
        if (sscanf(s + 2 * i, "%2x", &v) != 1) return -1;
        out[i] = (uint8_t)v;
    }
    return 0;
}

static int expect_code(const char *name) {
    static const struct { const char *name; int code; } map[] = {
        {"ok", FLEET_OK}, {"format", FLEET_E_FORMAT}, {"hash", FLEET_E_HASH}, {"signature", FLEET_E_SIGNATURE},
        {"device_type", FLEET_E_DEVICE_TYPE}, {"downgrade", FLEET_E_DOWNGRADE}};
    for (size_t i = 0; i < sizeof map / sizeof map[0]; i++)
        if (strcmp(map[i].name, name) == 0) return map[i].code;
    return 1;
}

static shim_dev_t *device_for(uint32_t len, const char *dtype, const uint8_t key[32]) {
    return shim_new(SECTOR, ALIGN, len / SECTOR + 2, BUF_LEN, dtype, key, 1);
}

/* Verifies data as if downloaded into the secondary slot (max_len = len). */
static int verify_bytes(shim_dev_t *d, const uint8_t *data, uint32_t len, uint32_t min) {
    fleet_image_header_t h;
    sim_flash_raw_erase(&d->flash, d->cfg.layout.secondary_off, d->cfg.layout.slot_size);
    sim_flash_raw_write(&d->flash, d->cfg.layout.secondary_off, data, len);
    return fleet_image_verify(&d->port, &d->cfg, d->cfg.layout.secondary_off, len, min, d->buf, d->buf_len, &h);
}

static int load_key(const char *dir, uint8_t key[32]) {
    char path[1024], hex[80] = {0};
    FILE *f;
    snprintf(path, sizeof path, "%s/trusted_key.hex", dir);
    if (!(f = fopen(path, "r"))) return -1;
    if (!fgets(hex, sizeof hex, f)) hex[0] = 0;
    fclose(f);
    return parse_hex32(hex, key);
}

/* Calls fn(dir, file, expect, data, len) for each vector in index.txt. */
typedef void (*vector_fn)(const char *file, int expect, const uint8_t *data, uint32_t len, const char *dtype,
                          const uint8_t key[32], uint32_t min);

static int each_vector(const char *dir, const char *dtype, uint32_t min, vector_fn fn) {
    char path[1024], line[512], file[256], expect[64];
    uint8_t key[32];
    uint32_t len;
    int count = 0;
    FILE *idx;
    if (load_key(dir, key) != 0) {
        fprintf(stderr, "cannot read %s/trusted_key.hex\n", dir);
        return -1;
    }
    snprintf(path, sizeof path, "%s/index.txt", dir);
    if (!(idx = fopen(path, "r"))) {
        fprintf(stderr, "cannot read %s\n", path);
        return -1;
    }
    while (fgets(line, sizeof line, idx)) {
        uint8_t *data;
        if (sscanf(line, "%255s %63s", file, expect) != 2) continue;
        snprintf(path, sizeof path, "%s/%s", dir, file);
        if (!(data = read_file(path, &len))) {
            fprintf(stderr, "FAIL cannot read %s\n", path);
            failures++;
            continue;
        }
        if (expect_code(expect) > 0) {
            fprintf(stderr, "FAIL %s: unknown expectation %s\n", file, expect);
            failures++;
        } else {
            fn(file, expect_code(expect), data, len, dtype, key, min);
            count++;
        }
        free(data);
    }
    fclose(idx);
    return count;
}

static void run_vector(const char *file, int expect, const uint8_t *data, uint32_t len, const char *dtype,
                       const uint8_t key[32], uint32_t min) {
    shim_dev_t *d = device_for(len, dtype, key);
    int rc = verify_bytes(d, data, len, min);
    fleet_status_t s;
    int want;
    check(rc == expect, "verify", file, rc, expect);
    shim_free(d);
    /* The same through the update API on a fresh device with that minimum. */
    d = device_for(len, dtype, key);
    shim_set_min_counter(d, min);
    rc = shim_download(d, data, len, "vector", 100);
    check(rc == expect, "download", file, rc, expect);
    fleet_status_read(&d->port, &d->cfg, &s);
    want = expect == FLEET_OK ? FLEET_STATE_PENDING : FLEET_STATE_IDLE;
    check(s.state == want, "state after download", file, s.state, want);
    if (expect != FLEET_OK) {
        check(s.result == FLEET_RESULT_REJECTED, "result", file, s.result, FLEET_RESULT_REJECTED);
        check(s.result_error == expect, "result_error", file, s.result_error, expect);
    }
    check(d->flash.violations == 0, "flash rules", file, (int)d->flash.violations, 0);
    shim_free(d);
}

static int defined_code(int rc) {
    return rc == FLEET_OK || rc == FLEET_E_FORMAT || rc == FLEET_E_HASH || rc == FLEET_E_SIGNATURE ||
           rc == FLEET_E_DEVICE_TYPE || rc == FLEET_E_DOWNGRADE;
}

static uint32_t rng_state = 0x12345678u;
static uint32_t rng(void) {
    rng_state ^= rng_state << 13;
    rng_state ^= rng_state >> 17;
    rng_state ^= rng_state << 5;
    return rng_state;
}

static long fuzz_cases;

static void fuzz_vector(const char *file, int expect, const uint8_t *data, uint32_t len, const char *dtype,
                        const uint8_t key[32], uint32_t min) {
    shim_dev_t *d;
    uint8_t *m;
    int rc;
    if (expect != FLEET_OK) return;
    d = device_for(len, dtype, key);
    m = malloc(len);
    /* Every byte flipped. The hashed part (header + payload) and the SHA256
     * entry must never pass; the rest of the trailer is not signed, so the
     * entries the device does not use (unknown TLVs, signatures by untrusted
     * keys) and tlv_total when it only drops such an entry may change. */
    uint32_t hashed = FLEET_IMAGE_HEADER_SIZE + (uint32_t)data[12] + ((uint32_t)data[13] << 8) +
                      ((uint32_t)data[14] << 16) + ((uint32_t)data[15] << 24);
    for (uint32_t i = 0; i < len; i++) {
        memcpy(m, data, len);
        m[i] ^= (uint8_t)(1u << (i % 8));
        rc = verify_bytes(d, m, len, min);
        check(rc != FLEET_OK || (i >= hashed && i < hashed + 4) || i >= hashed + 40, "flipped byte accepted", file,
              (int)i, -1);
        check(defined_code(rc), "flip: undefined code", file, rc, 0);
        fuzz_cases++;
    }
    for (uint32_t n = 0; n < len; n++) { /* every truncation */
        rc = verify_bytes(d, data, n, min);
        check(rc != FLEET_OK, "truncation accepted", file, rc, -1);
        fuzz_cases++;
    }
    for (int iter = 0; iter < 2000; iter++) { /* random multi-byte damage, often in the trailer */
        memcpy(m, data, len);
        for (uint32_t k = 1 + rng() % 4; k; k--) {
            uint32_t at = rng() % 3 ? len - 1 - rng() % (len < 200 ? len : 200) : rng() % len;
            m[at] = (uint8_t)rng();
        }
        rc = verify_bytes(d, m, len - rng() % 3, min);
        check(defined_code(rc), "random: undefined code", file, rc, 0);
        fuzz_cases++;
    }
    free(m);
    check(d->flash.violations == 0, "flash rules", file, (int)d->flash.violations, 0);
    shim_free(d);
}

/* Exhaustive single cuts (and a second cut soon after) for one goal. */
static void powercut(const uint8_t *old, uint32_t old_len, const uint8_t *img, uint32_t len, const uint8_t key[32],
                     const char *dtype, int goal) {
    static const uint32_t tears[] = {0, 500, 999};
    static const uint64_t second[] = {1, 3, 17};
    const char *name = goal == SHIM_GOAL_CONFIRM ? "update" : "revert";
    uint32_t slot_sectors = (old_len > len ? old_len : len) / SECTOR + 2;
    uint64_t ops, runs = 0, resumes = 0;
    shim_dev_t *d = shim_new(SECTOR, ALIGN, slot_sectors, BUF_LEN, dtype, key, 1);
    sim_flash_raw_write(&d->flash, 0, old, old_len);
    if (shim_drive(d, old, old_len, img, len, "act-1", 100, goal, NULL, 0, 0) != 0) {
        fprintf(stderr, "FAIL %s without cuts: %s\n", name, shim_error(d));
        failures++;
        shim_free(d);
        return;
    }
    ops = d->flash.ops;
    shim_free(d);
    for (size_t t = 0; t < sizeof tears / sizeof tears[0]; t++) {
        for (uint64_t k = 1; k <= ops; k++) {
            for (size_t j = 0; j <= sizeof second / sizeof second[0]; j++) {
                uint64_t cuts[2] = {k, j ? second[j - 1] : 0};
                if (j && t != 1) break; /* second cuts with one tear ratio only */
                d = shim_new(SECTOR, ALIGN, slot_sectors, BUF_LEN, dtype, key, 1);
                d->flash.ecc = (int)(k & 1u); /* every other run on flash with ECC: torn units do not read */
                sim_flash_raw_write(&d->flash, 0, old, old_len);
                if (shim_drive(d, old, old_len, img, len, "act-1", 100, goal, cuts, j ? 2 : 1, tears[t]) != 0) {
                    fprintf(stderr, "FAIL %s cut at op %llu (then %llu, tear %u): %s\n", name,
                            (unsigned long long)k, (unsigned long long)cuts[1], tears[t], shim_error(d));
                    failures++;
                }
                resumes += d->resumes;
                runs++;
                shim_free(d);
            }
        }
    }
    printf("powercut %s: %llu flash operations, %llu runs, %llu resumed downloads\n", name,
           (unsigned long long)ops, (unsigned long long)runs, (unsigned long long)resumes);
}

int main(int argc, char **argv) {
    if (argc == 5 && strcmp(argv[1], "vectors") == 0) {
        int n = each_vector(argv[2], argv[3], (uint32_t)strtoul(argv[4], NULL, 10), run_vector);
        if (n <= 0) return 1;
        printf("vectors: %d checked\n", n);
    } else if (argc == 5 && strcmp(argv[1], "fuzz") == 0) {
        if (each_vector(argv[2], argv[3], (uint32_t)strtoul(argv[4], NULL, 10), fuzz_vector) <= 0) return 1;
        printf("fuzz: %ld cases\n", fuzz_cases);
    } else if (argc == 6 && strcmp(argv[1], "powercut") == 0) {
        uint32_t old_len, len;
        uint8_t key[32], *old = read_file(argv[2], &old_len), *img = read_file(argv[3], &len);
        if (!old || !img || parse_hex32(argv[4], key) != 0) {
            fprintf(stderr, "cannot read the images or the key\n");
            return 2;
        }
        powercut(old, old_len, img, len, key, argv[5], SHIM_GOAL_CONFIRM);
        powercut(old, old_len, img, len, key, argv[5], SHIM_GOAL_REVERT);
        free(old);
        free(img);
    } else {
        fprintf(stderr, "usage: test_core vectors|fuzz DIR DEVICE_TYPE MIN_COUNTER | "
                        "powercut OLD NEW KEY_HEX DEVICE_TYPE\n");
        return 2;
    }
    if (failures) fprintf(stderr, "%d failures\n", failures);
    return failures ? 1 : 0;
}
