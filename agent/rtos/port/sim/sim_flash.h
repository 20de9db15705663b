/* A simulated NOR flash for tests and the host simulator.
 *
 * Rules as on real parts: erase sets a whole sector to the erased value; a
 * write must be aligned to write_align (offset and length) and may only
 * target erased bytes; anything else is refused and counted as a violation.
 *
 * Power cuts: every write and every erase is one operation (reads are not
 * counted). Arming a cut at operation k makes operation k do part of its job
 * (a torn write or erase) and fail, and every later operation, reads
 * included, fail until sim_flash_power_on().
 *
 * ECC mode (ecc = 1): like parts whose flash has ECC (STM32H7/L4/G4/U5 and
 * others), a read touching a unit left inconsistent by a cut (the unit a torn
 * write was programming, the not-yet-erased part of a torn erase) fails
 * until that sector is erased again. */
#ifndef FLEET_SIM_FLASH_H
#define FLEET_SIM_FLASH_H

#include <stdint.h>

#include "fleet/port.h"

#define SIM_FLASH_MAX_TORN 16u

typedef struct sim_flash {
    uint8_t *mem;
    uint32_t size;
    uint32_t sector_size;
    uint32_t write_align;
    uint8_t erased_value;
    int mapped;              /* mem is a shared file mapping */
    uint64_t ops;            /* writes + erases since creation */
    uint64_t cut_at;         /* 0: no cut armed; else the op number that is cut */
    uint32_t tear_permille;  /* how much of the cut operation gets done */
    int dead;                /* power is off: every call fails */
    uint32_t violations;     /* misaligned writes, writes to unerased bytes, bad erases */
    uint32_t sector_erases;  /* total erases, for wear figures */
    int ecc;                 /* reads of torn units fail (see above) */
    uint32_t ntorn;          /* torn ranges recorded (a ring of SIM_FLASH_MAX_TORN) */
    uint32_t torn_off[SIM_FLASH_MAX_TORN];
    uint32_t torn_len[SIM_FLASH_MAX_TORN];
} sim_flash_t;

/* In memory, all erased. Returns 0, or -1 on a bad geometry or no memory. */
int sim_flash_init(sim_flash_t *f, uint32_t size, uint32_t sector_size, uint32_t write_align, uint8_t erased);
/* Backed by the file at path (created erased when missing; must have this
 * size when present), mapped shared so the contents persist across process
 * restarts. */
int sim_flash_open_file(sim_flash_t *f, const char *path, uint32_t size, uint32_t sector_size,
                        uint32_t write_align, uint8_t erased);
void sim_flash_close(sim_flash_t *f);

/* Fills the port's flash member with this flash. */
void sim_flash_bind(sim_flash_t *f, fleet_flash_t *out);

/* Arms a cut at the k-th operation from now (k >= 1); tear_permille (0..999)
 * is the share of the operation done before the power goes. */
void sim_flash_cut_after(sim_flash_t *f, uint64_t k, uint32_t tear_permille);
/* Power back on: clears the cut and the dead flag. */
void sim_flash_power_on(sim_flash_t *f);

/* Factory programming, outside the rules and the operation count. */
void sim_flash_raw_write(sim_flash_t *f, uint32_t off, const void *data, uint32_t len);
void sim_flash_raw_erase(sim_flash_t *f, uint32_t off, uint32_t len);

int sim_flash_read(void *ctx, uint32_t off, void *buf, uint32_t len);
int sim_flash_write(void *ctx, uint32_t off, const void *buf, uint32_t len);
int sim_flash_erase(void *ctx, uint32_t off, uint32_t len);

#endif
