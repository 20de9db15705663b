/* Test harness for the protocol client (src/client.c) on a simulated device:
 * a scripted transport answers CheckIn with a given body and ReportStatus
 * with a given status, and logs every request. Used through ctypes. */
#ifndef FLEET_CLIENT_HARNESS_H
#define FLEET_CLIENT_HARNESS_H

#include "harness.h"

/* One fleet_client_poll of an enrolled, authenticated device. checkin is the
 * CheckIn answer (200); ReportStatus answers report_status; blob downloads
 * answer 404. log gets one "METHOD PATH BODY" line per request (cut to fit).
 * *rebooted is set when the client called port->reboot. Returns the poll's
 * result. */
int shim_client_poll(shim_dev_t *d, const char *checkin, int report_status, char *log, uint32_t log_len,
                     int *rebooted);

#endif
