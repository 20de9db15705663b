/* The device protocol client of the shim (see fleet/client.h). Uses only
 * string.h beside the shim's own modules, so it cross-builds freestanding. */
#include <string.h>

#include "fleet/base64.h"
#include "fleet/client.h"
#include "fleet/json.h"

#define AUTH_PREFIX "fleetd-auth-v1:"
#define RENEW_MARGIN_MS 60000u
#define MSG_MAX 128u

typedef void (*build_fn)(fleet_client_t *c, fleet_jw_t *w, const void *arg);

static void emit(fleet_client_t *c, int ev, const char *text, int32_t value)
{
    if (c->on_event)
        c->on_event(c->user, ev, text, value);
}

/* Appends s to out (cap includes the NUL); silently cuts what does not fit. */
static void cat(char *out, uint32_t cap, const char *s)
{
    uint32_t n = (uint32_t)strlen(out), k = (uint32_t)strlen(s);
    if (k > cap - 1u - n)
        k = cap - 1u - n;
    memcpy(out + n, s, k);
    out[n + k] = '\0';
}

static void fmt_version(char out[24], const fleet_version_t *v)
{
    char num[11];
    out[0] = '\0';
    fleet_fmt_u32(num, v->major);
    cat(out, 24, num);
    cat(out, 24, ".");
    fleet_fmt_u32(num, v->minor);
    cat(out, 24, num);
    cat(out, 24, ".");
    fleet_fmt_u32(num, v->patch);
    cat(out, 24, num);
}

static const char *reason(int err)
{
    switch (err) {
    case FLEET_E_FORMAT: return "malformed or truncated image";
    case FLEET_E_HASH: return "SHA-256 does not match (corrupted or tampered)";
    case FLEET_E_SIGNATURE: return "no signature by a trusted key";
    case FLEET_E_DEVICE_TYPE: return "built for another device type";
    case FLEET_E_DOWNGRADE: return "security counter below the device's minimum";
    case FLEET_E_SPACE: return "image larger than the slot";
    case FLEET_E_IO: return "flash error";
    default: return "update error";
    }
}

static int collect(void *user, const uint8_t *data, size_t len)
{
    fleet_client_t *c = (fleet_client_t *)user;
    if (len >= c->resp_size - c->resp_len) {
        c->resp_overflow = 1;
        return 1;
    }
    memcpy(c->resp + c->resp_len, data, len);
    c->resp_len += (uint32_t)len;
    return 0;
}

/* One POST to DeviceService/<method>; FLEET_OK with *root on a 200 JSON answer. */
static int rpc_once(fleet_client_t *c, const char *method, build_fn build, const void *arg, int auth,
                    fleet_json_t *root)
{
    char path[48] = "/fleetd.v1.DeviceService/";
    fleet_http_request_t req;
    fleet_jw_t w;
    int32_t n;
    int rc, status = 0;

    cat(path, sizeof path, method);
    fleet_jw_init(&w, c->req, c->req_size);
    build(c, &w, arg);
    n = fleet_jw_finish(&w);
    if (n < 0)
        return n;
    memset(&req, 0, sizeof req);
    req.method = "POST";
    req.path = path;
    req.bearer = auth ? c->token : NULL;
    req.content_type = "application/json";
    req.body = (const uint8_t *)c->req;
    req.body_len = (size_t)n;
    c->resp_len = 0;
    c->resp_overflow = 0;
    rc = c->port->transport.request(c->port->transport.ctx, &req, &status, collect, c);
    c->http_status = status;
    if (c->resp_overflow)
        return FLEET_E_SPACE;
    if (rc != FLEET_OK)
        return rc;
    c->resp[c->resp_len] = '\0';
    if (status != 200)
        return FLEET_E_HTTP;
    return fleet_json_parse(c->resp, c->resp_len, root) == FLEET_OK ? FLEET_OK : FLEET_E_PROTOCOL;
}

static int token_fresh(fleet_client_t *c)
{
    uint32_t age = c->port->now_ms(c->port->sys_ctx) - c->token_at_ms;
    return c->token[0] && c->token_life_ms > RENEW_MARGIN_MS && age < c->token_life_ms - RENEW_MARGIN_MS;
}

/* An authenticated call: renews the token first when needed, and once more
 * when the server answers 401. */
static int rpc(fleet_client_t *c, const char *method, build_fn build, const void *arg, fleet_json_t *root)
{
    int rc;
    if (!token_fresh(c) && (rc = fleet_client_authenticate(c)) != FLEET_OK)
        return rc;
    rc = rpc_once(c, method, build, arg, 1, root);
    if (rc == FLEET_E_HTTP && c->http_status == 401) {
        c->token[0] = '\0';
        if ((rc = fleet_client_authenticate(c)) != FLEET_OK)
            return rc;
        rc = rpc_once(c, method, build, arg, 1, root);
    }
    if (rc != FLEET_OK)
        emit(c, FLEET_EV_ERROR, method, rc == FLEET_E_HTTP ? c->http_status : rc);
    return rc;
}

/* ---- Enroll ---- */

static void build_enroll(fleet_client_t *c, fleet_jw_t *w, const void *arg)
{
    (void)arg;
    fleet_jw_open(w, '{');
    fleet_jw_key(w, "hardware_id");
    fleet_jw_str(w, c->hardware_id);
    fleet_jw_key(w, "device_type");
    fleet_jw_str(w, c->device_type);
    fleet_jw_key(w, "public_key");
    fleet_jw_b64(w, c->device_public_key, 32);
    if (c->join_token && c->join_token[0]) {
        fleet_jw_key(w, "token");
        fleet_jw_str(w, c->join_token);
    }
    fleet_jw_close(w, '}');
}

int fleet_client_enroll(fleet_client_t *c)
{
    fleet_json_t root;
    char id[FLEET_DEVICE_ID_MAX + 1], b64[64], status[16], claim[16];
    uint8_t key[33];
    int rc = rpc_once(c, "Enroll", build_enroll, NULL, 0, &root);
    if (rc == FLEET_E_HTTP && c->http_status == 409) {
        /* Another key holds this hardware id (docs/protocol.md section 5): only an admin can help. */
        emit(c, FLEET_EV_ERROR, "Enroll: this hardware id is already enrolled with another key (did this device "
             "lose its key?). An admin runs 'fleetd devices rekey HARDWARE_ID' and gives the device the token it "
             "prints as its join token, or deletes the device", FLEET_E_CONFLICT);
        return FLEET_E_CONFLICT;
    }
    if (rc != FLEET_OK) {
        emit(c, FLEET_EV_ERROR, "Enroll", rc == FLEET_E_HTTP ? c->http_status : rc);
        return rc;
    }
    if (fleet_json_str(&root, "device_id", id, sizeof id) != FLEET_OK || !id[0] ||
        fleet_json_str(&root, "signing_public_key", b64, sizeof b64) != FLEET_OK ||
        fleet_b64_decode(key, sizeof key, b64, (uint32_t)strlen(b64)) != 32 ||
        fleet_json_str(&root, "status", status, sizeof status) != FLEET_OK)
        return FLEET_E_PROTOCOL;
    fleet_json_u32(&root, "poll_interval", &c->poll_interval_s);
    /* A different signing key is a different fleet: never adopt it silently. */
    if (c->identity->signing_key_pinned && memcmp(c->identity->signing_key, key, 32) != 0) {
        emit(c, FLEET_EV_ERROR, "the server's signing key differs from the pinned one", FLEET_E_SIGNATURE);
        return FLEET_E_SIGNATURE;
    }
    memcpy(c->identity->device_id, id, sizeof id);
    memcpy(c->identity->signing_key, key, 32);
    c->identity->signing_key_pinned = 1;
    if (c->save_identity && (rc = c->save_identity(c->user, c->identity)) != FLEET_OK)
        return rc;
    c->pending = strcmp(status, "active") != 0;
    c->token[0] = '\0';
    emit(c, FLEET_EV_ENROLLED, id, !c->pending);
    if (c->pending && fleet_json_str(&root, "claim_code", claim, sizeof claim) == FLEET_OK && claim[0])
        emit(c, FLEET_EV_CLAIM_CODE, claim, 0);
    return FLEET_OK;
}

/* ---- GetChallenge + Authenticate ---- */

typedef struct auth_arg {
    const char *nonce;
    const uint8_t *sig;
} auth_arg_t;

static void build_challenge(fleet_client_t *c, fleet_jw_t *w, const void *arg)
{
    const auth_arg_t *a = (const auth_arg_t *)arg;
    fleet_jw_open(w, '{');
    fleet_jw_key(w, "device_id");
    fleet_jw_str(w, c->identity->device_id);
    if (a) {
        fleet_jw_key(w, "nonce");
        fleet_jw_str(w, a->nonce);
        fleet_jw_key(w, "signature");
        fleet_jw_b64(w, a->sig, 64);
    }
    fleet_jw_close(w, '}');
}

int fleet_client_authenticate(fleet_client_t *c)
{
    fleet_json_t root;
    char nonce[80], msg[sizeof AUTH_PREFIX + FLEET_DEVICE_ID_MAX + 1 + sizeof nonce];
    uint8_t sig[64];
    uint32_t life = 0;
    auth_arg_t a;
    int rc;

    c->token[0] = '\0';
    rc = rpc_once(c, "GetChallenge", build_challenge, NULL, 0, &root);
    if (rc == FLEET_E_HTTP && c->http_status == 401) {
        /* Deleted or rejected by an admin: enroll again on the next poll. */
        c->identity->device_id[0] = '\0';
        if (c->save_identity)
            c->save_identity(c->user, c->identity);
    }
    if (rc == FLEET_OK && fleet_json_str(&root, "nonce", nonce, sizeof nonce) != FLEET_OK)
        rc = FLEET_E_PROTOCOL;
    if (rc == FLEET_OK) {
        msg[0] = '\0';
        cat(msg, sizeof msg, AUTH_PREFIX);
        cat(msg, sizeof msg, c->identity->device_id);
        cat(msg, sizeof msg, ":");
        cat(msg, sizeof msg, nonce);
        if (!c->port->crypto.ed25519_sign ||
            c->port->crypto.ed25519_sign(c->port->crypto.ctx, sig, (const uint8_t *)msg, strlen(msg)) != 0)
            rc = FLEET_E_IO;
    }
    if (rc == FLEET_OK) {
        a.nonce = nonce;
        a.sig = sig;
        rc = rpc_once(c, "Authenticate", build_challenge, &a, 0, &root);
    }
    if (rc == FLEET_OK && (fleet_json_str(&root, "token", c->token, sizeof c->token) != FLEET_OK ||
                           fleet_json_u32(&root, "expires_in", &life) != FLEET_OK)) {
        c->token[0] = '\0';
        rc = FLEET_E_PROTOCOL;
    }
    if (rc != FLEET_OK) {
        emit(c, FLEET_EV_ERROR, "Authenticate", rc == FLEET_E_HTTP ? c->http_status : rc);
        return rc;
    }
    if (life > 86400u)
        life = 86400u;
    c->token_at_ms = c->port->now_ms(c->port->sys_ctx);
    c->token_life_ms = life * 1000u;
    emit(c, FLEET_EV_AUTHENTICATED, c->identity->device_id, (int32_t)life);
    return FLEET_OK;
}

/* ---- CheckIn ---- */

static void build_checkin(fleet_client_t *c, fleet_jw_t *w, const void *arg)
{
    const fleet_status_t *st = (const fleet_status_t *)arg;
    char ver[24];
    fmt_version(ver, &st->running);
    fleet_jw_open(w, '{');
    fleet_jw_key(w, "components");
    fleet_jw_open(w, '[');
    fleet_jw_open(w, '{');
    fleet_jw_key(w, "name");
    fleet_jw_str(w, c->component);
    fleet_jw_key(w, "version");
    fleet_jw_str(w, ver);
    fleet_jw_key(w, "state");
    fleet_jw_str(w, st->state == FLEET_STATE_TRIAL ? "trial" : "running");
    fleet_jw_key(w, "health");
    fleet_jw_str(w, st->state == FLEET_STATE_TRIAL ? "" : "healthy");
    fleet_jw_key(w, "restarts");
    fleet_jw_u32(w, 0);
    fleet_jw_close(w, '}');
    fleet_jw_close(w, ']');
    fleet_jw_close(w, '}');
}

static int is_hex64(const char *s)
{
    uint32_t i;
    for (i = 0; i < 64; i++)
        if (!((s[i] >= '0' && s[i] <= '9') || (s[i] >= 'a' && s[i] <= 'f')))
            return 0;
    return s[64] == '\0';
}

/* Fills *a from one action object when it is for the shim to do. */
static int take_action(fleet_client_t *c, const fleet_json_t *v, fleet_action_t *a)
{
    char comp[64], state[12];
    fleet_json_t art;
    int rb = 0;
    memset(a, 0, sizeof *a);
    if (fleet_json_str(v, "component", comp, sizeof comp) != FLEET_OK)
        comp[0] = '\0'; /* absent or too long: not ours */
    if (fleet_json_str(v, "kind", a->kind, sizeof a->kind) != FLEET_OK ||
        fleet_json_str(v, "id", a->id, sizeof a->id) != FLEET_OK)
        return 0;
    if (strcmp(a->kind, "reboot") != 0 && strcmp(a->kind, "logs") != 0 &&
        (strcmp(comp, c->component) != 0 ||
         (strcmp(a->kind, "install") != 0 && strcmp(a->kind, "rollback") != 0)))
        return 0;
    fleet_json_bool(v, "rollback", &rb);
    a->rollback = (uint8_t)rb;
    a->offered = fleet_json_str(v, "state", state, sizeof state) == FLEET_OK && strcmp(state, "offered") == 0;
    if (fleet_json_get(v, "artifact", &art) == FLEET_OK) {
        a->has_artifact = 1;
        /* One the client cannot read or hold is reported failed (size 0):
         * skipped, the action would stay open forever. */
        if (fleet_json_str(&art, "version", a->version, sizeof a->version) != FLEET_OK ||
            fleet_json_str(&art, "sha256", a->sha256, sizeof a->sha256) != FLEET_OK ||
            fleet_json_u32(&art, "size", &a->size) != FLEET_OK) {
            a->size = 0;
            a->version[0] = a->sha256[0] = '\0';
        }
    }
    return 1;
}

int fleet_client_checkin(fleet_client_t *c, const fleet_status_t *st, fleet_action_t *action)
{
    fleet_json_t root, actions, v;
    char status[16], idx[14];
    int32_t i, n = 0;
    int rc = rpc(c, "CheckIn", build_checkin, st, &root);
    memset(action, 0, sizeof *action);
    if (rc != FLEET_OK)
        return rc;
    if (fleet_json_str(&root, "status", status, sizeof status) != FLEET_OK)
        return FLEET_E_PROTOCOL;
    c->pending = strcmp(status, "active") != 0;
    fleet_json_u32(&root, "poll_interval", &c->poll_interval_s);
    if (fleet_json_get(&root, "actions", &actions) == FLEET_OK)
        n = fleet_json_count(&actions);
    emit(c, FLEET_EV_CHECKIN, status, n);
    for (i = 0; i < n; i++) {
        idx[0] = '[';
        fleet_fmt_u32(idx + 1, (uint32_t)i);
        cat(idx, sizeof idx, "]");
        if (fleet_json_get(&actions, idx, &v) == FLEET_OK && take_action(c, &v, action))
            return FLEET_OK;
    }
    memset(action, 0, sizeof *action);
    return FLEET_OK;
}

/* ---- ReportStatus ---- */

typedef struct report_arg {
    const char *id, *state, *message;
    uint32_t progress;
} report_arg_t;

static void build_report(fleet_client_t *c, fleet_jw_t *w, const void *arg)
{
    const report_arg_t *r = (const report_arg_t *)arg;
    (void)c;
    fleet_jw_open(w, '{');
    fleet_jw_key(w, "action_id");
    fleet_jw_str(w, r->id);
    fleet_jw_key(w, "state");
    fleet_jw_str(w, r->state);
    fleet_jw_key(w, "message");
    fleet_jw_str(w, r->message ? r->message : "");
    fleet_jw_key(w, "progress");
    fleet_jw_u32(w, r->progress);
    fleet_jw_close(w, '}');
}

int fleet_client_report(fleet_client_t *c, const char *action_id, const char *state, const char *message,
                        uint32_t progress)
{
    fleet_json_t root;
    report_arg_t r;
    int rc;
    r.id = action_id;
    r.state = state;
    r.message = message;
    r.progress = progress > 100u ? 100u : progress;
    rc = rpc(c, "ReportStatus", build_report, &r, &root);
    if (rc == FLEET_OK)
        emit(c, FLEET_EV_REPORT, state, (int32_t)r.progress);
    return rc;
}

/* A report the server will never take (the action ended otherwise, or is
 * not ours any more): drop it like a delivered one. */
static int report_settled(fleet_client_t *c, int rc)
{
    return rc == FLEET_OK || (rc == FLEET_E_HTTP && (c->http_status == 400 || c->http_status == 404));
}

/* Reports what the last update came to (kept in the state across resets),
 * then clears it. */
static int report_result(fleet_client_t *c, const fleet_status_t *st)
{
    char msg[MSG_MAX], ver[24];
    const char *state;
    int rc;
    fmt_version(ver, &st->running);
    msg[0] = '\0';
    if (st->result == FLEET_RESULT_CONFIRMED) {
        state = "succeeded";
        cat(msg, sizeof msg, "running ");
        cat(msg, sizeof msg, ver);
        cat(msg, sizeof msg, ", confirmed");
    } else if (st->result == FLEET_RESULT_REVERTED) {
        state = "rolled_back";
        cat(msg, sizeof msg, "the new image was not confirmed before a reset; reverted to ");
        cat(msg, sizeof msg, ver);
    } else {
        state = "failed";
        cat(msg, sizeof msg, "image refused: ");
        cat(msg, sizeof msg, reason(st->result_error));
    }
    if (st->action_id[0]) {
        rc = fleet_client_report(c, st->action_id, state, msg, 100);
        if (!report_settled(c, rc))
            return rc;
    }
    return fleet_status_ack(c->port, c->cfg);
}

/* ---- Download and install ---- */

typedef struct download {
    fleet_update_t *u;
    const int *status;
    uint32_t pos;     /* image bytes handed to fleet_update_write */
    uint32_t skip;    /* body bytes to drop (a 200 answer repeats what we have) */
    uint32_t end;     /* do not accept bytes past this */
    uint8_t whole;    /* this answer is the whole file (200), not the range asked for */
    int err;
} download_t;

static int download_body(void *user, const uint8_t *data, size_t len)
{
    download_t *d = (download_t *)user;
    uint32_t n = (uint32_t)len, k;
    int rc;
    if (*d->status != 200 && *d->status != 206)
        return 0; /* an error body: the status says enough */
    if (*d->status == 200 && !d->whole) {
        /* The server ignored the Range and sends the whole file. */
        d->whole = 1;
        d->skip = d->pos;
        d->end = d->u->size;
    }
    k = d->skip < n ? d->skip : n;
    d->skip -= k;
    data += k;
    n -= k;
    if (n == 0)
        return 0;
    if (n > d->end - d->pos) {
        d->err = FLEET_E_PROTOCOL;
        return 1;
    }
    rc = fleet_update_write(d->u, data, n);
    if (rc != FLEET_OK) {
        d->err = rc;
        return 1;
    }
    d->pos += n;
    return 0;
}

static uint32_t percent(uint32_t part, uint32_t whole)
{
    return whole ? (uint32_t)(((uint64_t)part * 100u) / whole) : 100u;
}

static int download(fleet_client_t *c, fleet_update_t *u, const fleet_action_t *a, download_t *d)
{
    char path[10 + 64 + 1] = "/v1/blobs/";
    fleet_http_request_t req;
    uint32_t step = c->progress_step ? c->progress_step : (u->size + 3u) / 4u;
    int status, rc, retried = 0;

    if (!c->progress_step && step < 8192u)
        step = 8192u;

    cat(path, sizeof path, a->sha256);
    while (d->pos < u->size) {
        uint32_t start = d->pos;
        if (!token_fresh(c) && (rc = fleet_client_authenticate(c)) != FLEET_OK)
            return rc;
        d->skip = 0;
        d->whole = 0;
        d->end = u->size - d->pos > step ? d->pos + step : u->size;
        d->err = FLEET_OK;
        status = 0;
        d->status = &status; /* the transport stores it before the first body byte */
        memset(&req, 0, sizeof req);
        req.method = "GET";
        req.path = path;
        req.bearer = c->token;
        req.range_start = d->pos;
        req.range_end = d->end - 1u;
        rc = c->port->transport.request(c->port->transport.ctx, &req, &status, download_body, d);
        c->http_status = status;
        if (d->err != FLEET_OK)
            return d->err;
        if (rc != FLEET_OK)
            return rc;
        if (status == 401 && !retried) {
            c->token[0] = '\0';
            retried = 1;
            continue;
        }
        if (status != 200 && status != 206) {
            emit(c, FLEET_EV_ERROR, "download", status);
            return FLEET_E_HTTP;
        }
        if (d->pos == start)
            return FLEET_E_PROTOCOL;
        retried = 0;
        emit(c, FLEET_EV_PROGRESS, a->id, (int32_t)d->pos);
        if (d->pos < u->size)
            fleet_client_report(c, a->id, "downloading", "", percent(d->pos, u->size));
    }
    return FLEET_OK;
}

int fleet_client_install(fleet_client_t *c, const fleet_action_t *a)
{
    fleet_update_t u;
    fleet_image_header_t hdr;
    download_t d;
    char msg[MSG_MAX], ver[24];
    int rc;

    msg[0] = '\0';
    if (!a->has_artifact && strcmp(a->kind, "rollback") == 0) {
        /* A rollback with no version to go back to: firmware keeps what runs. */
        cat(msg, sizeof msg, "no previous version to go back to; keeping the running firmware");
        rc = fleet_client_report(c, a->id, "succeeded", msg, 100);
        return report_settled(c, rc) ? FLEET_POLL_BUSY : rc;
    }
    if (!a->has_artifact || a->size == 0 || !is_hex64(a->sha256)) {
        rc = fleet_client_report(c, a->id, "failed", "the action has no usable artifact", 0);
        return report_settled(c, rc) ? FLEET_POLL_BUSY : rc;
    }
    emit(c, FLEET_EV_ACTION, a->id, (int32_t)a->size);
    /* Deployed with consent: firmware updates are accepted by policy. */
    if (a->offered && (rc = fleet_client_report(c, a->id, "accepted", "", 0)) != FLEET_OK)
        return rc;
    rc = fleet_update_begin(&u, c->port, c->cfg, a->id, a->size, c->flash_buf, c->flash_buf_size);
    if (rc != FLEET_OK) {
        cat(msg, sizeof msg, "cannot start the update: ");
        cat(msg, sizeof msg, reason(rc));
        emit(c, FLEET_EV_REFUSED, msg, rc);
        rc = fleet_client_report(c, a->id, "failed", msg, 0);
        return report_settled(c, rc) ? FLEET_POLL_BUSY : rc;
    }
    d.u = &u;
    d.pos = u.offset;
    emit(c, FLEET_EV_DOWNLOAD, a->id, (int32_t)d.pos);
    fleet_client_report(c, a->id, "downloading", d.pos ? "resuming" : "", percent(d.pos, a->size));
    rc = download(c, &u, a, &d);
    if (rc == FLEET_E_HTTP && c->http_status == 416) {
        /* The server has less than we think we have: start over. */
        fleet_update_abort(c->port, c->cfg);
        if ((rc = fleet_update_begin(&u, c->port, c->cfg, a->id, a->size, c->flash_buf,
                                     c->flash_buf_size)) == FLEET_OK) {
            d.pos = u.offset;
            rc = download(c, &u, a, &d);
        }
    }
    if (rc != FLEET_OK)
        return rc; /* kept in flash: resumes at the next poll */
    fleet_client_report(c, a->id, "verifying", "", 100);
    rc = fleet_update_finish(&u, &hdr);
    if (rc != FLEET_OK) {
        cat(msg, sizeof msg, "image refused: ");
        cat(msg, sizeof msg, reason(rc));
        emit(c, FLEET_EV_REFUSED, msg, rc);
        rc = fleet_client_report(c, a->id, "failed", msg, 100);
        if (!report_settled(c, rc))
            return rc; /* the REJECTED result is reported at the next poll */
        fleet_status_ack(c->port, c->cfg);
        return FLEET_POLL_BUSY;
    }
    emit(c, FLEET_EV_VERIFIED, a->id, (int32_t)a->size);
    fmt_version(ver, &hdr.version);
    cat(msg, sizeof msg, "image ");
    cat(msg, sizeof msg, ver);
    cat(msg, sizeof msg, " verified; rebooting into a trial");
    fleet_client_report(c, a->id, "installing", msg, 100);
    emit(c, FLEET_EV_REBOOT, a->id, 0);
    c->port->reboot(c->port->sys_ctx);
    return FLEET_POLL_REBOOT;
}

/* ---- One cycle ---- */

int fleet_client_poll(fleet_client_t *c)
{
    fleet_status_t st;
    fleet_action_t a;
    char ver[24];
    int rc, busy = FLEET_POLL_IDLE;

    if (!c->identity->device_id[0] && (rc = fleet_client_enroll(c)) != FLEET_OK)
        return rc;
    if ((rc = fleet_status_read(c->port, c->cfg, &st)) != FLEET_OK)
        return rc;
    if (st.state == FLEET_STATE_PENDING) {
        emit(c, FLEET_EV_REBOOT, st.action_id, 0);
        c->port->reboot(c->port->sys_ctx);
        return FLEET_POLL_REBOOT;
    }
    if (st.result != FLEET_RESULT_NONE && st.state != FLEET_STATE_TRIAL) {
        if ((rc = report_result(c, &st)) != FLEET_OK)
            return rc;
        busy = FLEET_POLL_BUSY;
    }
    rc = fleet_client_checkin(c, &st, &a);
    /* A 200 too large for resp still shows the trial image reached the
     * server; not confirming it would revert a good image at the next reset. */
    if (rc == FLEET_E_SPACE && c->http_status == 200 && st.state == FLEET_STATE_TRIAL)
        rc = FLEET_OK;
    if (rc != FLEET_OK)
        return rc;
    if (c->pending)
        return FLEET_POLL_IDLE;
    if (st.state == FLEET_STATE_TRIAL) {
        /* The trial image reached the server: keep it. */
        if ((rc = fleet_confirm(c->port, c->cfg)) != FLEET_OK)
            return rc;
        emit(c, FLEET_EV_CONFIRMED, st.action_id, 0);
        if ((rc = fleet_status_read(c->port, c->cfg, &st)) != FLEET_OK)
            return rc;
        if (st.result == FLEET_RESULT_NONE)
            st.result = FLEET_RESULT_CONFIRMED;
        rc = report_result(c, &st);
        return rc == FLEET_OK ? FLEET_POLL_BUSY : rc;
    }
    if (strcmp(a.kind, "logs") == 0) {
        /* No apps, so no app logs: failed, not left open forever (and a download under way goes on). */
        rc = fleet_client_report(c, a.id, "failed", "this device runs the RTOS shim: it has no app logs", 0);
        return report_settled(c, rc) ? FLEET_POLL_BUSY : rc;
    }
    if (st.state == FLEET_STATE_DOWNLOADING && strcmp(a.id, st.action_id) != 0) {
        /* The action we were downloading for was cancelled. */
        fleet_update_abort(c->port, c->cfg);
        busy = FLEET_POLL_BUSY;
    }
    if (!a.id[0])
        return busy;
    if (strcmp(a.kind, "reboot") == 0) {
        /* Reported before the reset or not at all: the action stays in the
         * check-in until its report arrives, so rebooting without it would
         * reboot again at every poll. */
        rc = fleet_client_report(c, a.id, "succeeded", "rebooting", 100);
        if (!report_settled(c, rc))
            return rc;
        emit(c, FLEET_EV_REBOOT, a.id, 0);
        c->port->reboot(c->port->sys_ctx);
        return FLEET_POLL_REBOOT;
    }
    fmt_version(ver, &st.running);
    if (strcmp(a.id, st.action_id) == 0 && st.state == FLEET_STATE_IDLE && strcmp(a.version, ver) == 0) {
        /* Installed and confirmed, but the report was lost. */
        rc = fleet_client_report(c, a.id, "succeeded", "running, confirmed", 100);
        return report_settled(c, rc) ? FLEET_POLL_BUSY : rc;
    }
    rc = fleet_client_install(c, &a);
    return rc == FLEET_OK ? FLEET_POLL_BUSY : rc;
}
