/* fleetd RTOS shim: the boot side (the loader). Decides which image runs,
 * finishes or starts a swap, reverts an unconfirmed trial. */
#ifndef FLEET_BOOT_H
#define FLEET_BOOT_H

#include "fleet/image.h"
#include "fleet/layout.h"
#include "fleet/port.h"

typedef struct fleet_boot_result {
    uint32_t image_off;          /* where the image to run starts (its header) */
    fleet_image_header_t header;
    uint8_t trial;               /* 1: this boot runs an unconfirmed trial image */
} fleet_boot_result_t;

/* Call at every reset. buf is scratch (at least one flash sector is fastest;
 * any size >= 64 and a multiple of write_align works). Returns FLEET_OK with
 * the image to run, or FLEET_E_NO_IMAGE when no valid image exists. */
int fleet_boot(const fleet_port_t *port, const fleet_config_t *cfg, uint8_t *buf, uint32_t buf_len,
               fleet_boot_result_t *out);

#endif
