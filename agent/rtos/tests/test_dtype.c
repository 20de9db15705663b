/* The shim's device-type matching on the shared vectors (tests/vectors/device_types.txt):
 *   test_dtype FILE   checks every match/differ line with fleet_device_type_matches; prints the count.
 * valid/invalid lines are the server's push checks; the shim only matches. */
#include <stdio.h>
#include <string.h>

#include "fleet/image.h"

int main(int argc, char **argv) {
    char line[512];
    int checked = 0, failed = 0;
    FILE *f;
    if (argc != 2 || !(f = fopen(argv[1], "r"))) {
        fprintf(stderr, "usage: test_dtype tests/vectors/device_types.txt\n");
        return 2;
    }
    while (fgets(line, sizeof line, f)) {
        char *verdict = line, *pattern, *type, *end;
        int want;
        line[strcspn(line, "\n")] = 0;
        if (line[0] == '#' || line[0] == 0) continue;
        if (!(pattern = strchr(verdict, '\t'))) goto bad;
        *pattern++ = 0;
        if (strcmp(verdict, "valid") == 0 || strcmp(verdict, "invalid") == 0) continue;
        want = strcmp(verdict, "match") == 0;
        if (!want && strcmp(verdict, "differ") != 0) goto bad;
        if (!(type = strchr(pattern, '\t'))) goto bad;
        *type++ = 0;
        if ((end = strchr(type, '\t'))) *end = 0;
        if (fleet_device_type_matches(pattern, type) != want) {
            fprintf(stderr, "FAIL: %s %s %s\n", verdict, pattern, type);
            failed++;
        }
        checked++;
        continue;
    bad:
        fprintf(stderr, "malformed line: %s\n", line);
        fclose(f);
        return 2;
    }
    fclose(f);
    printf("device types: %d checked, %d failed\n", checked, failed);
    return failed || checked == 0;
}
