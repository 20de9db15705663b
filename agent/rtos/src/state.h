/* Persistent state: redundant, sequence-numbered, CRC-checked records in the
 * two state sectors (docs/rtos.md, "State records"). Internal to the core. */
#ifndef FLEET_STATE_H
#define FLEET_STATE_H

#include "fleet/layout.h"
#include "fleet/port.h"
#include "fleet/update.h"

#define FLEET_STATE_RECORD_SIZE 128u

enum { FLEET_SWAP_NONE = 0, FLEET_SWAP_INSTALL = 1, FLEET_SWAP_REVERT = 2 };

typedef struct fleet_state {
    fleet_status_t s;
    uint32_t seq;          /* of the newest valid record; 0: none yet */
    uint8_t swap_kind;     /* FLEET_SWAP_*: a swap is in progress */
    uint8_t swap_step;     /* 0..2 within swap_sector (docs/rtos.md, "Swap") */
    uint32_t swap_sector;  /* next sector to swap */
    uint32_t swap_count;   /* sectors the swap covers; kept after an install for the revert */
    uint32_t next_off;     /* where the next record goes; ~0: switch to the other sector */
    uint8_t active;        /* state sector (0/1) holding the newest record */
} fleet_state_t;

/* Finds the newest valid record (defaults when there is none). */
int fleet_state_load(const fleet_port_t *port, const fleet_config_t *cfg, fleet_state_t *st);
/* Appends st as a new record with the next sequence number. */
int fleet_state_save(const fleet_port_t *port, const fleet_config_t *cfg, fleet_state_t *st);

#endif
