/* See harness.h. */
#include "harness.h"
#include "state.h"

#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

shim_dev_t *shim_new(uint32_t sector_size, uint32_t write_align, uint32_t slot_sectors, uint32_t buf_len,
                     const char *device_type, const uint8_t *keys, uint32_t key_count) {
    shim_dev_t *d;
    uint32_t slot = sector_size * slot_sectors;
    if (key_count > SHIM_MAX_KEYS || strlen(device_type) > FLEET_DEVICE_TYPE_MAX || !slot_sectors) return NULL;
    if (!(d = calloc(1, sizeof *d))) return NULL;
    if (sim_flash_init(&d->flash, 2 * slot + 3 * sector_size, sector_size, write_align, 0xFF) != 0 ||
        !(d->buf = malloc(buf_len)) || fleet_sodium_init(&d->sodium, NULL, &d->port.crypto) != 0) {
        shim_free(d);
        return NULL;
    }
    d->buf_len = buf_len;
    sim_flash_bind(&d->flash, &d->port.flash);
    memcpy(d->keys, keys, key_count * 32u);
    strcpy(d->device_type, device_type);
    d->cfg.layout.primary_off = 0;
    d->cfg.layout.secondary_off = slot;
    d->cfg.layout.slot_size = slot;
    d->cfg.layout.scratch_off = 2 * slot;
    d->cfg.layout.state_off = 2 * slot + sector_size;
    d->cfg.device_type = d->device_type;
    d->cfg.trusted_keys = (const uint8_t(*)[32])d->keys;
    d->cfg.trusted_key_count = key_count;
    return d;
}

void shim_free(shim_dev_t *d) {
    if (!d) return;
    if (d->flash.mem) sim_flash_close(&d->flash);
    free(d->buf);
    free(d);
}

const fleet_port_t *shim_port(shim_dev_t *d) { return &d->port; }
const fleet_config_t *shim_cfg(shim_dev_t *d) { return &d->cfg; }
sim_flash_t *shim_flash(shim_dev_t *d) { return &d->flash; }
uint8_t *shim_buf(shim_dev_t *d) { return d->buf; }
uint32_t shim_buf_len(shim_dev_t *d) { return d->buf_len; }
const char *shim_error(shim_dev_t *d) { return d->err; }

int shim_set_min_counter(shim_dev_t *d, uint32_t min) {
    fleet_state_t st;
    int rc = fleet_state_load(&d->port, &d->cfg, &st);
    if (rc != FLEET_OK) return rc;
    st.s.min_security_counter = min;
    return fleet_state_save(&d->port, &d->cfg, &st);
}

static int fail(shim_dev_t *d, const char *fmt, ...) {
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(d->err, sizeof d->err, fmt, ap);
    va_end(ap);
    return -1;
}

int shim_download(shim_dev_t *d, const uint8_t *img, uint32_t len, const char *action, uint32_t chunk) {
    fleet_update_t u;
    fleet_image_header_t h;
    int rc = fleet_update_begin(&u, &d->port, &d->cfg, action, len, d->buf, d->buf_len);
    if (rc != FLEET_OK) return rc;
    if (u.offset) d->resumes++;
    for (uint32_t pos = u.offset; pos < len; pos += chunk) {
        uint32_t n = len - pos < chunk ? len - pos : chunk;
        if ((rc = fleet_update_write(&u, img + pos, n)) != FLEET_OK) return rc;
    }
    return fleet_update_finish(&u, &h);
}

static int primary_holds(shim_dev_t *d, const uint8_t *img, uint32_t len) {
    return memcmp(d->flash.mem + d->cfg.layout.primary_off, img, len) == 0;
}

static int status_consistent(shim_dev_t *d, const fleet_status_t *s) {
    if (s->state > FLEET_STATE_TRIAL || s->result > FLEET_RESULT_REJECTED) return 0;
    if (s->state == FLEET_STATE_DOWNLOADING &&
        (s->download_offset > s->download_size || s->download_offset % d->flash.sector_size))
        return 0;
    return memchr(s->action_id, 0, sizeof s->action_id) != NULL;
}

int shim_drive(shim_dev_t *d, const uint8_t *old, uint32_t old_len, const uint8_t *img, uint32_t len,
               const char *action, uint32_t chunk, int goal, const uint64_t *cuts, uint32_t ncuts,
               uint32_t tear_permille) {
    fleet_image_header_t oh, nh;
    fleet_boot_result_t r;
    fleet_status_t s;
    uint32_t next_cut = 0, min_seen = 0;
    int rc, confirmed = 0, trial_seen = 0, is_new;
    d->err[0] = 0;
    if (fleet_image_parse_header(old, &oh) != FLEET_OK || fleet_image_parse_header(img, &nh) != FLEET_OK)
        return fail(d, "test images do not parse");
    sim_flash_power_on(&d->flash);
    if (ncuts) sim_flash_cut_after(&d->flash, cuts[next_cut++], tear_permille);
    for (int reset = 0; reset < 64; reset++) {
        if (d->flash.dead) {
            sim_flash_power_on(&d->flash);
            if (next_cut < ncuts) sim_flash_cut_after(&d->flash, cuts[next_cut++], tear_permille);
        }
        if (d->flash.violations) return fail(d, "flash rules broken %u times", d->flash.violations);
        d->boots++;
        memset(&r, 0, sizeof r);
        if ((rc = fleet_boot(&d->port, &d->cfg, d->buf, d->buf_len, &r)) != FLEET_OK) {
            if (d->flash.dead) continue;
            return fail(d, "boot failed with %d after reset %d", rc, reset);
        }
        is_new = primary_holds(d, img, len);
        if (!is_new && !primary_holds(d, old, old_len))
            return fail(d, "boot %d: the primary slot holds neither image", reset);
        if (fleet_version_cmp(&r.header.version, is_new ? &nh.version : &oh.version) != 0)
            return fail(d, "boot %d: boot result names another version than the primary holds", reset);
        if (!is_new && r.trial) return fail(d, "boot %d: the old image booted as a trial", reset);
        if (confirmed && (!is_new || r.trial)) return fail(d, "boot %d: the confirmed image did not boot", reset);
        if (goal == SHIM_GOAL_REVERT && is_new && !r.trial)
            return fail(d, "boot %d: an unconfirmed image booted as confirmed", reset);
        if (trial_seen && is_new) return fail(d, "boot %d: the unconfirmed trial booted twice", reset);
        if ((rc = fleet_status_read(&d->port, &d->cfg, &s)) != FLEET_OK) {
            if (d->flash.dead) continue;
            return fail(d, "status read failed with %d", rc);
        }
        if (!status_consistent(d, &s)) return fail(d, "boot %d: inconsistent status", reset);
        if (s.min_security_counter < min_seen) return fail(d, "the minimum security counter went down");
        min_seen = s.min_security_counter;
        if (s.state == FLEET_STATE_PENDING || (s.state == FLEET_STATE_TRIAL) != (r.trial != 0))
            return fail(d, "boot %d: state %u after boot (trial %u)", reset, s.state, r.trial);
        if (fleet_version_cmp(&s.running, &r.header.version) != 0)
            return fail(d, "boot %d: status names another running version", reset);
        if (is_new && r.trial) {
            if (goal == SHIM_GOAL_REVERT) {
                trial_seen = 1; /* reset without confirming */
                continue;
            }
            if ((rc = fleet_confirm(&d->port, &d->cfg)) != FLEET_OK) {
                if (d->flash.dead) continue;
                return fail(d, "confirm failed with %d", rc);
            }
            confirmed = 1;
            continue;
        }
        if (is_new) {
            if (s.state != FLEET_STATE_IDLE || s.result != FLEET_RESULT_CONFIRMED ||
                s.min_security_counter < nh.security_counter)
                return fail(d, "confirmed: state %u result %u min %u", s.state, s.result, s.min_security_counter);
            sim_flash_power_on(&d->flash);
            return 0;
        }
        if (trial_seen) {
            if (s.state != FLEET_STATE_IDLE || s.result != FLEET_RESULT_REVERTED)
                return fail(d, "reverted: state %u result %u", s.state, s.result);
            sim_flash_power_on(&d->flash);
            return 0;
        }
        if ((rc = shim_download(d, img, len, action, chunk)) != FLEET_OK) {
            if (d->flash.dead) continue;
            return fail(d, "download failed with %d", rc);
        }
    }
    return fail(d, "no progress after 64 resets");
}
