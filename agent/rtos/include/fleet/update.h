/* fleetd RTOS shim: the application side of an update (like MCUboot's
 * bootutil_public): stream a new image into the secondary slot, mark it for a
 * trial boot, confirm the running image, read the persisted state. */
#ifndef FLEET_UPDATE_H
#define FLEET_UPDATE_H

#include "fleet/image.h"
#include "fleet/layout.h"
#include "fleet/port.h"

#define FLEET_ACTION_ID_MAX 39u   /* + NUL */

/* What the last update came to; kept until the application acknowledges it
 * (fleet_status_ack), so it can be reported to the server after a reset. */
enum {
    FLEET_RESULT_NONE = 0,
    FLEET_RESULT_CONFIRMED = 1,   /* trial image confirmed */
    FLEET_RESULT_REVERTED = 2,    /* trial image not confirmed: reverted at reset */
    FLEET_RESULT_REJECTED = 3     /* image failed verification; never booted */
};

enum {
    FLEET_STATE_IDLE = 0,         /* running a confirmed image */
    FLEET_STATE_DOWNLOADING = 1,  /* an image is being written to the secondary slot */
    FLEET_STATE_PENDING = 2,      /* verified image waits in the secondary slot for the next reset */
    FLEET_STATE_TRIAL = 3         /* running an unconfirmed image */
};

typedef struct fleet_status {
    uint8_t state;                /* FLEET_STATE_* */
    uint8_t result;               /* FLEET_RESULT_* */
    int16_t result_error;         /* FLEET_E_* behind a REJECTED result */
    uint32_t min_security_counter;
    fleet_version_t running;      /* version of the image in the primary slot */
    char action_id[FLEET_ACTION_ID_MAX + 1]; /* action the current or last update belongs to */
    uint32_t download_size;       /* total image size being downloaded */
    uint32_t download_offset;     /* bytes safely in flash; resume from here */
} fleet_status_t;

/* An update in progress. Allocated by the caller; buf holds one write unit
 * batch (>= write_align, ideally a sector) and must outlive the update. */
typedef struct fleet_update {
    const fleet_port_t *port;
    const fleet_config_t *cfg;
    uint8_t *buf;
    uint32_t buf_len;
    uint32_t buf_used;
    uint32_t size;                /* total image size */
    uint32_t offset;              /* bytes written to flash */
    uint32_t committed;           /* bytes recorded in the state (resume point) */
} fleet_update_t;

int fleet_status_read(const fleet_port_t *port, const fleet_config_t *cfg, fleet_status_t *out);
/* Clears result (after it was reported). */
int fleet_status_ack(const fleet_port_t *port, const fleet_config_t *cfg);

/* Starts (or, with the same action_id and size, resumes) a download of size
 * bytes into the secondary slot. After the call, u->offset says where to
 * continue: 0 for a new download, or the resume point (the hash is
 * recomputed from flash at finish, so nothing else is needed).
 * FLEET_E_STATE while a trial runs (confirm it first: the secondary slot
 * holds the image it would revert to); FLEET_E_SPACE when size exceeds the
 * slot; FLEET_E_INVALID for an empty or too long action_id, size 0, or a
 * buf_len that is not a nonzero multiple of write_align. */
int fleet_update_begin(fleet_update_t *u, const fleet_port_t *port, const fleet_config_t *cfg,
                       const char *action_id, uint32_t size, uint8_t *buf, uint32_t buf_len);
int fleet_update_write(fleet_update_t *u, const uint8_t *data, uint32_t len);
/* Flushes, verifies the whole image in the secondary slot (exactly u->size
 * bytes) and, when it is good, marks it PENDING for a trial at the next
 * reset. A bad image is refused: the state records result REJECTED with the
 * reason, which is also returned. FLEET_E_INVALID when fewer than size
 * bytes were written. */
int fleet_update_finish(fleet_update_t *u, fleet_image_header_t *hdr);
/* Abandons a download or a pending image (state back to IDLE);
 * FLEET_E_STATE during a trial. */
int fleet_update_abort(const fleet_port_t *port, const fleet_config_t *cfg);

/* Confirms the running trial image: it becomes the known-good image and the
 * minimum security counter rises to its counter. Idempotent. */
int fleet_confirm(const fleet_port_t *port, const fleet_config_t *cfg);

#endif
