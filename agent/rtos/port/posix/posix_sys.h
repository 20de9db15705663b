/* POSIX port: monotonic time and "reboot" (re-executing the program). */
#ifndef FLEET_POSIX_SYS_H
#define FLEET_POSIX_SYS_H

#include <stdint.h>

typedef struct fleet_posix_sys {
    char *const *argv;   /* the program's arguments, for the re-exec */
} fleet_posix_sys_t;

/* fleet_port_t.now_ms: CLOCK_MONOTONIC in milliseconds (wraps, as on an MCU). */
uint32_t fleet_posix_now_ms(void *ctx);
/* fleet_port_t.reboot: flushes stdio and re-executes /proc/self/exe with the
 * same arguments, like a reset. Returns only when the exec failed. */
void fleet_posix_reboot(void *ctx);

#endif
