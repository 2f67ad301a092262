/* SPDX-License-Identifier: LGPL-2.1-or-later */
#pragma once

#include <stdbool.h>
#include <systemd/sd-bus.h>

/* Follows a job by polling its State, BytesTransferred and BytesTotal until it reaches
 * transferred, error, acknowledged or cancelled, or until SIGINT/SIGTERM.
 *
 * With show_progress, a single '\r'-updated line goes to stderr when it is a terminal, plain
 * lines at most once per second otherwise.
 *
 * Returns 0 and the state reached in *ret_state, EXIT_INTERRUPTED when interrupted (nothing
 * printed), or a negative errno for a bus error (already printed). */
int follow_job(sd_bus *bus, const char *path, bool show_progress, char **ret_state);
