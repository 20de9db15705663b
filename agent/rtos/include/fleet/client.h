/* fleetd RTOS shim: the device protocol client (docs/protocol.md,
 * docs/rtos-protocol.md). Enrolls, authenticates, checks in with the running
 * firmware version, installs an install/rollback action through the update
 * API (resuming an interrupted download with Range), reports every step, and
 * reports the outcome of the last update after a reset.
 *
 * The integrator allocates fleet_client_t, fills in the "set by the
 * integrator" part and calls fleet_client_poll every poll interval. All
 * buffers are the integrator's; the client keeps no globals. */
#ifndef FLEET_CLIENT_H
#define FLEET_CLIENT_H

#include "fleet/layout.h"
#include "fleet/port.h"
#include "fleet/update.h"

#define FLEET_DEVICE_ID_MAX 39u   /* + NUL */
#define FLEET_TOKEN_MAX 255u      /* + NUL */

/* What the device must keep across resets. The client fills it in (first
 * Enroll) and hands it to save_identity; the integrator stores it and puts it
 * back before the next fleet_client_poll. */
typedef struct fleet_identity {
    char device_id[FLEET_DEVICE_ID_MAX + 1]; /* "" until enrolled */
    uint8_t signing_key[32];  /* the fleet's artifact-signing key, pinned at the first Enroll */
    uint8_t signing_key_pinned;
} fleet_identity_t;

/* An install or rollback action, as much of it as the shim needs. */
typedef struct fleet_action {
    char id[FLEET_ACTION_ID_MAX + 1];
    char kind[12];             /* install, rollback, reboot, restart, config */
    char version[24];          /* the artifact's version */
    char sha256[65];           /* lowercase hex: the blob to download */
    uint32_t size;             /* bytes of the image */
    uint8_t rollback;
    uint8_t has_artifact;
    uint8_t offered;           /* deployed with consent: accepted before it starts */
} fleet_action_t;

/* Events for the integrator's log (on_event may be NULL). text and value
 * are described per event. */
enum {
    FLEET_EV_ENROLLED = 1,      /* text: device id; value: 1 active, 0 pending */
    FLEET_EV_AUTHENTICATED,     /* value: token lifetime in seconds */
    FLEET_EV_CHECKIN,           /* text: status; value: number of actions */
    FLEET_EV_ACTION,            /* text: action id; value: image size */
    FLEET_EV_DOWNLOAD,          /* text: action id; value: offset the download starts (resumes) at */
    FLEET_EV_PROGRESS,          /* text: action id; value: bytes in flash */
    FLEET_EV_VERIFIED,          /* text: action id; value: image size */
    FLEET_EV_REFUSED,           /* text: reason; value: FLEET_E_* of the verification */
    FLEET_EV_REPORT,            /* text: state reported; value: progress */
    FLEET_EV_CONFIRMED,         /* text: action id; value: 0 */
    FLEET_EV_REBOOT,            /* text: action id; value: 0 */
    FLEET_EV_ERROR,             /* text: what failed; value: HTTP status or FLEET_E_* */
    FLEET_EV_CLAIM_CODE         /* text: the claim code to show (enrolled without a token); value: 0 */
};

typedef struct fleet_client {
    /* ---- set by the integrator ---- */
    const fleet_port_t *port;
    const fleet_config_t *cfg;      /* layout and trusted keys of the update API */
    const char *hardware_id;
    const char *device_type;        /* protocol device type, e.g. cfg->device_type */
    const char *component;          /* the artifact name of the firmware, e.g. "firmware" */
    const char *join_token;         /* NULL or "": claim flow (pending until claimed) */
    uint8_t device_public_key[32];  /* the key port->crypto.ed25519_sign signs with */
    fleet_identity_t *identity;
    int (*save_identity)(void *user, const fleet_identity_t *id); /* FLEET_OK when stored */
    void (*on_event)(void *user, int event, const char *text, int32_t value);
    void *user;
    char *resp;                     /* response bodies; 4 KiB holds a check-in with an action */
    uint32_t resp_size;
    char *req;                      /* request bodies; 512 bytes is enough */
    uint32_t req_size;
    uint8_t *flash_buf;             /* fleet_update's write buffer: >= write_align, a sector is best */
    uint32_t flash_buf_size;
    uint32_t progress_step;         /* bytes per download request (progress is reported
                                       between them); 0: a quarter of the image */

    /* ---- kept by the client ---- */
    char token[FLEET_TOKEN_MAX + 1];
    uint32_t token_at_ms;
    uint32_t token_life_ms;
    uint32_t poll_interval_s;       /* from the last Enroll/CheckIn */
    uint8_t pending;                /* the server says the device waits to be claimed */
    int http_status;                /* of the last request */
    uint32_t resp_len;
    uint8_t resp_overflow;
} fleet_client_t;

/* fleet_client_poll's non-error results. */
enum {
    FLEET_POLL_IDLE = 0,     /* checked in; nothing to do */
    FLEET_POLL_BUSY = 1,     /* did some work; call again soon */
    FLEET_POLL_REBOOT = 2    /* an image waits for a reset (port->reboot returned) */
};

/* One cycle: enroll if needed, report the outcome of the last update, check
 * in, confirm a trial image once the server was reached, work on the first
 * open action for the component. Returns FLEET_POLL_* or a FLEET_E_* code
 * (FLEET_E_HTTP: c->http_status says which; FLEET_E_SIGNATURE: the server's
 * signing key differs from the pinned one; FLEET_E_CONFLICT: Enroll found the
 * hardware id enrolled with another key, and keeps finding it until an admin
 * re-keys the device, whose token then goes in join_token, or deletes it). */
int fleet_client_poll(fleet_client_t *c);

/* The steps fleet_client_poll is made of, for integrators that drive them. */
int fleet_client_enroll(fleet_client_t *c);
int fleet_client_authenticate(fleet_client_t *c);
/* Checks in; *action gets the first open install/rollback/reboot action for
 * the component (action->id is "" when there is none). */
int fleet_client_checkin(fleet_client_t *c, const fleet_status_t *st, fleet_action_t *action);
int fleet_client_report(fleet_client_t *c, const char *action_id, const char *state,
                        const char *message, uint32_t progress);
/* Downloads (or resumes), verifies, marks the image for a trial and reboots. */
int fleet_client_install(fleet_client_t *c, const fleet_action_t *a);

#endif
