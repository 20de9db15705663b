/* fleetd RTOS shim: a bounded JSON reader and writer for the protocol client.
 *
 * Reader: fleet_json_parse checks a whole document held in the caller's
 * buffer (syntax, nesting at most FLEET_JSON_MAX_DEPTH) and gives its root;
 * fleet_json_get then finds values by path ("actions[0].artifact.size")
 * relative to any value. Values are spans into the buffer; nothing is copied
 * until fleet_json_str unescapes a string into a bounded output.
 *
 * Writer: builds a request into a fixed buffer with proper escaping; any
 * overflow is remembered and reported by fleet_jw_finish.
 *
 * No heap, no globals, only string.h. */
#ifndef FLEET_JSON_H
#define FLEET_JSON_H

#include <stddef.h>
#include <stdint.h>

#define FLEET_JSON_MAX_DEPTH 32u
/* fleet_json_get and the typed getters answer this (positive) when the path
 * is not there or its value is null: protobuf JSON treats both as unset. */
#define FLEET_JSON_ABSENT 1

enum {
    FLEET_JSON_INVALID = 0,
    FLEET_JSON_OBJECT,
    FLEET_JSON_ARRAY,
    FLEET_JSON_STRING,
    FLEET_JSON_NUMBER,
    FLEET_JSON_TRUE,
    FLEET_JSON_FALSE,
    FLEET_JSON_NULL
};

/* One value: its text is s[0..len), e.g. the quotes of a string included. */
typedef struct fleet_json {
    const char *s;
    uint32_t len;
} fleet_json_t;

/* Checks the document and sets *root. FLEET_OK, or FLEET_E_PROTOCOL for
 * malformed JSON (trailing garbage, bad escapes, control characters in
 * strings, nesting deeper than FLEET_JSON_MAX_DEPTH, empty input). */
int fleet_json_parse(const char *doc, uint32_t len, fleet_json_t *root);

int fleet_json_type(const fleet_json_t *v);

/* Path: keys separated by '.', array elements as [n]: "a.b[2].c", "[0]";
 * "" is base itself. Keys in the path may not contain '.' or '[' and are at
 * most 47 bytes (longer keys in the document never match).
 * FLEET_OK, FLEET_JSON_ABSENT, or FLEET_E_INVALID for a malformed path. */
int fleet_json_get(const fleet_json_t *base, const char *path, fleet_json_t *out);

/* Number of elements of an array (or members of an object); -1 otherwise. */
int32_t fleet_json_count(const fleet_json_t *v);

/* Typed getters of base/path. FLEET_OK, FLEET_JSON_ABSENT, FLEET_E_PROTOCOL
 * (wrong type, or a number out of range) or FLEET_E_SPACE (string too long
 * for out; cap counts the terminating NUL). Strings are unescaped to UTF-8;
 * an escaped NUL (\u0000) or a lone surrogate is FLEET_E_PROTOCOL. A u32 may
 * be a JSON integer or a string of digits (protobuf JSON's 64-bit form). */
int fleet_json_str(const fleet_json_t *base, const char *path, char *out, uint32_t cap);
int fleet_json_u32(const fleet_json_t *base, const char *path, uint32_t *out);
int fleet_json_bool(const fleet_json_t *base, const char *path, int *out);

/* Writer. */
typedef struct fleet_jw {
    char *buf;
    uint32_t cap;
    uint32_t len;
    uint8_t comma;    /* a value was written at this level: the next needs ',' */
    uint8_t overflow;
} fleet_jw_t;

void fleet_jw_init(fleet_jw_t *w, char *buf, uint32_t cap);
void fleet_jw_open(fleet_jw_t *w, char bracket);   /* '{' or '[' */
void fleet_jw_close(fleet_jw_t *w, char bracket);  /* '}' or ']' */
void fleet_jw_key(fleet_jw_t *w, const char *key);
void fleet_jw_str(fleet_jw_t *w, const char *s);
void fleet_jw_strn(fleet_jw_t *w, const char *s, uint32_t n);
void fleet_jw_u32(fleet_jw_t *w, uint32_t v);
void fleet_jw_bool(fleet_jw_t *w, int v);
/* A string holding data in standard base64 (padded). */
void fleet_jw_b64(fleet_jw_t *w, const uint8_t *data, uint32_t n);
/* NUL-terminates; the length written, or FLEET_E_SPACE when it did not fit. */
int32_t fleet_jw_finish(fleet_jw_t *w);

/* v in decimal into out (at least 11 bytes), NUL-terminated; returns the length. */
uint32_t fleet_fmt_u32(char *out, uint32_t v);

#endif
