/* Test harness: a simulated device (sim flash + libsodium + a layout) and a
 * driver that takes it through an update or a revert while the power is cut
 * at chosen flash operations, checking the invariants after every reset.
 * Used by the C test program and, through ctypes, by the pytest suite. */
#ifndef FLEET_HARNESS_H
#define FLEET_HARNESS_H

#include "crypto_sodium.h"
#include "fleet/boot.h"
#include "fleet/update.h"
#include "sim_flash.h"

#define SHIM_MAX_KEYS 4u

enum { SHIM_GOAL_CONFIRM = 1, SHIM_GOAL_REVERT = 2 };

typedef struct shim_dev {
    sim_flash_t flash;
    fleet_sodium_t sodium;
    fleet_port_t port;
    fleet_config_t cfg;
    uint8_t keys[SHIM_MAX_KEYS][32];
    char device_type[32];
    uint8_t *buf;
    uint32_t buf_len;
    uint32_t resumes;   /* downloads the driver resumed from a nonzero offset */
    uint32_t boots;     /* fleet_boot calls by the driver */
    char err[256];      /* what the driver found wrong */
} shim_dev_t;

/* Layout: primary slot at 0, secondary slot, one scratch sector, two state
 * sectors; each slot is slot_sectors sectors. NULL on bad arguments. */
shim_dev_t *shim_new(uint32_t sector_size, uint32_t write_align, uint32_t slot_sectors, uint32_t buf_len,
                     const char *device_type, const uint8_t *keys, uint32_t key_count);
void shim_free(shim_dev_t *d);
const fleet_port_t *shim_port(shim_dev_t *d);
const fleet_config_t *shim_cfg(shim_dev_t *d);
sim_flash_t *shim_flash(shim_dev_t *d);
uint8_t *shim_buf(shim_dev_t *d);
uint32_t shim_buf_len(shim_dev_t *d);
const char *shim_error(shim_dev_t *d);

/* Writes a state record with this minimum security counter (test setup). */
int shim_set_min_counter(shim_dev_t *d, uint32_t min);

/* Streams img (len bytes) as action through fleet_update_begin/write/finish
 * in chunk-byte pieces, resuming where the state says. Returns finish's code. */
int shim_download(shim_dev_t *d, const uint8_t *img, uint32_t len, const char *action, uint32_t chunk);

/* Takes the device, which runs old, to the goal: SHIM_GOAL_CONFIRM (img
 * installed, booted as a trial, confirmed, booted again) or SHIM_GOAL_REVERT
 * (img booted as a trial, then reset without a confirm: old runs again).
 * cuts[i] arms a power cut cuts[i] operations after the previous one hit
 * (the first counts from now); tear_permille is how much of a cut operation
 * is done. After each cut the device is reset and the driver carries on
 * from whatever state it finds. Returns 0, or -1 with shim_error() set when
 * an invariant broke (an invalid or unexpected image booted, inconsistent
 * state, a flash rule broken, no progress). */
int shim_drive(shim_dev_t *d, const uint8_t *old, uint32_t old_len, const uint8_t *img, uint32_t len,
               const char *action, uint32_t chunk, int goal, const uint64_t *cuts, uint32_t ncuts,
               uint32_t tear_permille);

#endif
