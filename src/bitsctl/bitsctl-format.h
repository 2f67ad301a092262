/* SPDX-License-Identifier: LGPL-2.1-or-later */
#pragma once

/* Bus-free formatting and parsing helpers of bitsctl: sizes, times, durations, flags, values
 * given on the command line. */

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "time-util.h"

#define FORMAT_BYTES_MAX 32
#define FORMAT_TIMESTAMP_MAX 64
#define FORMAT_TIMESPAN_MAX 64
#define FORMAT_FLAGS_MAX 256

/* "?" for UINT64_MAX (unknown), "512 B", "1.5 MiB", … */
const char *format_bytes(char *buf, size_t l, uint64_t n);
/* Local date and time, "n/a" for 0. */
const char *format_timestamp(char *buf, size_t l, usec_t t);
/* "0", "500ms", "10min", "14d", "1h 30min". */
const char *format_timespan(char *buf, size_t l, usec_t t);
/* "0x3 (transferred,error)". */
const char *format_notify_flags(char *buf, size_t l, uint32_t flags);
/* "45.2%" or "?" when the total is unknown or 0 with nothing transferred. */
const char *format_percent(char *buf, size_t l, uint64_t done, uint64_t total);

int parse_boolean(const char *s);
int parse_uint64(const char *s, uint64_t *ret);
int parse_uint32(const char *s, uint32_t *ret);

bool job_state_is_final(const char *state);
