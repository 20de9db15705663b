/* Bounded JSON reader (validate once, then look values up by path) and a
 * writer into a fixed buffer. See fleet/json.h. */
#include <string.h>

#include "fleet/base64.h"
#include "fleet/json.h"
#include "fleet/port.h"

static int is_ws(char c)
{
    return c == ' ' || c == '\t' || c == '\n' || c == '\r';
}

static int is_digit(char c)
{
    return c >= '0' && c <= '9';
}

static uint32_t skip_ws(const char *s, uint32_t n, uint32_t i)
{
    while (i < n && is_ws(s[i]))
        i++;
    return i;
}

static int hex_value(char c)
{
    if (c >= '0' && c <= '9')
        return c - '0';
    if (c >= 'a' && c <= 'f')
        return c - 'a' + 10;
    if (c >= 'A' && c <= 'F')
        return c - 'A' + 10;
    return -1;
}

/* s[i] is '"'. Returns the index after the closing quote, or 0. */
static uint32_t scan_string(const char *s, uint32_t n, uint32_t i)
{
    for (i++; i < n; i++) {
        unsigned char c = (unsigned char)s[i];
        if (c == '"')
            return i + 1;
        if (c < 0x20)
            return 0;
        if (c == '\\') {
            if (++i >= n)
                return 0;
            c = (unsigned char)s[i];
            if (c == 'u') {
                uint32_t k;
                if (n - i <= 4)
                    return 0;
                for (k = 1; k <= 4; k++)
                    if (hex_value(s[i + k]) < 0)
                        return 0;
                i += 4;
            } else if (!memchr("\"\\/bfnrt", c, 8)) {
                return 0;
            }
        }
    }
    return 0;
}

static uint32_t scan_digits(const char *s, uint32_t n, uint32_t i)
{
    while (i < n && is_digit(s[i]))
        i++;
    return i;
}

/* -?(0|[1-9]d*)(.d+)?([eE][+-]?d+)? ; returns the index after it, or 0. */
static uint32_t scan_number(const char *s, uint32_t n, uint32_t i)
{
    uint32_t j;
    if (i < n && s[i] == '-')
        i++;
    if (i >= n || !is_digit(s[i]))
        return 0;
    i = s[i] == '0' ? i + 1 : scan_digits(s, n, i);
    if (i < n && s[i] == '.') {
        j = scan_digits(s, n, i + 1);
        if (j == i + 1)
            return 0;
        i = j;
    }
    if (i < n && (s[i] == 'e' || s[i] == 'E')) {
        i++;
        if (i < n && (s[i] == '+' || s[i] == '-'))
            i++;
        j = scan_digits(s, n, i);
        if (j == i)
            return 0;
        i = j;
    }
    return i;
}

static uint32_t scan_scalar(const char *s, uint32_t n, uint32_t i)
{
    static const char *const words[3] = {"true", "false", "null"};
    uint32_t k;
    if (s[i] == '"')
        return scan_string(s, n, i);
    for (k = 0; k < 3; k++) {
        uint32_t wl = (uint32_t)strlen(words[k]);
        if (n - i >= wl && memcmp(s + i, words[k], wl) == 0)
            return i + wl;
    }
    return scan_number(s, n, i);
}

/* Checks s[0..n) holds exactly one JSON value (surrounding space allowed).
 * Iterative: a bit per nesting level says object (1) or array (0). */
int fleet_json_parse(const char *s, uint32_t n, fleet_json_t *root)
{
    uint32_t stack = 0, depth = 0, i, start;
    if (!s || !root)
        return FLEET_E_INVALID;
    i = skip_ws(s, n, 0);
    start = i;
    for (;;) {
        /* A value at s[i]. */
        if (i >= n)
            return FLEET_E_PROTOCOL;
        if (s[i] == '{' || s[i] == '[') {
            int obj = s[i] == '{';
            if (depth >= FLEET_JSON_MAX_DEPTH)
                return FLEET_E_PROTOCOL;
            stack = (stack << 1) | (uint32_t)obj;
            depth++;
            i = skip_ws(s, n, i + 1);
            if (i < n && s[i] == (obj ? '}' : ']')) {
                stack >>= 1;
                depth--;
                i++;
            } else if (obj) {
                goto key;
            } else {
                continue;
            }
        } else {
            i = scan_scalar(s, n, i);
            if (i == 0)
                return FLEET_E_PROTOCOL;
        }
    after_value:
        i = skip_ws(s, n, i);
        if (depth == 0) {
            if (i != n)
                return FLEET_E_PROTOCOL;
            root->s = s + start;
            root->len = n - start;
            while (root->len > 0 && is_ws(root->s[root->len - 1]))
                root->len--;
            return FLEET_OK;
        }
        if (i >= n)
            return FLEET_E_PROTOCOL;
        if (s[i] == ',') {
            i = skip_ws(s, n, i + 1);
            if (!(stack & 1u))
                continue;
        } else if (s[i] == ((stack & 1u) ? '}' : ']')) {
            stack >>= 1;
            depth--;
            i++;
            goto after_value;
        } else {
            return FLEET_E_PROTOCOL;
        }
    key:
        if (i >= n || s[i] != '"' || (i = scan_string(s, n, i)) == 0)
            return FLEET_E_PROTOCOL;
        i = skip_ws(s, n, i);
        if (i >= n || s[i] != ':')
            return FLEET_E_PROTOCOL;
        i = skip_ws(s, n, i + 1);
    }
}

int fleet_json_type(const fleet_json_t *v)
{
    if (!v || !v->s || v->len == 0)
        return FLEET_JSON_INVALID;
    switch (v->s[0]) {
    case '{': return FLEET_JSON_OBJECT;
    case '[': return FLEET_JSON_ARRAY;
    case '"': return FLEET_JSON_STRING;
    case 't': return FLEET_JSON_TRUE;
    case 'f': return FLEET_JSON_FALSE;
    case 'n': return FLEET_JSON_NULL;
    default: return FLEET_JSON_NUMBER;
    }
}

/* The end of the (already validated) value at s[i], bounded by n. */
static uint32_t skip_value(const char *s, uint32_t n, uint32_t i)
{
    uint32_t depth = 0;
    if (i >= n)
        return n;
    if (s[i] != '{' && s[i] != '[') {
        uint32_t e = scan_scalar(s, n, i);
        return e ? e : n;
    }
    while (i < n) {
        char c = s[i];
        if (c == '"') {
            i = scan_string(s, n, i);
            if (i == 0)
                return n;
            continue;
        }
        if (c == '{' || c == '[')
            depth++;
        else if (c == '}' || c == ']') {
            if (--depth == 0)
                return i + 1;
        }
        i++;
    }
    return n;
}

/* Decodes one character of the string body at s[*i] (not the closing quote)
 * as a code point; advances *i. Returns -1 for an invalid escape. */
static int32_t next_char(const char *s, uint32_t n, uint32_t *i)
{
    uint32_t k = *i;
    unsigned char c = (unsigned char)s[k];
    if (c != '\\') {
        *i = k + 1;
        return c;
    }
    c = (unsigned char)s[k + 1];
    *i = k + 2;
    switch (c) {
    case 'b': return '\b';
    case 'f': return '\f';
    case 'n': return '\n';
    case 'r': return '\r';
    case 't': return '\t';
    case 'u': {
        int32_t cp = 0;
        uint32_t j;
        if (k + 6 > n)
            return -1;
        for (j = 2; j < 6; j++)
            cp = (cp << 4) | hex_value(s[k + j]);
        *i = k + 6;
        if (cp >= 0xD800 && cp <= 0xDBFF) {
            int32_t lo = 0;
            if (k + 12 > n || s[k + 6] != '\\' || s[k + 7] != 'u')
                return -1;
            for (j = 8; j < 12; j++) {
                int h = hex_value(s[k + j]);
                if (h < 0)
                    return -1;
                lo = (lo << 4) | h;
            }
            if (lo < 0xDC00 || lo > 0xDFFF)
                return -1;
            *i = k + 12;
            return 0x10000 + ((cp - 0xD800) << 10) + (lo - 0xDC00);
        }
        if (cp >= 0xDC00 && cp <= 0xDFFF)
            return -1;
        return cp;
    }
    default: return c; /* '"', '\\', '/' */
    }
}

/* Unescapes the string value v into out (cap includes the NUL). A raw
 * (unescaped) byte is copied as is; an escape becomes UTF-8. */
static int unescape(const fleet_json_t *v, char *out, uint32_t cap)
{
    uint32_t i = 1, end = v->len - 1, o = 0;
    while (i < end) {
        int raw = v->s[i] != '\\';
        int32_t cp = next_char(v->s, end, &i);
        uint8_t tmp[4];
        uint32_t k, nb;
        if (cp <= 0) /* a bad escape, or \u0000 (raw NUL bytes never pass the parser) */
            return FLEET_E_PROTOCOL;
        if (raw || cp < 0x80) {
            tmp[0] = (uint8_t)cp;
            nb = 1;
        } else if (cp < 0x800) {
            tmp[0] = (uint8_t)(0xC0 | (cp >> 6));
            tmp[1] = (uint8_t)(0x80 | (cp & 0x3F));
            nb = 2;
        } else if (cp < 0x10000) {
            tmp[0] = (uint8_t)(0xE0 | (cp >> 12));
            tmp[1] = (uint8_t)(0x80 | ((cp >> 6) & 0x3F));
            tmp[2] = (uint8_t)(0x80 | (cp & 0x3F));
            nb = 3;
        } else {
            tmp[0] = (uint8_t)(0xF0 | (cp >> 18));
            tmp[1] = (uint8_t)(0x80 | ((cp >> 12) & 0x3F));
            tmp[2] = (uint8_t)(0x80 | ((cp >> 6) & 0x3F));
            tmp[3] = (uint8_t)(0x80 | (cp & 0x3F));
            nb = 4;
        }
        if (o + nb >= cap)
            return FLEET_E_SPACE;
        for (k = 0; k < nb; k++)
            out[o++] = (char)tmp[k];
    }
    if (o >= cap)
        return FLEET_E_SPACE;
    out[o] = '\0';
    return FLEET_OK;
}

/* Does the string value key equal name[0..nl)? */
static int key_equals(const fleet_json_t *key, const char *name, uint32_t nl)
{
    char buf[48];
    if (nl >= sizeof buf || unescape(key, buf, sizeof buf) != FLEET_OK)
        return 0;
    return strlen(buf) == nl && memcmp(buf, name, nl) == 0;
}

/* The member of object v named name[0..nl). */
static int member(const fleet_json_t *v, const char *name, uint32_t nl, fleet_json_t *out)
{
    const char *s = v->s;
    uint32_t n = v->len, i = skip_ws(s, n, 1);
    while (i < n && s[i] == '"') {
        fleet_json_t key;
        uint32_t e = scan_string(s, n, i);
        if (e == 0)
            return FLEET_E_PROTOCOL;
        key.s = s + i;
        key.len = e - i;
        i = skip_ws(s, n, e);
        i = skip_ws(s, n, i + 1); /* ':' */
        e = skip_value(s, n, i);
        if (key_equals(&key, name, nl)) {
            out->s = s + i;
            out->len = e - i;
            return FLEET_OK;
        }
        i = skip_ws(s, n, e);
        if (i < n && s[i] == ',')
            i = skip_ws(s, n, i + 1);
    }
    return FLEET_JSON_ABSENT;
}

/* Element idx of array v, or counts elements (out NULL) into *count. */
static int element(const fleet_json_t *v, uint32_t idx, fleet_json_t *out, uint32_t *count)
{
    const char *s = v->s;
    uint32_t n = v->len, i = skip_ws(s, n, 1), k = 0;
    int obj = s[0] == '{';
    while (i < n && s[i] != ']' && s[i] != '}') {
        uint32_t e;
        if (obj) { /* counting members: skip the key */
            e = scan_string(s, n, i);
            if (e == 0)
                return FLEET_E_PROTOCOL;
            i = skip_ws(s, n, skip_ws(s, n, e) + 1);
        }
        e = skip_value(s, n, i);
        if (out && k == idx) {
            out->s = s + i;
            out->len = e - i;
            return FLEET_OK;
        }
        k++;
        i = skip_ws(s, n, e);
        if (i < n && s[i] == ',')
            i = skip_ws(s, n, i + 1);
    }
    if (count)
        *count = k;
    return FLEET_JSON_ABSENT;
}

int32_t fleet_json_count(const fleet_json_t *v)
{
    uint32_t k = 0;
    int t = fleet_json_type(v);
    if (t != FLEET_JSON_ARRAY && t != FLEET_JSON_OBJECT)
        return -1;
    if (element(v, 0, NULL, &k) < 0)
        return -1;
    return (int32_t)k;
}

int fleet_json_get(const fleet_json_t *base, const char *path, fleet_json_t *out)
{
    fleet_json_t cur;
    int rc;
    if (!base || !path || !out || fleet_json_type(base) == FLEET_JSON_INVALID)
        return FLEET_E_INVALID;
    cur = *base;
    while (*path) {
        if (*path == '[') {
            uint32_t idx = 0, digits = 0;
            for (path++; is_digit(*path) && digits < 9; path++, digits++)
                idx = idx * 10u + (uint32_t)(*path - '0');
            if (digits == 0 || *path != ']')
                return FLEET_E_INVALID;
            path++;
            if (fleet_json_type(&cur) != FLEET_JSON_ARRAY)
                return FLEET_JSON_ABSENT;
            rc = element(&cur, idx, &cur, NULL);
        } else {
            uint32_t nl = 0;
            if (*path == '.')
                path++;
            while (path[nl] && path[nl] != '.' && path[nl] != '[')
                nl++;
            if (nl == 0)
                return FLEET_E_INVALID;
            if (fleet_json_type(&cur) != FLEET_JSON_OBJECT)
                return FLEET_JSON_ABSENT;
            rc = member(&cur, path, nl, &cur);
            path += nl;
        }
        if (rc != FLEET_OK)
            return rc;
    }
    if (fleet_json_type(&cur) == FLEET_JSON_NULL)
        return FLEET_JSON_ABSENT;
    *out = cur;
    return FLEET_OK;
}

int fleet_json_str(const fleet_json_t *base, const char *path, char *out, uint32_t cap)
{
    fleet_json_t v;
    int rc = fleet_json_get(base, path, &v);
    if (rc != FLEET_OK)
        return rc;
    if (fleet_json_type(&v) != FLEET_JSON_STRING)
        return FLEET_E_PROTOCOL;
    if (!out || cap == 0)
        return FLEET_E_SPACE;
    return unescape(&v, out, cap);
}

int fleet_json_u32(const fleet_json_t *base, const char *path, uint32_t *out)
{
    fleet_json_t v;
    uint32_t i, end, acc = 0;
    int rc = fleet_json_get(base, path, &v);
    if (rc != FLEET_OK)
        return rc;
    i = 0;
    end = v.len;
    if (fleet_json_type(&v) == FLEET_JSON_STRING) {
        i = 1;
        end = v.len - 1;
    } else if (fleet_json_type(&v) != FLEET_JSON_NUMBER) {
        return FLEET_E_PROTOCOL;
    }
    if (i == end)
        return FLEET_E_PROTOCOL;
    for (; i < end; i++) {
        uint32_t d;
        if (!is_digit(v.s[i]))
            return FLEET_E_PROTOCOL; /* negative, fraction, exponent */
        d = (uint32_t)(v.s[i] - '0');
        if (acc > (0xFFFFFFFFu - d) / 10u)
            return FLEET_E_PROTOCOL;
        acc = acc * 10u + d;
    }
    *out = acc;
    return FLEET_OK;
}

int fleet_json_bool(const fleet_json_t *base, const char *path, int *out)
{
    fleet_json_t v;
    int rc = fleet_json_get(base, path, &v);
    if (rc != FLEET_OK)
        return rc;
    switch (fleet_json_type(&v)) {
    case FLEET_JSON_TRUE: *out = 1; return FLEET_OK;
    case FLEET_JSON_FALSE: *out = 0; return FLEET_OK;
    default: return FLEET_E_PROTOCOL;
    }
}

/* ---- writer ---- */

void fleet_jw_init(fleet_jw_t *w, char *buf, uint32_t cap)
{
    w->buf = buf;
    w->cap = cap;
    w->len = 0;
    w->comma = 0;
    w->overflow = cap == 0;
}

static void put(fleet_jw_t *w, const char *s, uint32_t n)
{
    /* Keep one byte for the NUL fleet_jw_finish writes. */
    if (w->overflow || n >= w->cap - w->len) {
        w->overflow = 1;
        return;
    }
    memcpy(w->buf + w->len, s, n);
    w->len += n;
}

static void separate(fleet_jw_t *w)
{
    if (w->comma)
        put(w, ",", 1);
    w->comma = 1;
}

void fleet_jw_open(fleet_jw_t *w, char bracket)
{
    separate(w);
    put(w, &bracket, 1);
    w->comma = 0;
}

void fleet_jw_close(fleet_jw_t *w, char bracket)
{
    put(w, &bracket, 1);
    w->comma = 1;
}

static void put_quoted(fleet_jw_t *w, const char *s, uint32_t n)
{
    static const char hex[] = "0123456789abcdef";
    uint32_t i, run = 0;
    put(w, "\"", 1);
    for (i = 0; i < n; i++) {
        unsigned char c = (unsigned char)s[i];
        char esc[6] = {'\\', 'u', '0', '0', 0, 0};
        uint32_t el = 2;
        if (c >= 0x20 && c != '"' && c != '\\')
            continue;
        put(w, s + run, i - run);
        run = i + 1;
        if (c == '"' || c == '\\') {
            esc[1] = (char)c;
        } else if (c == '\n') {
            esc[1] = 'n';
        } else if (c == '\r') {
            esc[1] = 'r';
        } else if (c == '\t') {
            esc[1] = 't';
        } else {
            esc[4] = hex[c >> 4];
            esc[5] = hex[c & 15];
            el = 6;
        }
        put(w, esc, el);
    }
    put(w, s + run, n - run);
    put(w, "\"", 1);
}

void fleet_jw_key(fleet_jw_t *w, const char *key)
{
    separate(w);
    put_quoted(w, key, (uint32_t)strlen(key));
    put(w, ":", 1);
    w->comma = 0;
}

void fleet_jw_strn(fleet_jw_t *w, const char *s, uint32_t n)
{
    separate(w);
    put_quoted(w, s, n);
}

void fleet_jw_str(fleet_jw_t *w, const char *s)
{
    fleet_jw_strn(w, s, (uint32_t)strlen(s));
}

uint32_t fleet_fmt_u32(char *out, uint32_t v)
{
    char tmp[10];
    uint32_t n = 0, i;
    do {
        tmp[n++] = (char)('0' + v % 10u);
        v /= 10u;
    } while (v);
    for (i = 0; i < n; i++)
        out[i] = tmp[n - 1 - i];
    out[n] = '\0';
    return n;
}

void fleet_jw_u32(fleet_jw_t *w, uint32_t v)
{
    char tmp[11];
    separate(w);
    put(w, tmp, fleet_fmt_u32(tmp, v));
}

void fleet_jw_bool(fleet_jw_t *w, int v)
{
    separate(w);
    if (v)
        put(w, "true", 4);
    else
        put(w, "false", 5);
}

void fleet_jw_b64(fleet_jw_t *w, const uint8_t *data, uint32_t n)
{
    int32_t got;
    separate(w);
    put(w, "\"", 1);
    if (w->overflow)
        return;
    got = fleet_b64_encode(w->buf + w->len, w->cap - w->len - 1u, data, n);
    if (got < 0) {
        w->overflow = 1;
        return;
    }
    w->len += (uint32_t)got;
    put(w, "\"", 1);
}

int32_t fleet_jw_finish(fleet_jw_t *w)
{
    if (w->overflow || w->len >= w->cap)
        return FLEET_E_SPACE;
    w->buf[w->len] = '\0';
    return (int32_t)w->len;
}
