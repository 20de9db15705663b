/* libcurl transport for the POSIX port (see transport_curl.h). */
#define _POSIX_C_SOURCE 200809L
#include "transport_curl.h"

#include <curl/curl.h>
#include <stdio.h>
#include <string.h>

typedef struct sink {
    CURL *easy;
    int *status;
    fleet_body_cb on_body;
    void *user;
} sink_t;

static size_t on_write(char *data, size_t size, size_t nmemb, void *userp)
{
    sink_t *s = (sink_t *)userp;
    long code = 0;
    size_t n = size * nmemb;
    /* The status is known once the headers are in: store it before the body. */
    curl_easy_getinfo(s->easy, CURLINFO_RESPONSE_CODE, &code);
    *s->status = (int)code;
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

int fleet_curl_request(void *ctx, const fleet_http_request_t *req, int *status, fleet_body_cb on_body,
                       void *user)
{
    fleet_curl_t *t = (fleet_curl_t *)ctx;
    CURL *e = (CURL *)t->easy;
    struct curl_slist *hdrs = NULL;
    char url[1024], line[512];
    sink_t s;
    CURLcode rc;
    long code = 0;

    *status = 0;
    if (!e || strlen(t->base_url) + strlen(req->path) >= sizeof url)
        return FLEET_E_INVALID;
    snprintf(url, sizeof url, "%s%s", t->base_url, req->path);
    curl_easy_reset(e);
    curl_easy_setopt(e, CURLOPT_URL, url);
    curl_easy_setopt(e, CURLOPT_NOSIGNAL, 1L);
    curl_easy_setopt(e, CURLOPT_PROTOCOLS_STR, "http,https");
    /* Pin the fleet CA: it is the only trust anchor. */
    curl_easy_setopt(e, CURLOPT_CAINFO, t->ca_file);
    curl_easy_setopt(e, CURLOPT_CAPATH, NULL);
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
    if (req->bearer && req->bearer[0]) {
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
        fprintf(stderr, "fleet-transport: %s %s: %s\n", req->method, req->path, curl_easy_strerror(rc));
        return FLEET_E_IO;
    }
    return FLEET_OK;
}
