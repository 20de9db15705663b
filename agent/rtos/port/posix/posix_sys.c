/* POSIX port: time and reboot (see posix_sys.h). */
#define _POSIX_C_SOURCE 200809L
#include "posix_sys.h"

#include <stdio.h>
#include <string.h>
#include <errno.h>
#include <time.h>
#include <unistd.h>

uint32_t fleet_posix_now_ms(void *ctx)
{
    struct timespec ts;
    (void)ctx;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (uint32_t)((uint64_t)ts.tv_sec * 1000u + (uint64_t)ts.tv_nsec / 1000000u);
}

void fleet_posix_reboot(void *ctx)
{
    fleet_posix_sys_t *sys = (fleet_posix_sys_t *)ctx;
    fflush(NULL);
    execv("/proc/self/exe", sys->argv);
    fprintf(stderr, "fleet-sim: re-exec failed: %s\n", strerror(errno));
}
