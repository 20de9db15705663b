/* The swap. For each sector i below swap_count, three steps, each followed by
 * a state record naming the next step:
 *   0: scratch      <- primary[i]
 *   1: primary[i]   <- secondary[i]
 *   2: secondary[i] <- scratch
 * Each step erases its destination and copies its source, and its source is
 * intact until the step is recorded as done, so after a power cut the step in
 * the newest record is simply run again. A revert is the same swap again. */
#include "internal.h"
#include "swap.h"

static int copy_sector(const fleet_port_t *port, uint32_t dst, uint32_t src, uint8_t *buf, uint32_t buf_len) {
    uint32_t sector = port->flash.sector_size, n;
    int rc;
    if ((rc = fleet_flash_erase(port, dst, sector)) != FLEET_OK) return rc;
    for (uint32_t pos = 0; pos < sector; pos += n) {
        n = sector - pos < buf_len ? sector - pos : buf_len;
        if ((rc = fleet_flash_read(port, src + pos, buf, n)) != FLEET_OK) return rc;
        if ((rc = fleet_flash_write(port, dst + pos, buf, n)) != FLEET_OK) return rc;
    }
    return FLEET_OK;
}

int fleet_swap_run(const fleet_port_t *port, const fleet_config_t *cfg, fleet_state_t *st, uint8_t *buf,
                   uint32_t buf_len) {
    const fleet_layout_t *l = &cfg->layout;
    uint32_t sector = port->flash.sector_size;
    int rc;
    if (st->swap_count > l->slot_size / sector || st->swap_step > 2) return FLEET_E_STATE;
    while (st->swap_sector < st->swap_count) {
        uint32_t p = l->primary_off + st->swap_sector * sector, s = l->secondary_off + st->swap_sector * sector;
        if (st->swap_step == 0)
            rc = copy_sector(port, l->scratch_off, p, buf, buf_len);
        else if (st->swap_step == 1)
            rc = copy_sector(port, p, s, buf, buf_len);
        else
            rc = copy_sector(port, s, l->scratch_off, buf, buf_len);
        if (rc != FLEET_OK) return rc;
        if (++st->swap_step == 3) {
            st->swap_step = 0;
            st->swap_sector++;
        }
        /* The caller's record ending the swap also records its last step. */
        if (st->swap_sector < st->swap_count && (rc = fleet_state_save(port, cfg, st)) != FLEET_OK) return rc;
    }
    return FLEET_OK;
}
