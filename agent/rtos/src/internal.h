/* Helpers shared by the core's source files; not part of the public API. */
#ifndef FLEET_INTERNAL_H
#define FLEET_INTERNAL_H

#include <stdint.h>
#include "fleet/port.h"

uint16_t fleet_rd16(const uint8_t *p);
uint32_t fleet_rd32(const uint8_t *p);
void fleet_wr16(uint8_t *p, uint16_t v);
void fleet_wr32(uint8_t *p, uint32_t v);
uint32_t fleet_crc32(const uint8_t *data, uint32_t len);

/* The flash calls, with any port failure mapped to FLEET_E_IO. */
int fleet_flash_read(const fleet_port_t *port, uint32_t off, void *buf, uint32_t len);
int fleet_flash_write(const fleet_port_t *port, uint32_t off, const void *buf, uint32_t len);
int fleet_flash_erase(const fleet_port_t *port, uint32_t off, uint32_t len);

#endif
