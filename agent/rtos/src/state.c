/* State records. Each record is FLEET_STATE_RECORD_SIZE bytes (a multiple
 * of any write_align up to 128, the largest supported). Records are
 * appended, never rewritten; when the active sector is full the other one is
 * erased and the next record goes to its first slot. On load the valid
 * record (magic + CRC) with the highest sequence number wins, so a torn
 * write or a torn erase leaves the previous record in charge. */
#include <string.h>

#include "internal.h"
#include "state.h"

#define REC_MAGIC 0x54534446u /* "FDST" */
#define NO_SLOT 0xFFFFFFFFu
#define REC FLEET_STATE_RECORD_SIZE

/* Record layout, little-endian: 0 magic, 4 seq, 8 state, 9 result,
 * 10 result_error, 12 min counter, 16 running version (2+2+4),
 * 24 action id[40], 64 download size, 68 download offset, 72 swap kind,
 * 73 swap step, 76 swap sector, 80 swap count, 84..123 zero, 124 CRC-32. */

static uint32_t sector_off(const fleet_port_t *port, const fleet_config_t *cfg, uint8_t s) {
    return cfg->layout.state_off + s * port->flash.sector_size;
}

static void decode(const uint8_t *r, fleet_state_t *st) {
    fleet_status_t *s = &st->s;
    st->seq = fleet_rd32(r + 4);
    s->state = r[8];
    s->result = r[9];
    s->result_error = (int16_t)fleet_rd16(r + 10);
    s->min_security_counter = fleet_rd32(r + 12);
    s->running.major = fleet_rd16(r + 16);
    s->running.minor = fleet_rd16(r + 18);
    s->running.patch = fleet_rd32(r + 20);
    memcpy(s->action_id, r + 24, FLEET_ACTION_ID_MAX + 1);
    s->action_id[FLEET_ACTION_ID_MAX] = 0;
    s->download_size = fleet_rd32(r + 64);
    s->download_offset = fleet_rd32(r + 68);
    st->swap_kind = r[72];
    st->swap_step = r[73];
    st->swap_sector = fleet_rd32(r + 76);
    st->swap_count = fleet_rd32(r + 80);
}

static void encode(const fleet_state_t *st, uint8_t *r) {
    const fleet_status_t *s = &st->s;
    memset(r, 0, REC);
    fleet_wr32(r, REC_MAGIC);
    fleet_wr32(r + 4, st->seq);
    r[8] = s->state;
    r[9] = s->result;
    fleet_wr16(r + 10, (uint16_t)s->result_error);
    fleet_wr32(r + 12, s->min_security_counter);
    fleet_wr16(r + 16, s->running.major);
    fleet_wr16(r + 18, s->running.minor);
    fleet_wr32(r + 20, s->running.patch);
    memcpy(r + 24, s->action_id, FLEET_ACTION_ID_MAX);
    fleet_wr32(r + 64, s->download_size);
    fleet_wr32(r + 68, s->download_offset);
    r[72] = st->swap_kind;
    r[73] = st->swap_step;
    fleet_wr32(r + 76, st->swap_sector);
    fleet_wr32(r + 80, st->swap_count);
    fleet_wr32(r + 124, fleet_crc32(r, 124));
}

int fleet_state_load(const fleet_port_t *port, const fleet_config_t *cfg, fleet_state_t *st) {
    uint8_t rec[REC];
    uint32_t slots = port->flash.sector_size / REC, last_used[2], off;
    int used, found = 0;
    memset(st, 0, sizeof *st);
    if (slots < 2 || port->flash.write_align > REC) return FLEET_E_INVALID;
    for (uint8_t s = 0; s < 2; s++) {
        last_used[s] = NO_SLOT;
        for (uint32_t i = 0; i < slots; i++) {
            off = sector_off(port, cfg, s) + i * REC;
            /* Flash with ECC fails reads of a unit a cut left half programmed
             * or half erased: such a slot is a torn record (used, invalid). */
            if (fleet_flash_read(port, off, rec, REC) != FLEET_OK &&
                fleet_flash_read(port, off, rec, REC) != FLEET_OK) { /* once more: not a passing glitch */
                last_used[s] = i;
                continue;
            }
            /* Any programmed byte makes the slot used: a record, a torn record
             * or garbage, never written again before its sector is erased. */
            used = 0;
            for (uint32_t j = 0; j < REC; j++) used |= rec[j] != port->flash.erased_value;
            if (used) last_used[s] = i;
            if (fleet_rd32(rec) == REC_MAGIC && fleet_rd32(rec + 124) == fleet_crc32(rec, 124) &&
                (!found || fleet_rd32(rec + 4) > st->seq)) {
                decode(rec, st);
                st->active = s;
                found = 1;
            }
        }
    }
    /* Not one slot readable is either a dead flash driver or a device whose every state write so
     * far was torn (cuts during its first records and the erase of the other sector). Neither may
     * stop the boot: no valid record means the initial state, the next save erases a sector and
     * starts over, and a dead driver shows as soon as the boot reads the image (FLEET_E_IO there).
     * A record once valid is never torn later: a sector is erased only while the newest valid
     * record sits in the other one. */
    /* Next record: after the last used slot of the active sector. */
    if (last_used[st->active] == NO_SLOT)
        st->next_off = sector_off(port, cfg, st->active);
    else if (last_used[st->active] + 1 < slots)
        st->next_off = sector_off(port, cfg, st->active) + (last_used[st->active] + 1) * REC;
    else
        st->next_off = NO_SLOT;
    return FLEET_OK;
}

int fleet_state_save(const fleet_port_t *port, const fleet_config_t *cfg, fleet_state_t *st) {
    uint8_t rec[REC];
    uint32_t off = st->next_off;
    int rc;
    if (off == NO_SLOT) {
        uint8_t other = (uint8_t)(st->active ^ 1u);
        off = sector_off(port, cfg, other);
        if ((rc = fleet_flash_erase(port, off, port->flash.sector_size)) != FLEET_OK) return rc;
        st->active = other;
    }
    st->seq++;
    encode(st, rec);
    if ((rc = fleet_flash_write(port, off, rec, REC)) != FLEET_OK) return rc;
    off += REC;
    st->next_off = off < sector_off(port, cfg, st->active) + port->flash.sector_size ? off : NO_SLOT;
    return FLEET_OK;
}
