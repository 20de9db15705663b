/* Sector-by-sector swap of the primary and secondary slots through the
 * scratch sector, resumable after a power cut. Internal to the boot side. */
#ifndef FLEET_SWAP_H
#define FLEET_SWAP_H

#include "state.h"

/* Runs (or resumes) the swap st describes, recording each step. */
int fleet_swap_run(const fleet_port_t *port, const fleet_config_t *cfg, fleet_state_t *st, uint8_t *buf,
                   uint32_t buf_len);

#endif
