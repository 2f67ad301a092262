/* SPDX-License-Identifier: LGPL-2.1-or-later */
#pragma once

/* bitsd.conf: an INI file with a [Daemon] section (systemd style), plus drop-ins in
 * bitsd.conf.d/ *.conf beside it, applied in lexical order. */

#include <stdbool.h>
#include <stdint.h>

typedef struct Config {
        uint32_t max_jobs_per_user;
        uint32_t max_jobs_per_machine;
        uint32_t max_files_per_job;
        uint32_t max_ranges_per_file;
        uint32_t final_job_retention_sec;
        uint32_t connect_timeout_sec;    /* a TCP/TLS connect that takes longer is a transient error */
        uint32_t stall_timeout_sec;      /* no byte received for this long is a transient error */
        uint32_t checkpoint_interval_msec;
        uint64_t checkpoint_bytes;
        uint32_t notify_cmdline_timeout_sec; /* a notify command line running longer is killed */
        uint32_t max_background_jobs;    /* background jobs transferring at once (foreground ones always run) */
        bool require_owner_session;
} Config;

void config_init(Config *c);
/* Parses one file. Unknown keys are warnings; malformed values are errors naming the line.
 * A missing file is not an error when optional. */
int config_parse_file(Config *c, const char *path, bool optional);
/* The main file, then <main file>.d/ *.conf. */
int config_load(Config *c, const char *path, bool optional);
