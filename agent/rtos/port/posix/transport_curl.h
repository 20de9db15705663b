/* POSIX port: the shim's HTTP transport over libcurl, HTTPS pinned to the
 * fleet CA (the CA file is the only trust anchor; system CAs are not used). */
#ifndef FLEET_TRANSPORT_CURL_H
#define FLEET_TRANSPORT_CURL_H

#include "fleet/port.h"

typedef struct fleet_curl {
    void *easy;               /* CURL *, kept for connection reuse */
    char base_url[256];       /* "https://host:port", no trailing slash */
    char ca_file[512];
    long max_recv_bps;        /* 0: unlimited; else throttle downloads (tests) */
    long timeout_s;           /* whole-request timeout; 0: none */
} fleet_curl_t;

/* FLEET_OK, or FLEET_E_INVALID (URL or path too long, not http(s)) /
 * FLEET_E_IO (libcurl failed to start). */
int fleet_curl_init(fleet_curl_t *t, const char *base_url, const char *ca_file);
void fleet_curl_close(fleet_curl_t *t);
/* The fleet_transport_t.request function; ctx is a fleet_curl_t. */
int fleet_curl_request(void *ctx, const fleet_http_request_t *req, int *status, fleet_body_cb on_body,
                       void *user);

#endif
