/* Little-endian field access and the flash calls with errors mapped. */
#include "internal.h"

/* The casts keep the shifts unsigned: a uint8_t promotes to int, and on a
 * 16-bit-int target 0x80 << 8 overflows it (undefined behaviour). */
uint16_t fleet_rd16(const uint8_t *p) { return (uint16_t)((unsigned)p[0] | ((unsigned)p[1] << 8)); }

uint32_t fleet_rd32(const uint8_t *p) {
    return (uint32_t)p[0] | ((uint32_t)p[1] << 8) | ((uint32_t)p[2] << 16) | ((uint32_t)p[3] << 24);
}

void fleet_wr16(uint8_t *p, uint16_t v) {
    p[0] = (uint8_t)v;
    p[1] = (uint8_t)(v >> 8);
}

void fleet_wr32(uint8_t *p, uint32_t v) {
    fleet_wr16(p, (uint16_t)v);
    fleet_wr16(p + 2, (uint16_t)(v >> 16));
}

int fleet_flash_read(const fleet_port_t *port, uint32_t off, void *buf, uint32_t len) {
    return port->flash.read(port->flash.ctx, off, buf, len) ? FLEET_E_IO : FLEET_OK;
}

int fleet_flash_write(const fleet_port_t *port, uint32_t off, const void *buf, uint32_t len) {
    return port->flash.write(port->flash.ctx, off, buf, len) ? FLEET_E_IO : FLEET_OK;
}

int fleet_flash_erase(const fleet_port_t *port, uint32_t off, uint32_t len) {
    return port->flash.erase(port->flash.ctx, off, len) ? FLEET_E_IO : FLEET_OK;
}
