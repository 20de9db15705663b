/* POSIX port: the shim's HTTP transport over libcurl, HTTPS to the server pinned to
 * the fleet CA (the CA file is its only trust anchor). A GET answered with a
 * redirect (301/302/303/307/308: a pre-signed download from the server's S3
 * bucket) is followed up to FLEET_CURL_MAX_REDIRECTS times: to https, or to
 * http when the server's URL is http; another host gets the Range header but
 * not the token, and its certificate is checked against the system's CAs. A
 * redirected answer other than 200/206/416 (an expired pre-signed URL: 403) is
 * FLEET_E_IO, so the core asks the server again. */
#ifndef FLEET_TRANSPORT_CURL_H
#define FLEET_TRANSPORT_CURL_H

#include "fleet/port.h"

#define FLEET_CURL_MAX_REDIRECTS 3
#define FLEET_CURL_URL_MAX 4096 /* pre-signed URLs are long */

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
