/* The boot side: finish an interrupted swap, install a pending image as a
 * trial, revert an unconfirmed trial, and only ever hand over a verified
 * image (docs/rtos.md, "Boot flow"). */
#include <string.h>

#include "fleet/boot.h"
#include "internal.h"
#include "swap.h"

/* Sectors the swap must cover: the larger of the two images (an unreadable
 * image counts as empty). */
static uint32_t swap_sectors(const fleet_port_t *port, const fleet_config_t *cfg) {
    const fleet_layout_t *l = &cfg->layout;
    fleet_image_header_t h;
    uint32_t a = 0, b = 0, sector = port->flash.sector_size;
    if (fleet_image_size(port, l->primary_off, l->slot_size, &h, &a) != FLEET_OK) a = 0;
    if (fleet_image_size(port, l->secondary_off, l->slot_size, &h, &b) != FLEET_OK) b = 0;
    if (b > a) a = b;
    return (a + sector - 1) / sector;
}

static int start_swap(const fleet_port_t *port, const fleet_config_t *cfg, fleet_state_t *st, uint8_t kind) {
    st->swap_kind = kind;
    st->swap_sector = 0;
    st->swap_step = 0;
    return fleet_state_save(port, cfg, st);
}

int fleet_boot(const fleet_port_t *port, const fleet_config_t *cfg, uint8_t *buf, uint32_t buf_len,
               fleet_boot_result_t *out) {
    const fleet_layout_t *l = &cfg->layout;
    fleet_state_t st;
    fleet_image_header_t h;
    uint32_t size;
    int rc, tries;
    if (!buf || buf_len < FLEET_IMAGE_HEADER_SIZE || buf_len % port->flash.write_align) return FLEET_E_INVALID;
    if ((rc = fleet_state_load(port, cfg, &st)) != FLEET_OK) return rc;
    /* Found at reset, a trial that is not being installed was never confirmed. */
    if (st.s.state == FLEET_STATE_TRIAL && st.swap_kind == FLEET_SWAP_NONE &&
        (rc = start_swap(port, cfg, &st, FLEET_SWAP_REVERT)) != FLEET_OK)
        return rc;
    for (tries = 0; tries < 3; tries++) {
        if (st.swap_kind != FLEET_SWAP_NONE) {
            if ((rc = fleet_swap_run(port, cfg, &st, buf, buf_len)) != FLEET_OK) return rc;
            if (st.swap_kind == FLEET_SWAP_INSTALL) {
                st.s.state = FLEET_STATE_TRIAL;
            } else {
                st.s.state = FLEET_STATE_IDLE;
                st.s.result = FLEET_RESULT_REVERTED;
                st.s.result_error = 0;
            }
            st.swap_kind = FLEET_SWAP_NONE;
            if (fleet_image_size(port, l->primary_off, l->slot_size, &h, &size) == FLEET_OK)
                st.s.running = h.version;
            if ((rc = fleet_state_save(port, cfg, &st)) != FLEET_OK) return rc;
        }
        if (st.s.state == FLEET_STATE_PENDING) {
            rc = fleet_image_verify(port, cfg, l->secondary_off, l->slot_size, st.s.min_security_counter, buf,
                                    buf_len, &h);
            if (rc == FLEET_E_IO) return rc;
            if (rc != FLEET_OK) {
                st.s.state = FLEET_STATE_IDLE;
                st.s.result = FLEET_RESULT_REJECTED;
                st.s.result_error = (int16_t)rc;
                if ((rc = fleet_state_save(port, cfg, &st)) != FLEET_OK) return rc;
            } else {
                st.swap_count = swap_sectors(port, cfg);
                if ((rc = start_swap(port, cfg, &st, FLEET_SWAP_INSTALL)) != FLEET_OK) return rc;
                continue;
            }
        }
        rc = fleet_image_verify(port, cfg, l->primary_off, l->slot_size, st.s.min_security_counter, buf, buf_len,
                                &out->header);
        if (rc == FLEET_E_IO) return rc;
        if (rc == FLEET_OK) {
            out->image_off = l->primary_off;
            out->trial = st.s.state == FLEET_STATE_TRIAL;
            /* A confirmed image runs: keep its version and counter in the state. */
            if (!out->trial && (fleet_version_cmp(&st.s.running, &out->header.version) != 0 ||
                                st.s.min_security_counter < out->header.security_counter)) {
                st.s.running = out->header.version;
                st.s.min_security_counter = out->header.security_counter;
                if ((rc = fleet_state_save(port, cfg, &st)) != FLEET_OK) return rc;
            }
            return FLEET_OK;
        }
        /* The installed trial does not verify in place: put the old image back. */
        if (st.s.state != FLEET_STATE_TRIAL || (rc = start_swap(port, cfg, &st, FLEET_SWAP_REVERT)) != FLEET_OK)
            break;
    }
    return rc == FLEET_E_IO ? rc : FLEET_E_NO_IMAGE;
}
