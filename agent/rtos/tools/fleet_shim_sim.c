/* fleet-shim-sim: a simulated microcontroller running the fleetd RTOS shim
 * on the host. Its flash is a file; its boot loader, update code and protocol
 * client are the shim's own; only the port (flash file, libsodium, libcurl,
 * re-exec as reset) is the host's. See docs/rtos-protocol.md.
 *
 * Every event is one line on stdout, "fleet-sim: <event> key=value ...", so
 * tests and people can follow it. Exit codes: 0 done (idle / max cycles),
 * 2 bad usage or setup, 3 no bootable image, 70 the firmware crashed before
 * confirming (as asked by --crash-before-confirm or its payload). */
#define _POSIX_C_SOURCE 200809L
#include <errno.h>
#include <fcntl.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#include <curl/curl.h>

#include "fleet/boot.h"
#include "fleet/client.h"
#include "fleet/update.h"
#include "crypto_sodium.h"
#include "posix_sys.h"
#include "sim_flash.h"
#include "transport_curl.h"

/* The simulated part: 4 KiB sectors, 8-byte program unit, two 512 KiB slots. */
#define SECTOR 4096u
#define WRITE_ALIGN 8u
#define SLOT_SIZE (512u * 1024u)
#define FLASH_SIZE (2u * SLOT_SIZE + 3u * SECTOR)
#define CRASH_MARK "FWSIM:crash-before-confirm"
#define EXIT_USAGE 2
#define EXIT_NO_IMAGE 3
#define EXIT_CRASH 70

typedef struct options {
    const char *flash, *provision, *server, *ca, *token, *device_type, *hardware_id, *component;
    const char *trusted_key;
    long interval_s, max_cycles, max_recv_bps, progress_step;
    int exit_when_idle, crash_before_confirm;
} options_t;

/* What the sim keeps beside its flash: <flash>.identity. */
typedef struct sim_identity {
    uint8_t seed[32];
    char hardware_id[129];
    fleet_identity_t fleet;
} sim_identity_t;

typedef struct sim {
    options_t opt;
    char id_path[1024];
    sim_identity_t id;
} sim_t;

static void say(const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    fputs("fleet-sim: ", stdout);
    vprintf(fmt, ap);
    fputc('\n', stdout);
    va_end(ap);
    fflush(stdout);
}

static void die(int code, const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    fputs("fleet-sim: error: ", stderr);
    vfprintf(stderr, fmt, ap);
    fputc('\n', stderr);
    va_end(ap);
    exit(code);
}

static void usage(void)
{
    fputs("usage: fleet-shim-sim --flash FILE [--provision IMAGE] --server URL --ca CA.pem\n"
          "         [--token JOIN_TOKEN] [--device-type T] [--hardware-id H] [--component NAME]\n"
          "         [--trusted-key HEX] [--interval SEC] [--max-cycles N] [--exit-when-idle]\n"
          "         [--crash-before-confirm] [--max-recv-speed BYTES_PER_S] [--progress-step BYTES]\n",
          stderr);
    exit(EXIT_USAGE);
}

static long parse_long(const char *name, const char *v)
{
    char *end;
    long n;
    errno = 0;
    n = strtol(v, &end, 10);
    if (errno || *end || n < 0)
        die(EXIT_USAGE, "%s wants a non-negative number, got '%s'", name, v);
    return n;
}

static void parse_args(options_t *o, int argc, char **argv)
{
    int i;
    memset(o, 0, sizeof *o);
    o->device_type = "fw-sim";
    o->component = "firmware";
    o->interval_s = -1;
    for (i = 1; i < argc; i++) {
        const char *a = argv[i], *v = i + 1 < argc ? argv[i + 1] : NULL;
        const char **str = NULL;
        long *num = NULL;
        if (strcmp(a, "--exit-when-idle") == 0) {
            o->exit_when_idle = 1;
            continue;
        }
        if (strcmp(a, "--crash-before-confirm") == 0) {
            o->crash_before_confirm = 1;
            continue;
        }
        if (strcmp(a, "--help") == 0 || strcmp(a, "-h") == 0)
            usage();
        if (strcmp(a, "--flash") == 0) str = &o->flash;
        else if (strcmp(a, "--provision") == 0) str = &o->provision;
        else if (strcmp(a, "--server") == 0) str = &o->server;
        else if (strcmp(a, "--ca") == 0) str = &o->ca;
        else if (strcmp(a, "--token") == 0) str = &o->token;
        else if (strcmp(a, "--device-type") == 0) str = &o->device_type;
        else if (strcmp(a, "--hardware-id") == 0) str = &o->hardware_id;
        else if (strcmp(a, "--component") == 0) str = &o->component;
        else if (strcmp(a, "--trusted-key") == 0) str = &o->trusted_key;
        else if (strcmp(a, "--interval") == 0) num = &o->interval_s;
        else if (strcmp(a, "--max-cycles") == 0) num = &o->max_cycles;
        else if (strcmp(a, "--max-recv-speed") == 0) num = &o->max_recv_bps;
        else if (strcmp(a, "--progress-step") == 0) num = &o->progress_step;
        else
            die(EXIT_USAGE, "unknown option '%s' (see --help)", a);
        if (!v)
            die(EXIT_USAGE, "%s needs a value", a);
        if (str)
            *str = v;
        else
            *num = parse_long(a, v);
        i++;
    }
    if (!o->flash)
        die(EXIT_USAGE, "--flash FILE is required (the simulated flash; created when missing)");
    if (o->server && !o->ca)
        die(EXIT_USAGE, "--ca CA.pem is required with --server (the fleet CA is the only trust anchor)");
}

static int hex_decode(uint8_t *out, size_t n, const char *hex)
{
    size_t i;
    if (strlen(hex) != 2 * n)
        return -1;
    for (i = 0; i < n; i++) {
        unsigned v;
        if (sscanf(hex + 2 * i, "%2x", &v) != 1)
            return -1;
        out[i] = (uint8_t)v;
    }
    return 0;
}

static void hex_encode(char *out, const uint8_t *data, size_t n)
{
    size_t i;
    for (i = 0; i < n; i++)
        sprintf(out + 2 * i, "%02x", data[i]);
}

/* ---- identity file: "key value" lines, written temp -> fsync -> rename ---- */

static int identity_save(const sim_t *s)
{
    char tmp[1100], seed[65], key[65];
    FILE *f;
    int fd, ok;
    snprintf(tmp, sizeof tmp, "%s.tmp", s->id_path);
    fd = open(tmp, O_WRONLY | O_CREAT | O_TRUNC, 0600);
    if (fd < 0 || !(f = fdopen(fd, "w")))
        return -1;
    hex_encode(seed, s->id.seed, 32);
    hex_encode(key, s->id.fleet.signing_key, 32);
    fprintf(f, "seed %s\nhardware_id %s\n", seed, s->id.hardware_id);
    if (s->id.fleet.device_id[0])
        fprintf(f, "device_id %s\n", s->id.fleet.device_id);
    if (s->id.fleet.signing_key_pinned)
        fprintf(f, "signing_key %s\n", key);
    ok = fflush(f) == 0 && fsync(fileno(f)) == 0;
    ok = (fclose(f) == 0) && ok;
    if (!ok || rename(tmp, s->id_path) != 0)
        return -1;
    return 0;
}

/* Copies v into out (cap bytes) or stops: a value that does not fit is corrupt. */
static void copy_field(char *out, size_t cap, const char *v, const char *what)
{
    size_t n = strlen(v);
    if (n >= cap)
        die(EXIT_USAGE, "%s: %s is longer than %u characters", what, what, (unsigned)(cap - 1));
    memcpy(out, v, n + 1);
}

static void identity_load(sim_t *s)
{
    char line[512], k[32], v[256];
    FILE *f = fopen(s->id_path, "r");
    memset(&s->id, 0, sizeof s->id);
    if (!f) {
        randombytes_buf(s->id.seed, sizeof s->id.seed);
        return;
    }
    while (fgets(line, sizeof line, f)) {
        if (sscanf(line, "%31s %255s", k, v) != 2)
            continue;
        if (strcmp(k, "seed") == 0 && hex_decode(s->id.seed, 32, v) != 0)
            die(EXIT_USAGE, "%s: bad seed", s->id_path);
        if (strcmp(k, "hardware_id") == 0)
            copy_field(s->id.hardware_id, sizeof s->id.hardware_id, v, "hardware_id");
        if (strcmp(k, "device_id") == 0)
            copy_field(s->id.fleet.device_id, sizeof s->id.fleet.device_id, v, "device_id");
        if (strcmp(k, "signing_key") == 0) {
            if (hex_decode(s->id.fleet.signing_key, 32, v) != 0)
                die(EXIT_USAGE, "%s: bad signing_key", s->id_path);
            s->id.fleet.signing_key_pinned = 1;
        }
    }
    fclose(f);
}

static int save_identity_cb(void *user, const fleet_identity_t *id)
{
    sim_t *s = (sim_t *)user;
    s->id.fleet = *id;
    if (identity_save(s) != 0) {
        say("error what=save-identity path=%s", s->id_path);
        return FLEET_E_IO;
    }
    return FLEET_OK;
}

static void on_event(void *user, int ev, const char *text, int32_t v)
{
    (void)user;
    switch (ev) {
    case FLEET_EV_ENROLLED: say("enrolled device_id=%s active=%d", text, (int)v); break;
    case FLEET_EV_AUTHENTICATED: say("authenticated lifetime=%d", (int)v); break;
    case FLEET_EV_CHECKIN: say("checkin status=%s actions=%d", text, (int)v); break;
    case FLEET_EV_ACTION: say("action id=%s size=%d", text, (int)v); break;
    case FLEET_EV_DOWNLOAD: say("download action=%s offset=%d", text, (int)v); break;
    case FLEET_EV_PROGRESS: say("progress action=%s bytes=%d", text, (int)v); break;
    case FLEET_EV_VERIFIED: say("verified action=%s size=%d", text, (int)v); break;
    case FLEET_EV_REFUSED: say("refused code=%d reason=\"%s\"", (int)v, text); break;
    case FLEET_EV_REPORT: say("report state=%s progress=%d", text, (int)v); break;
    case FLEET_EV_CONFIRMED: say("confirmed action=%s", text); break;
    case FLEET_EV_REBOOT: say("reboot action=%s", text); break;
    case FLEET_EV_CLAIM_CODE: say("claim code=%s", text); break;
    default: say("error what=\"%s\" code=%d", text, (int)v); break;
    }
}

/* ---- flash ---- */

static void provision(sim_flash_t *f, const fleet_layout_t *l, const char *path)
{
    static uint8_t img[SLOT_SIZE];
    size_t n;
    FILE *in = fopen(path, "rb");
    if (!in)
        die(EXIT_USAGE, "--provision %s: %s", path, strerror(errno));
    n = fread(img, 1, sizeof img, in);
    if (!feof(in) || ferror(in)) {
        fclose(in);
        die(EXIT_USAGE, "--provision %s: unreadable or larger than the slot (%u bytes)", path, SLOT_SIZE);
    }
    fclose(in);
    sim_flash_raw_erase(f, l->primary_off, l->slot_size);
    sim_flash_raw_write(f, l->primary_off, img, (uint32_t)n);
    say("provisioned image=%s bytes=%u", path, (unsigned)n);
}

/* The host resources, released at exit (a reset re-execs instead). */
static fleet_curl_t g_curl;
static sim_flash_t g_flash;

static void release(void)
{
    fleet_curl_close(&g_curl);
    curl_global_cleanup();
    sim_flash_close(&g_flash);
}

static void fmt_version(char *out, size_t cap, const fleet_version_t *v)
{
    snprintf(out, cap, "%u.%u.%lu", (unsigned)v->major, (unsigned)v->minor, (unsigned long)v->patch);
}

int main(int argc, char **argv)
{
    static uint8_t sector_buf[SECTOR];
    static char resp[8192], req[1024];
    static sim_t s;
    fleet_layout_t layout = {0, SLOT_SIZE, SLOT_SIZE, 2u * SLOT_SIZE, 2u * SLOT_SIZE + SECTOR};
    fleet_posix_sys_t sys;
    fleet_sodium_t sodium;
    fleet_curl_t *curl = &g_curl;
    sim_flash_t *flash = &g_flash;
    fleet_port_t port;
    fleet_config_t cfg;
    fleet_client_t c;
    fleet_boot_result_t boot;
    uint8_t trusted[1][32], payload[sizeof CRASH_MARK - 1];
    char ver[32];
    struct stat sb;
    long cycles = 0;
    int fresh, rc;

    setvbuf(stdout, NULL, _IOLBF, 0);
    parse_args(&s.opt, argc, argv);
    snprintf(s.id_path, sizeof s.id_path, "%s.identity", s.opt.flash);

    memset(&port, 0, sizeof port);
    fresh = stat(s.opt.flash, &sb) != 0;
    if (sim_flash_open_file(flash, s.opt.flash, FLASH_SIZE, SECTOR, WRITE_ALIGN, 0xFF) != 0)
        die(EXIT_USAGE, "cannot open the flash file %s (it must be %u bytes when it exists)", s.opt.flash,
            FLASH_SIZE);
    atexit(release);
    sim_flash_bind(flash, &port.flash);
    if (fresh && s.opt.provision)
        provision(flash, &layout, s.opt.provision);

    identity_load(&s);
    if (!s.id.hardware_id[0] || s.opt.hardware_id) {
        if (s.opt.hardware_id)
            copy_field(s.id.hardware_id, sizeof s.id.hardware_id, s.opt.hardware_id, "--hardware-id");
        else {
            strcpy(s.id.hardware_id, "sim-");
            hex_encode(s.id.hardware_id + 4, s.id.seed, 6);
        }
    }
    if (identity_save(&s) != 0)
        die(EXIT_USAGE, "cannot write %s: %s", s.id_path, strerror(errno));
    if (fleet_sodium_init(&sodium, s.id.seed, &port.crypto) != 0)
        die(EXIT_USAGE, "libsodium failed to start");
    sys.argv = argv;
    port.sys_ctx = &sys;
    port.now_ms = fleet_posix_now_ms;
    port.reboot = fleet_posix_reboot;
    if (s.opt.server) {
        if (fleet_curl_init(curl, s.opt.server, s.opt.ca) != FLEET_OK)
            die(EXIT_USAGE, "--server %s: not an http(s) URL, or libcurl failed", s.opt.server);
        curl->max_recv_bps = s.opt.max_recv_bps;
        port.transport.ctx = curl;
        port.transport.request = fleet_curl_request;
    }

    memset(&cfg, 0, sizeof cfg);
    cfg.layout = layout;
    cfg.device_type = s.opt.device_type;
    cfg.trusted_keys = (const uint8_t(*)[32])trusted;
    cfg.trusted_key_count = 1;

    memset(&c, 0, sizeof c);
    c.port = &port;
    c.cfg = &cfg;
    c.hardware_id = s.id.hardware_id;
    c.device_type = s.opt.device_type;
    c.component = s.opt.component;
    c.join_token = s.opt.token;
    memcpy(c.device_public_key, sodium.public_key, 32);
    c.identity = &s.id.fleet;
    c.save_identity = save_identity_cb;
    c.on_event = on_event;
    c.user = &s;
    c.resp = resp;
    c.resp_size = sizeof resp;
    c.req = req;
    c.req_size = sizeof req;
    c.flash_buf = sector_buf;
    c.flash_buf_size = sizeof sector_buf;
    c.progress_step = (uint32_t)s.opt.progress_step;

    /* Which key images must be signed with: given, or pinned at enrollment. */
    if (s.opt.trusted_key) {
        if (hex_decode(trusted[0], 32, s.opt.trusted_key) != 0)
            die(EXIT_USAGE, "--trusted-key wants 64 hex digits (an Ed25519 public key)");
    } else {
        if (!s.id.fleet.signing_key_pinned) {
            /* Factory enrollment: the first Enroll pins the fleet's signing key. */
            if (!s.opt.server)
                die(EXIT_USAGE, "no trusted key yet: give --trusted-key HEX, or --server to enroll and pin one");
            if ((rc = fleet_client_enroll(&c)) != FLEET_OK)
                die(EXIT_NO_IMAGE, "enrollment failed (%d, HTTP %d): %s", rc, c.http_status, c.resp);
        }
        memcpy(trusted[0], s.id.fleet.signing_key, 32);
    }

    rc = fleet_boot(&port, &cfg, sector_buf, sizeof sector_buf, &boot);
    if (rc != FLEET_OK) {
        say("boot no-image code=%d", rc);
        return EXIT_NO_IMAGE;
    }
    fmt_version(ver, sizeof ver, &boot.header.version);
    say("boot version=%s trial=%d counter=%lu", ver, boot.trial, (unsigned long)boot.header.security_counter);

    /* "Run" the firmware: a trial image that crashes never confirms. */
    memset(payload, 0, sizeof payload);
    if (boot.header.payload_size >= sizeof payload)
        port.flash.read(port.flash.ctx, boot.image_off + FLEET_IMAGE_HEADER_SIZE, payload, sizeof payload);
    if (boot.trial && (s.opt.crash_before_confirm || memcmp(payload, CRASH_MARK, sizeof payload) == 0)) {
        say("crash before-confirm version=%s", ver);
        return EXIT_CRASH;
    }
    if (!s.opt.server) {
        say("exit no-server");
        return 0;
    }

    for (;;) {
        long wait;
        rc = fleet_client_poll(&c);
        cycles++;
        if (rc == FLEET_POLL_REBOOT)
            die(1, "reboot (re-exec) failed");
        if (rc < 0)
            say("poll error code=%d http=%d", rc, c.http_status);
        if (s.opt.max_cycles && cycles >= s.opt.max_cycles) {
            say("exit max-cycles=%ld", cycles);
            return 0;
        }
        if (rc == FLEET_POLL_IDLE && s.opt.exit_when_idle) {
            say("idle");
            return 0;
        }
        if (rc == FLEET_POLL_BUSY)
            continue;
        wait = s.opt.interval_s >= 0 ? s.opt.interval_s : (long)(c.poll_interval_s ? c.poll_interval_s : 60);
        if (wait > 0) {
            struct timespec ts = {wait, 0};
            nanosleep(&ts, NULL);
        }
    }
}
