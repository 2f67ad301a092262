/* SPDX-License-Identifier: LGPL-2.1-or-later */
#pragma once

#include <systemd/sd-bus.h>

#define BITS_SERVICE "org.freedesktop.bits1"
#define BITS_MANAGER_PATH "/org/freedesktop/bits1"
#define BITS_MANAGER_INTERFACE "org.freedesktop.bits1.Manager"
#define BITS_JOB_INTERFACE "org.freedesktop.bits1.Job"
#define BITS_FILE_INTERFACE "org.freedesktop.bits1.File"

/* Exit codes besides EXIT_SUCCESS and EXIT_FAILURE (bus and other runtime errors). */
#define EXIT_USAGE 2
#define EXIT_INTERRUPTED 130

/* Prints "bitsctl: <message> (<error name>)" for a D-Bus error, or "bitsctl: <what>: <strerror>"
 * for a local one. Returns a negative errno. */
int log_bus_error(const sd_bus_error *error, int r, const char *what);

/* Prints the job's Error property to stderr, decoded. */
int job_print_error(sd_bus *bus, const char *path);
