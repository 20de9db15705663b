/* See client_harness.h. */
#include "client_harness.h"

#include <string.h>

#include "fleet/client.h"

typedef struct script {
    const char *checkin;
    int report_status;
    char *log;
    uint32_t log_len;
    int rebooted;
} script_t;

static void log_add(script_t *s, const char *text, size_t n) {
    size_t have = strlen(s->log);
    if (n > s->log_len - 1u - have) n = s->log_len - 1u - have;
    memcpy(s->log + have, text, n);
    s->log[have + n] = '\0';
}

static int request(void *ctx, const fleet_http_request_t *req, int *status, fleet_body_cb on_body, void *user) {
    script_t *s = ctx;
    const char *body = "{}";
    size_t n = strlen(req->path);
    log_add(s, req->method, strlen(req->method));
    log_add(s, " ", 1);
    log_add(s, req->path, n);
    log_add(s, " ", 1);
    log_add(s, (const char *)req->body, req->body_len);
    log_add(s, "\n", 1);
    if (n >= 8 && strcmp(req->path + n - 8, "/CheckIn") == 0) {
        *status = 200;
        body = s->checkin;
    } else if (n >= 13 && strcmp(req->path + n - 13, "/ReportStatus") == 0) {
        *status = s->report_status;
    } else {
        *status = 404;
        body = "{\"code\":\"not_found\",\"message\":\"no\"}";
    }
    return on_body(user, (const uint8_t *)body, strlen(body)) ? FLEET_E_IO : FLEET_OK;
}

static uint32_t now_ms(void *ctx) {
    (void)ctx;
    return 1000u;
}

static void reboot(void *ctx) { ((script_t *)ctx)->rebooted = 1; }

int shim_client_poll(shim_dev_t *d, const char *checkin, int report_status, char *log, uint32_t log_len,
                     int *rebooted) {
    static char resp[4096], req[512];
    script_t s;
    fleet_identity_t id;
    fleet_client_t c;
    int rc;
    memset(&s, 0, sizeof s);
    s.checkin = checkin;
    s.report_status = report_status;
    s.log = log;
    s.log_len = log_len;
    log[0] = '\0';
    memset(&id, 0, sizeof id);
    strcpy(id.device_id, "dev_test");
    id.signing_key_pinned = 1;
    d->port.transport.ctx = &s;
    d->port.transport.request = request;
    d->port.now_ms = now_ms;
    d->port.reboot = reboot;
    d->port.sys_ctx = &s;
    memset(&c, 0, sizeof c);
    c.port = &d->port;
    c.cfg = &d->cfg;
    c.hardware_id = "hw-test";
    c.device_type = d->device_type;
    c.component = "firmware";
    c.identity = &id;
    c.resp = resp;
    c.resp_size = sizeof resp;
    c.req = req;
    c.req_size = sizeof req;
    c.flash_buf = d->buf;
    c.flash_buf_size = d->buf_len;
    strcpy(c.token, "fdt.test");
    c.token_life_ms = 3600000u;
    rc = fleet_client_poll(&c);
    *rebooted = s.rebooted;
    return rc;
}
