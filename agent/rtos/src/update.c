/* The application side: stream an image into the secondary slot (resumable
 * at sector boundaries), mark it pending, confirm a trial, read and
 * acknowledge the persisted status. Never touches the primary slot. */
#include <string.h>

#include "fleet/update.h"
#include "internal.h"
#include "state.h"

int fleet_status_read(const fleet_port_t *port, const fleet_config_t *cfg, fleet_status_t *out) {
    fleet_state_t st;
    int rc = fleet_state_load(port, cfg, &st);
    if (rc == FLEET_OK) *out = st.s;
    return rc;
}

int fleet_status_ack(const fleet_port_t *port, const fleet_config_t *cfg) {
    fleet_state_t st;
    int rc = fleet_state_load(port, cfg, &st);
    if (rc != FLEET_OK || st.s.result == FLEET_RESULT_NONE) return rc;
    st.s.result = FLEET_RESULT_NONE;
    st.s.result_error = 0;
    return fleet_state_save(port, cfg, &st);
}

int fleet_update_begin(fleet_update_t *u, const fleet_port_t *port, const fleet_config_t *cfg,
                       const char *action_id, uint32_t size, uint8_t *buf, uint32_t buf_len) {
    uint32_t align = port->flash.write_align, n = 0;
    fleet_state_t st;
    int rc;
    if (!action_id || !buf || buf_len < align || buf_len % align) return FLEET_E_INVALID;
    while (n <= FLEET_ACTION_ID_MAX && action_id[n]) n++;
    if (n == 0 || n > FLEET_ACTION_ID_MAX || size == 0) return FLEET_E_INVALID;
    if (size > cfg->layout.slot_size) return FLEET_E_SPACE;
    if ((rc = fleet_state_load(port, cfg, &st)) != FLEET_OK) return rc;
    /* The secondary slot holds the image a trial would revert to. */
    if (st.s.state == FLEET_STATE_TRIAL || st.swap_kind != FLEET_SWAP_NONE) return FLEET_E_STATE;
    memset(u, 0, sizeof *u);
    u->port = port;
    u->cfg = cfg;
    u->buf = buf;
    u->buf_len = buf_len;
    u->size = size;
    if (st.s.state == FLEET_STATE_DOWNLOADING && st.s.download_size == size &&
        strcmp(st.s.action_id, action_id) == 0 && st.s.download_offset <= size) {
        u->offset = u->committed = st.s.download_offset;
        return FLEET_OK;
    }
    st.s.state = FLEET_STATE_DOWNLOADING;
    memset(st.s.action_id, 0, sizeof st.s.action_id);
    memcpy(st.s.action_id, action_id, n);
    st.s.download_size = size;
    st.s.download_offset = 0;
    return fleet_state_save(port, cfg, &st);
}

/* Records the resume point: the last sector boundary below u->offset (which
 * the padding of the last write unit may have taken past the size). */
static int commit(fleet_update_t *u) {
    uint32_t sector = u->port->flash.sector_size, mark = (u->offset < u->size ? u->offset : u->size) / sector * sector;
    fleet_state_t st;
    int rc;
    if (mark <= u->committed) return FLEET_OK;
    if ((rc = fleet_state_load(u->port, u->cfg, &st)) != FLEET_OK) return rc;
    if (st.s.state != FLEET_STATE_DOWNLOADING) return FLEET_E_STATE;
    st.s.download_offset = mark;
    if ((rc = fleet_state_save(u->port, u->cfg, &st)) != FLEET_OK) return rc;
    u->committed = mark;
    return FLEET_OK;
}

/* Writes the buffer at u->offset, padded to write_align, erasing each
 * sector as the write reaches its start (a resumed download may have left
 * it half written). */
static int flush(fleet_update_t *u) {
    const fleet_port_t *port = u->port;
    uint32_t sector = port->flash.sector_size, align = port->flash.write_align, pos = 0, n, dst;
    int rc;
    while (u->buf_used % align) u->buf[u->buf_used++] = port->flash.erased_value;
    while (pos < u->buf_used) {
        dst = u->cfg->layout.secondary_off + u->offset;
        if (u->offset % sector == 0 && (rc = fleet_flash_erase(port, dst, sector)) != FLEET_OK) return rc;
        n = sector - u->offset % sector;
        if (n > u->buf_used - pos) n = u->buf_used - pos;
        if ((rc = fleet_flash_write(port, dst, u->buf + pos, n)) != FLEET_OK) return rc;
        pos += n;
        u->offset += n;
    }
    u->buf_used = 0;
    return commit(u);
}

int fleet_update_write(fleet_update_t *u, const uint8_t *data, uint32_t len) {
    uint32_t n;
    int rc;
    if (len > u->size - u->offset - u->buf_used) return FLEET_E_SPACE;
    while (len) {
        n = u->buf_len - u->buf_used < len ? u->buf_len - u->buf_used : len;
        memcpy(u->buf + u->buf_used, data, n);
        u->buf_used += n;
        data += n;
        len -= n;
        if (u->buf_used == u->buf_len && (rc = flush(u)) != FLEET_OK) return rc;
    }
    return FLEET_OK;
}

int fleet_update_finish(fleet_update_t *u, fleet_image_header_t *hdr) {
    const fleet_layout_t *l = &u->cfg->layout;
    fleet_state_t st;
    uint32_t size = 0;
    int rc, vrc;
    if (u->offset + u->buf_used < u->size) return FLEET_E_INVALID; /* not all bytes written */
    if (u->buf_used && (rc = flush(u)) != FLEET_OK) return rc;
    if ((rc = fleet_state_load(u->port, u->cfg, &st)) != FLEET_OK) return rc;
    if (st.s.state != FLEET_STATE_DOWNLOADING) return FLEET_E_STATE;
    vrc = fleet_image_verify(u->port, u->cfg, l->secondary_off, u->size, st.s.min_security_counter, u->buf,
                             u->buf_len, hdr);
    if (vrc == FLEET_OK && (fleet_image_size(u->port, l->secondary_off, u->size, hdr, &size) != FLEET_OK ||
                            size != u->size))
        vrc = FLEET_E_FORMAT; /* bytes after the image's trailer */
    if (vrc == FLEET_E_IO) return vrc;
    st.s.download_offset = u->size;
    if (vrc == FLEET_OK) {
        st.s.state = FLEET_STATE_PENDING;
    } else {
        st.s.state = FLEET_STATE_IDLE;
        st.s.result = FLEET_RESULT_REJECTED;
        st.s.result_error = (int16_t)vrc;
    }
    if ((rc = fleet_state_save(u->port, u->cfg, &st)) != FLEET_OK) return rc;
    return vrc;
}

int fleet_update_abort(const fleet_port_t *port, const fleet_config_t *cfg) {
    fleet_state_t st;
    int rc = fleet_state_load(port, cfg, &st);
    if (rc != FLEET_OK) return rc;
    if (st.s.state == FLEET_STATE_TRIAL || st.swap_kind != FLEET_SWAP_NONE) return FLEET_E_STATE;
    if (st.s.state == FLEET_STATE_IDLE) return FLEET_OK;
    st.s.state = FLEET_STATE_IDLE;
    return fleet_state_save(port, cfg, &st);
}

int fleet_confirm(const fleet_port_t *port, const fleet_config_t *cfg) {
    fleet_state_t st;
    fleet_image_header_t h;
    uint32_t size;
    int rc = fleet_state_load(port, cfg, &st);
    if (rc != FLEET_OK || st.swap_kind != FLEET_SWAP_NONE) return rc ? rc : FLEET_E_STATE;
    if (st.s.state != FLEET_STATE_TRIAL) return FLEET_OK; /* already confirmed */
    if ((rc = fleet_image_size(port, cfg->layout.primary_off, cfg->layout.slot_size, &h, &size)) != FLEET_OK)
        return rc;
    st.s.state = FLEET_STATE_IDLE;
    st.s.result = FLEET_RESULT_CONFIRMED;
    st.s.result_error = 0;
    st.s.running = h.version;
    if (st.s.min_security_counter < h.security_counter) st.s.min_security_counter = h.security_counter;
    return fleet_state_save(port, cfg, &st);
}
