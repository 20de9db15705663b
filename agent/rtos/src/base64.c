/* base64 (RFC 4648): standard alphabet out; standard or URL-safe in. */
#include "fleet/base64.h"
#include "fleet/port.h"

static const char b64_alphabet[] =
    "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";

int32_t fleet_b64_encode(char *out, uint32_t cap, const uint8_t *data, uint32_t n)
{
    uint32_t i, o = 0;
    if (n > 0x3FFFFFFFu || FLEET_B64_LEN(n) > cap)
        return FLEET_E_SPACE;
    for (i = 0; i < n; i += 3) {
        uint32_t rest = n - i;
        uint32_t v = (uint32_t)data[i] << 16;
        if (rest > 1)
            v |= (uint32_t)data[i + 1] << 8;
        if (rest > 2)
            v |= data[i + 2];
        out[o++] = b64_alphabet[(v >> 18) & 63u];
        out[o++] = b64_alphabet[(v >> 12) & 63u];
        out[o++] = rest > 1 ? b64_alphabet[(v >> 6) & 63u] : '=';
        out[o++] = rest > 2 ? b64_alphabet[v & 63u] : '=';
    }
    return (int32_t)o;
}

static int b64_value(char c)
{
    if (c >= 'A' && c <= 'Z')
        return c - 'A';
    if (c >= 'a' && c <= 'z')
        return c - 'a' + 26;
    if (c >= '0' && c <= '9')
        return c - '0' + 52;
    if (c == '+' || c == '-')
        return 62;
    if (c == '/' || c == '_')
        return 63;
    return -1;
}

int32_t fleet_b64_decode(uint8_t *out, uint32_t cap, const char *in, uint32_t n)
{
    uint32_t i, o = 0, acc = 0, bits = 0;
    /* Padding only at the end, at most two, and only to complete a quad. */
    uint32_t pad = 0;
    while (n > 0 && in[n - 1] == '=' && pad < 2) {
        n--;
        pad++;
    }
    if (n % 4u == 1u || (pad && (n + pad) % 4u != 0u))
        return FLEET_E_INVALID;
    for (i = 0; i < n; i++) {
        int v = b64_value(in[i]);
        if (v < 0)
            return FLEET_E_INVALID;
        acc = (acc << 6) | (uint32_t)v;
        bits += 6;
        if (bits >= 8) {
            bits -= 8;
            if (o >= cap)
                return FLEET_E_SPACE;
            out[o++] = (uint8_t)(acc >> bits);
            acc &= (1u << bits) - 1u;
        }
    }
    /* Leftover bits must be zero (canonical encoding). */
    if (acc != 0)
        return FLEET_E_INVALID;
    return (int32_t)o;
}
