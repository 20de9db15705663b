/* fleetd RTOS shim: flash layout and the device's trust configuration,
 * shared by the boot side and the application side. */
#ifndef FLEET_LAYOUT_H
#define FLEET_LAYOUT_H

#include <stdint.h>

typedef struct fleet_layout {
    uint32_t primary_off;    /* slot the device runs from */
    uint32_t secondary_off;  /* slot a new image is downloaded into */
    uint32_t slot_size;      /* both slots, a multiple of the sector size */
    uint32_t scratch_off;    /* one sector used while swapping */
    uint32_t state_off;      /* two sectors of state records */
} fleet_layout_t;

typedef struct fleet_config {
    fleet_layout_t layout;
    const char *device_type;          /* the image header's type must cover it */
    const uint8_t (*trusted_keys)[32];/* Ed25519 public keys an image may be signed with */
    uint32_t trusted_key_count;
} fleet_config_t;

#endif
