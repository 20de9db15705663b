/* The simulated NOR flash (see sim_flash.h). */
#define _POSIX_C_SOURCE 200809L

#include "sim_flash.h"

#include <fcntl.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

static int geometry_ok(uint32_t size, uint32_t sector, uint32_t align) {
    return sector && (sector & (sector - 1)) == 0 && align && (align & (align - 1)) == 0 && align <= sector &&
           size && size % sector == 0;
}

int sim_flash_init(sim_flash_t *f, uint32_t size, uint32_t sector_size, uint32_t write_align, uint8_t erased) {
    memset(f, 0, sizeof *f);
    if (!geometry_ok(size, sector_size, write_align) || !(f->mem = malloc(size))) return -1;
    memset(f->mem, erased, size);
    f->size = size;
    f->sector_size = sector_size;
    f->write_align = write_align;
    f->erased_value = erased;
    return 0;
}

int sim_flash_open_file(sim_flash_t *f, const char *path, uint32_t size, uint32_t sector_size,
                        uint32_t write_align, uint8_t erased) {
    struct stat sb;
    void *m;
    int fd, fresh;
    memset(f, 0, sizeof *f);
    if (!geometry_ok(size, sector_size, write_align)) return -1;
    if ((fd = open(path, O_RDWR | O_CREAT, 0644)) < 0) return -1;
    if (fstat(fd, &sb) != 0 || (sb.st_size != 0 && sb.st_size != (off_t)size)) {
        close(fd);
        return -1;
    }
    fresh = sb.st_size == 0;
    if (fresh && ftruncate(fd, size) != 0) {
        close(fd);
        return -1;
    }
    m = mmap(NULL, size, PROT_READ | PROT_WRITE, MAP_SHARED, fd, 0);
    close(fd);
    if (m == MAP_FAILED) return -1;
    f->mem = m;
    f->mapped = 1;
    if (fresh) memset(f->mem, erased, size);
    f->size = size;
    f->sector_size = sector_size;
    f->write_align = write_align;
    f->erased_value = erased;
    return 0;
}

void sim_flash_close(sim_flash_t *f) {
    if (f->mapped) {
        msync(f->mem, f->size, MS_SYNC);
        munmap(f->mem, f->size);
    } else {
        free(f->mem);
    }
    f->mem = NULL;
}

void sim_flash_bind(sim_flash_t *f, fleet_flash_t *out) {
    out->ctx = f;
    out->sector_size = f->sector_size;
    out->write_align = f->write_align;
    out->erased_value = f->erased_value;
    out->read = sim_flash_read;
    out->write = sim_flash_write;
    out->erase = sim_flash_erase;
}

void sim_flash_cut_after(sim_flash_t *f, uint64_t k, uint32_t tear_permille) {
    f->cut_at = k ? f->ops + k : 0;
    f->tear_permille = tear_permille > 999 ? 999 : tear_permille;
}

void sim_flash_power_on(sim_flash_t *f) {
    f->cut_at = 0;
    f->dead = 0;
}

static void mark_torn(sim_flash_t *f, uint32_t off, uint32_t len) {
    uint32_t k;
    if (!f->ecc || !len) return;
    k = f->ntorn++ % SIM_FLASH_MAX_TORN;
    f->torn_off[k] = off;
    f->torn_len[k] = len;
}

/* A successful erase makes the torn units in it consistent again. */
static void clear_torn(sim_flash_t *f, uint32_t off, uint32_t len) {
    for (uint32_t k = 0; k < SIM_FLASH_MAX_TORN; k++)
        if (f->torn_len[k] && f->torn_off[k] >= off && f->torn_off[k] - off < len) f->torn_len[k] = 0;
}

static int reads_torn(const sim_flash_t *f, uint32_t off, uint32_t len) {
    for (uint32_t k = 0; k < SIM_FLASH_MAX_TORN; k++)
        if (f->torn_len[k] && f->torn_off[k] < off + len && off < f->torn_off[k] + f->torn_len[k]) return 1;
    return 0;
}

void sim_flash_raw_write(sim_flash_t *f, uint32_t off, const void *data, uint32_t len) {
    if (off <= f->size && len <= f->size - off) memcpy(f->mem + off, data, len);
}

void sim_flash_raw_erase(sim_flash_t *f, uint32_t off, uint32_t len) {
    if (off > f->size || len > f->size - off) return;
    memset(f->mem + off, f->erased_value, len);
    clear_torn(f, off, len);
}

static int in_range(const sim_flash_t *f, uint32_t off, uint32_t len) {
    return off <= f->size && len <= f->size - off;
}

/* Counts an operation; returns 1 when this is the one the power dies in. */
static int op_is_cut(sim_flash_t *f) {
    f->ops++;
    if (f->cut_at && f->ops == f->cut_at) {
        f->dead = 1;
        return 1;
    }
    return 0;
}

int sim_flash_read(void *ctx, uint32_t off, void *buf, uint32_t len) {
    sim_flash_t *f = ctx;
    if (f->dead || !in_range(f, off, len) || reads_torn(f, off, len)) return -1;
    memcpy(buf, f->mem + off, len);
    return 0;
}

int sim_flash_write(void *ctx, uint32_t off, const void *buf, uint32_t len) {
    sim_flash_t *f = ctx;
    const uint8_t *src = buf;
    uint32_t done, i;
    if (f->dead) return -1;
    if (!in_range(f, off, len) || off % f->write_align || len % f->write_align) {
        f->violations++;
        return -1;
    }
    for (i = 0; i < len; i++) {
        if (f->mem[off + i] != f->erased_value) {
            f->violations++;
            return -1;
        }
    }
    if (op_is_cut(f)) {
        /* Whole units up to the tear point are programmed; the unit being
         * programmed when the power went gets only some of its bits. */
        done = (uint32_t)((uint64_t)len * f->tear_permille / 1000u) / f->write_align * f->write_align;
        memcpy(f->mem + off, src, done);
        for (i = done; i < done + f->write_align && i < len; i++)
            f->mem[off + i] = f->erased_value == 0xFF ? (uint8_t)(src[i] | 0xA5u) : f->erased_value;
        if (done < len) mark_torn(f, off + done, f->write_align);
        return -1;
    }
    memcpy(f->mem + off, src, len);
    return 0;
}

int sim_flash_erase(void *ctx, uint32_t off, uint32_t len) {
    sim_flash_t *f = ctx;
    if (f->dead) return -1;
    if (!in_range(f, off, len) || off % f->sector_size || len % f->sector_size || len == 0) {
        f->violations++;
        return -1;
    }
    if (op_is_cut(f)) {
        /* A torn erase: the first part is erased, the rest keeps its old bytes. */
        uint32_t done = (uint32_t)((uint64_t)len * f->tear_permille / 1000u);
        memset(f->mem + off, f->erased_value, done);
        clear_torn(f, off, len);
        mark_torn(f, off + done / f->write_align * f->write_align, len - done / f->write_align * f->write_align);
        return -1;
    }
    clear_torn(f, off, len);
    f->sector_erases += len / f->sector_size;
    memset(f->mem + off, f->erased_value, len);
    return 0;
}
