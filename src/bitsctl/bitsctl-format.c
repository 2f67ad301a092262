/* SPDX-License-Identifier: LGPL-2.1-or-later */

#include <ctype.h>
#include <inttypes.h>
#include <strings.h>
#include <time.h>

#include "bitsctl-format.h"
#include "macro.h"

const char *format_bytes(char *buf, size_t l, uint64_t n) {
        static const char *const suffixes[] = { "KiB", "MiB", "GiB", "TiB", "PiB", "EiB" };

        if (n == UINT64_MAX)
                return "?";

        if (n < 1024) {
                snprintf(buf, l, "%" PRIu64 " B", n);
                return buf;
        }

        double d = (double) n / 1024.0;
        size_t i = 0;
        while (d >= 1024.0 && i + 1 < ELEMENTSOF(suffixes)) {
                d /= 1024.0;
                i++;
        }
        snprintf(buf, l, "%.1f %s", d, suffixes[i]);
        return buf;
}

const char *format_timestamp(char *buf, size_t l, usec_t t) {
        struct tm tm;
        time_t sec;

        if (t == 0 || t == USEC_INFINITY)
                return "n/a";

        sec = (time_t) (t / USEC_PER_SEC);
        if (!localtime_r(&sec, &tm) || strftime(buf, l, "%a %Y-%m-%d %H:%M:%S %Z", &tm) == 0) {
                snprintf(buf, l, "@%" PRIu64, t / USEC_PER_SEC);
                return buf;
        }
        return buf;
}

const char *format_timespan(char *buf, size_t l, usec_t t) {
        static const struct {
                const char *suffix;
                usec_t usec;
        } table[] = {
                { "d",   24ULL * 3600ULL * USEC_PER_SEC },
                { "h",   3600ULL * USEC_PER_SEC         },
                { "min", 60ULL * USEC_PER_SEC           },
                { "s",   USEC_PER_SEC                   },
                { "ms",  USEC_PER_MSEC                  },
                { "us",  1                              },
        };
        size_t n = 0;

        if (t == USEC_INFINITY)
                return "infinity";
        if (t == 0)
                return "0";

        buf[0] = '\0';
        for (size_t i = 0; i < ELEMENTSOF(table) && t > 0; i++) {
                usec_t k = t / table[i].usec;
                int w;

                if (k == 0)
                        continue;
                w = snprintf(buf + n, l - n, "%s%" PRIu64 "%s", n > 0 ? " " : "", k, table[i].suffix);
                if (w < 0 || (size_t) w >= l - n)
                        break;
                n += (size_t) w;
                t -= k * table[i].usec;
        }
        return buf;
}

const char *format_notify_flags(char *buf, size_t l, uint32_t flags) {
        static const char *const names[] = {
                "transferred", "error", "disable", "modification", "file-transferred",
                "file-ranges-transferred",
        };
        size_t n;
        bool first = true;

        n = (size_t) snprintf(buf, l, "0x%" PRIx32, flags);
        if (flags == 0 || n >= l)
                return buf;

        for (size_t i = 0; i < 32; i++) {
                char unknown[16];
                const char *name;
                int w;

                if (!(flags & (UINT32_C(1) << i)))
                        continue;
                if (i < ELEMENTSOF(names))
                        name = names[i];
                else {
                        snprintf(unknown, sizeof unknown, "0x%" PRIx32, UINT32_C(1) << i);
                        name = unknown;
                }
                w = snprintf(buf + n, l - n, "%s%s", first ? " (" : ",", name);
                if (w < 0 || (size_t) w >= l - n)
                        return buf;
                n += (size_t) w;
                first = false;
        }
        if (n + 1 < l) {
                buf[n++] = ')';
                buf[n] = '\0';
        }
        return buf;
}

const char *format_percent(char *buf, size_t l, uint64_t done, uint64_t total) {
        if (total == UINT64_MAX)
                return "?";
        if (total == 0 || done >= total)
                /* An empty job that reached the end is complete; one that did not start is at 0. */
                snprintf(buf, l, "%.1f%%", total == 0 ? 0.0 : 100.0);
        else
                snprintf(buf, l, "%.1f%%", 100.0 * (double) done / (double) total);
        return buf;
}

int parse_boolean(const char *s) {
        static const char *const yes[] = { "1", "yes", "y", "true", "t", "on" };
        static const char *const no[] = { "0", "no", "n", "false", "f", "off" };

        for (size_t i = 0; i < ELEMENTSOF(yes); i++)
                if (strcasecmp(s, yes[i]) == 0)
                        return 1;
        for (size_t i = 0; i < ELEMENTSOF(no); i++)
                if (strcasecmp(s, no[i]) == 0)
                        return 0;
        return -EINVAL;
}

int parse_uint64(const char *s, uint64_t *ret) {
        unsigned long long v;
        char *end = NULL;

        /* strtoull() accepts a sign and wraps negative numbers; refuse both. */
        if (isempty(s) || !isdigit((unsigned char) s[0]))
                return -EINVAL;

        errno = 0;
        v = strtoull(s, &end, 0);
        if (errno > 0)
                return -errno;
        if (!end || *end != '\0')
                return -EINVAL;

        *ret = (uint64_t) v;
        return 0;
}

int parse_uint32(const char *s, uint32_t *ret) {
        uint64_t v;
        int r;

        r = parse_uint64(s, &v);
        if (r < 0)
                return r;
        if (v > UINT32_MAX)
                return -ERANGE;

        *ret = (uint32_t) v;
        return 0;
}

bool job_state_is_final(const char *state) {
        return streq_ptr(state, "acknowledged") || streq_ptr(state, "cancelled");
}
