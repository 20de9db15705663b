/* Device-type patterns (docs/protocol.md, "Device types and patterns"): an
 * image's header may name its device type exactly or with '*', which matches
 * any run of characters, possibly empty; every other character matches only
 * itself. The server and the Linux agent use the same rule and algorithm
 * (fleetd.core.names.device_type_matches); tests/vectors/device_types.txt
 * holds all three to it. */
#include "fleet/image.h"

int fleet_device_type_matches(const char *pattern, const char *device_type) {
    /* Greedy, returning to the last '*' on a mismatch: at most
     * strlen(pattern) * strlen(device_type) steps, no recursion. */
    const char *star = 0, *mark = 0;
    while (*device_type) {
        if (*pattern == '*') {
            star = pattern++;
            mark = device_type;
        } else if (*pattern && *pattern == *device_type) {
            pattern++;
            device_type++;
        } else if (star) { /* let the last '*' take one more character */
            pattern = star + 1;
            device_type = ++mark;
        } else {
            return 0;
        }
    }
    while (*pattern == '*') pattern++;
    return *pattern == 0;
}
