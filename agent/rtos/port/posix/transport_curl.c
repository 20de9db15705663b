/* libcurl transport for the POSIX port (see transport_curl.h). */
#define _POSIX_C_SOURCE 200809L
#include "transport_curl.h"

#include <curl/curl.h>
#include <stdio.h>
#include <string.h>
#include <strings.h>

typedef struct sink {
    CURL *easy;
    int *status;
    fleet_body_cb on_body;
    void *user;
} sink_t;

static int is_redirect(long code);

static size_t on_write(char *data, size_t size, size_t nmemb, void *userp)
{
    sink_t *s = (sink_t *)userp;
    long code = 0;
    size_t n = size * nmemb;
    /* The status is known once the headers are in: store it before the body. */
    curl_easy_getinfo(s->easy, CURLINFO_RESPONSE_CODE, &code);
    *s->status = (int)code;
    if (is_redirect(code))
        return n; /* followed by fleet_curl_request: the body is not the answer */
    if (s->on_body && s->on_body(s->user, (const uint8_t *)data, n) != 0)
        return 0; /* aborts the transfer */
    return n;
}

int fleet_curl_init(fleet_curl_t *t, const char *base_url, const char *ca_file)
{
    size_t n = strlen(base_url);
    memset(t, 0, sizeof *t);
    while (n > 0 && base_url[n - 1] == '/')
        n--;
    if (n == 0 || n >= sizeof t->base_url || strlen(ca_file) >= sizeof t->ca_file ||
        (strncmp(base_url, "https://", 8) != 0 && strncmp(base_url, "http://", 7) != 0))
        return FLEET_E_INVALID;
    memcpy(t->base_url, base_url, n);
    strcpy(t->ca_file, ca_file);
    t->timeout_s = 300;
    if (curl_global_init(CURL_GLOBAL_DEFAULT) != CURLE_OK || !(t->easy = curl_easy_init()))
        return FLEET_E_IO;
    return FLEET_OK;
}

void fleet_curl_close(fleet_curl_t *t)
{
    if (t->easy)
        curl_easy_cleanup((CURL *)t->easy);
    t->easy = NULL;
}

static int is_redirect(long code)
{
    return code == 301 || code == 302 || code == 303 || code == 307 || code == 308;
}

/* 1 when both URLs have the same scheme, host and port. */
static int same_origin(const char *a, const char *b)
{
    static const CURLUPart parts[] = {CURLUPART_SCHEME, CURLUPART_HOST, CURLUPART_PORT};
    CURLU *ua = curl_url(), *ub = curl_url();
    int same = ua && ub && curl_url_set(ua, CURLUPART_URL, a, 0) == CURLUE_OK &&
               curl_url_set(ub, CURLUPART_URL, b, 0) == CURLUE_OK;
    size_t i;
    for (i = 0; same && i < sizeof parts / sizeof parts[0]; i++) {
        char *pa = NULL, *pb = NULL;
        same = curl_url_get(ua, parts[i], &pa, CURLU_DEFAULT_PORT) == CURLUE_OK &&
               curl_url_get(ub, parts[i], &pb, CURLU_DEFAULT_PORT) == CURLUE_OK && strcasecmp(pa, pb) == 0;
        curl_free(pa);
        curl_free(pb);
    }
    curl_url_cleanup(ua);
    curl_url_cleanup(ub);
    return same;
}

/* One exchange with url. fleet: the fleet server (pinned CA, bearer token); else another host, such as the
 * S3 bucket a pre-signed download redirects to (the system's CAs, no token). Redirect bodies are dropped. */
static int perform(fleet_curl_t *t, const fleet_http_request_t *req, const char *url, int fleet, int *status,
                   fleet_body_cb on_body, void *user)
{
    CURL *e = (CURL *)t->easy;
    struct curl_slist *hdrs = NULL;
    char line[512];
    sink_t s;
    CURLcode rc;
    long code = 0;

    *status = 0;
    curl_easy_reset(e);
    curl_easy_setopt(e, CURLOPT_URL, url);
    curl_easy_setopt(e, CURLOPT_NOSIGNAL, 1L);
    curl_easy_setopt(e, CURLOPT_PROTOCOLS_STR, "http,https");
    if (fleet) {
        /* Pin the fleet CA: it is the only trust anchor for the server. */
        curl_easy_setopt(e, CURLOPT_CAINFO, t->ca_file);
        curl_easy_setopt(e, CURLOPT_CAPATH, NULL);
    } /* else libcurl's default: the system's CA store */
    curl_easy_setopt(e, CURLOPT_SSL_VERIFYPEER, 1L);
    curl_easy_setopt(e, CURLOPT_SSL_VERIFYHOST, 2L);
    curl_easy_setopt(e, CURLOPT_CONNECTTIMEOUT, 10L);
    curl_easy_setopt(e, CURLOPT_TIMEOUT, t->timeout_s);
    if (t->max_recv_bps > 0)
        curl_easy_setopt(e, CURLOPT_MAX_RECV_SPEED_LARGE, (curl_off_t)t->max_recv_bps);
    if (strcmp(req->method, "POST") == 0) {
        curl_easy_setopt(e, CURLOPT_POST, 1L);
        curl_easy_setopt(e, CURLOPT_POSTFIELDS, req->body ? (const char *)req->body : "");
        curl_easy_setopt(e, CURLOPT_POSTFIELDSIZE_LARGE, (curl_off_t)req->body_len);
    } else if (strcmp(req->method, "GET") != 0) {
        curl_easy_setopt(e, CURLOPT_CUSTOMREQUEST, req->method);
    }
    /* libcurl would otherwise add "Expect: 100-continue" to larger POSTs. */
    hdrs = curl_slist_append(hdrs, "Expect:");
    if (req->content_type) {
        snprintf(line, sizeof line, "Content-Type: %s", req->content_type);
        hdrs = curl_slist_append(hdrs, line);
    }
    if (fleet && req->bearer && req->bearer[0]) {
        if (strlen(req->bearer) > sizeof line - 32) {
            curl_slist_free_all(hdrs);
            return FLEET_E_INVALID;
        }
        snprintf(line, sizeof line, "Authorization: Bearer %s", req->bearer);
        hdrs = curl_slist_append(hdrs, line);
    }
    if (req->range_end)
        snprintf(line, sizeof line, "Range: bytes=%lu-%lu", (unsigned long)req->range_start,
                 (unsigned long)req->range_end);
    else if (req->range_start)
        snprintf(line, sizeof line, "Range: bytes=%lu-", (unsigned long)req->range_start);
    if (req->range_start || req->range_end)
        hdrs = curl_slist_append(hdrs, line);
    curl_easy_setopt(e, CURLOPT_HTTPHEADER, hdrs);
    s.easy = e;
    s.status = status;
    s.on_body = on_body;
    s.user = user;
    curl_easy_setopt(e, CURLOPT_WRITEFUNCTION, on_write);
    curl_easy_setopt(e, CURLOPT_WRITEDATA, &s);
    rc = curl_easy_perform(e);
    curl_slist_free_all(hdrs);
    curl_easy_getinfo(e, CURLINFO_RESPONSE_CODE, &code);
    *status = (int)code;
    if (rc != CURLE_OK) {
        fprintf(stderr, "fleet-transport: %s %s: %s\n", req->method, fleet ? req->path : "(redirected)",
                curl_easy_strerror(rc));
        return FLEET_E_IO;
    }
    return FLEET_OK;
}

int fleet_curl_request(void *ctx, const fleet_http_request_t *req, int *status, fleet_body_cb on_body,
                       void *user)
{
    fleet_curl_t *t = (fleet_curl_t *)ctx;
    char url[FLEET_CURL_URL_MAX];
    const char *location = NULL;
    int hops, fleet = 1, rc;

    *status = 0;
    if (!t->easy || strlen(t->base_url) + strlen(req->path) >= sizeof url)
        return FLEET_E_INVALID;
    snprintf(url, sizeof url, "%s%s", t->base_url, req->path);
    /* A GET may be redirected (pre-signed downloads from the server's S3 bucket, docs/rtos.md): followed here,
     * not by CURLOPT_FOLLOWLOCATION, because another host gets neither the token nor the fleet CA. */
    for (hops = 0;; hops++) {
        if ((rc = perform(t, req, url, fleet, status, on_body, user)) != FLEET_OK)
            return rc;
        if (strcmp(req->method, "GET") != 0 || !is_redirect(*status) ||
            curl_easy_getinfo((CURL *)t->easy, CURLINFO_REDIRECT_URL, &location) != CURLE_OK || !location)
            break;
        if (hops == FLEET_CURL_MAX_REDIRECTS) {
            fprintf(stderr, "fleet-transport: GET %s: more than %d redirects\n", req->path,
                    FLEET_CURL_MAX_REDIRECTS);
            return FLEET_E_IO;
        }
        /* To https anywhere, or to http when the server itself is http (the agent's rule). */
        if (strncmp(location, "https://", 8) != 0 &&
            !(strncmp(location, "http://", 7) == 0 && strncmp(t->base_url, "http://", 7) == 0)) {
            fprintf(stderr,
                    "fleet-transport: GET %s: the server redirected the download to %.*s, which is not https: "
                    "refused. Give the server's S3 endpoint an https URL.\n",
                    req->path, (int)strcspn(location, "?"), location);
            return FLEET_E_IO;
        }
        if (strlen(location) >= sizeof url) {
            fprintf(stderr, "fleet-transport: GET %s: the redirect URL is longer than %d bytes\n", req->path,
                    FLEET_CURL_URL_MAX - 1);
            return FLEET_E_IO;
        }
        strcpy(url, location);
        fleet = same_origin(url, t->base_url);
    }
    if (!fleet && *status != 200 && *status != 206 && *status != 416) {
        /* e.g. a pre-signed URL that expired (403): a transport error, so the core asks the server again and
         * gets a fresh URL. */
        fprintf(stderr, "fleet-transport: GET %s: the redirected download answered HTTP %d; retrying via the server\n",
                req->path, *status);
        return FLEET_E_IO;
    }
    return FLEET_OK;
}
