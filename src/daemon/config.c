/* SPDX-License-Identifier: LGPL-2.1-or-later */
#include <ctype.h>
#include <dirent.h>
#include <inttypes.h>
#include <limits.h>

#include "config.h"
#include "log.h"

void config_init(Config *c) {
        *c = (Config) {
                .max_jobs_per_user = 60,
                .max_jobs_per_machine = 300,
                .max_files_per_job = 200,
                .max_ranges_per_file = 500,
                .final_job_retention_sec = 600,
                .connect_timeout_sec = 30,
                .stall_timeout_sec = 60,
                .checkpoint_interval_msec = 1000,
                .checkpoint_bytes = 8ULL << 20,
                .notify_cmdline_timeout_sec = 300,
                .max_background_jobs = 1,
                .require_owner_session = true,
        };
}

static char *strip(char *s) {
        while (isspace((unsigned char) *s))
                s++;
        char *e = s + strlen(s);
        while (e > s && isspace((unsigned char) e[-1]))
                *--e = '\0';
        return s;
}

static int parse_u64(const char *v, uint64_t max, uint64_t *ret) {
        char *end;
        if (!isdigit((unsigned char) *v))
                return -EINVAL;
        errno = 0;
        unsigned long long x = strtoull(v, &end, 10);
        if (errno != 0 || *end != '\0' || x > max)
                return -ERANGE;
        *ret = x;
        return 0;
}

static int parse_bool(const char *v, bool *ret) {
        if (streq(v, "yes") || streq(v, "true") || streq(v, "1") || streq(v, "on"))
                *ret = true;
        else if (streq(v, "no") || streq(v, "false") || streq(v, "0") || streq(v, "off"))
                *ret = false;
        else
                return -EINVAL;
        return 0;
}

typedef struct Setting {
        const char *key;
        size_t offset;
        enum { T_U32, T_U64, T_BOOL } type;
        uint64_t min, max;
} Setting;

#define U32(k, f, lo, hi) { k, offsetof(Config, f), T_U32, lo, hi }
static const Setting settings[] = {
        U32("MaxJobsPerUser", max_jobs_per_user, 1, UINT32_MAX),
        U32("MaxJobsPerMachine", max_jobs_per_machine, 1, UINT32_MAX),
        U32("MaxFilesPerJob", max_files_per_job, 1, UINT32_MAX),
        U32("MaxRangesPerFile", max_ranges_per_file, 1, UINT32_MAX),
        U32("FinalJobRetentionSec", final_job_retention_sec, 0, 7 * 24 * 3600),
        U32("ConnectTimeoutSec", connect_timeout_sec, 1, 3600),
        U32("StallTimeoutSec", stall_timeout_sec, 1, 24 * 3600),
        U32("CheckpointIntervalMSec", checkpoint_interval_msec, 10, 3600 * 1000),
        { "CheckpointBytes", offsetof(Config, checkpoint_bytes), T_U64, 65536, UINT64_C(1) << 40 },
        U32("NotifyCmdLineTimeoutSec", notify_cmdline_timeout_sec, 1, 24 * 3600),
        U32("MaxBackgroundJobs", max_background_jobs, 1, 1000),
        { "RequireOwnerSession", offsetof(Config, require_owner_session), T_BOOL, 0, 1 },
};

static int apply(Config *c, const char *path, unsigned line, const char *key, const char *value) {
        for (size_t i = 0; i < ELEMENTSOF(settings); i++) {
                const Setting *s = &settings[i];
                uint64_t v;
                bool b;
                if (!streq(s->key, key))
                        continue;
                switch (s->type) {
                case T_BOOL:
                        if (parse_bool(value, &b) < 0)
                                return log_error_errno(EINVAL, "%s:%u: %s= takes a boolean, not '%s'.", path, line, key, value);
                        *(bool *) ((char *) c + s->offset) = b;
                        return 0;
                case T_U32:
                case T_U64:
                        if (parse_u64(value, UINT64_MAX, &v) < 0 || v < s->min || v > s->max)
                                return log_error_errno(EINVAL, "%s:%u: %s= must be a number from %" PRIu64 " to %" PRIu64 ", not '%s'.",
                                                       path, line, key, s->min, s->max, value);
                        if (s->type == T_U32)
                                *(uint32_t *) ((char *) c + s->offset) = (uint32_t) v;
                        else
                                *(uint64_t *) ((char *) c + s->offset) = v;
                        return 0;
                }
        }
        log_warning("%s:%u: unknown setting '%s', ignoring.", path, line, key);
        return 0;
}

int config_parse_file(Config *c, const char *path, bool optional) {
        _cleanup_fclose_ FILE *f = fopen(path, "re");
        char buf[4096];
        unsigned line = 0;
        bool in_daemon = false;

        if (!f) {
                if (errno == ENOENT && optional)
                        return 0;
                return log_error_errno(errno, "Cannot open configuration '%s': %m", path);
        }
        while (fgets(buf, sizeof(buf), f)) {
                line++;
                if (!strchr(buf, '\n') && !feof(f))
                        return log_error_errno(EINVAL, "%s:%u: line too long.", path, line);
                char *l = strip(buf);
                if (*l == '\0' || *l == '#' || *l == ';')
                        continue;
                if (*l == '[') {
                        in_daemon = streq(l, "[Daemon]");
                        if (!in_daemon)
                                log_warning("%s:%u: unknown section %s, ignoring its settings.", path, line, l);
                        continue;
                }
                char *eq = strchr(l, '=');
                if (!eq)
                        return log_error_errno(EINVAL, "%s:%u: expected Key=Value, got '%s'.", path, line, l);
                *eq = '\0';
                if (!in_daemon) {
                        log_warning("%s:%u: '%s' is outside the [Daemon] section, ignoring it.", path, line, strip(l));
                        continue;
                }
                int r = apply(c, path, line, strip(l), strip(eq + 1));
                if (r < 0)
                        return r;
        }
        if (c->max_jobs_per_user > c->max_jobs_per_machine)
                log_warning("%s: MaxJobsPerUser=%u is larger than MaxJobsPerMachine=%u.", path,
                            c->max_jobs_per_user, c->max_jobs_per_machine);
        return 0;
}

static int cmp_strp(const void *a, const void *b) {
        return strcmp(*(char *const *) a, *(char *const *) b);
}

int config_load(Config *c, const char *path, bool optional) {
        int r = config_parse_file(c, path, optional);
        if (r < 0)
                return r;

        _cleanup_free_ char *dir = NULL;
        if (asprintf(&dir, "%s.d", path) < 0)
                return -ENOMEM;
        DIR *d = opendir(dir);
        if (!d)
                return 0;
        char **names = NULL;
        size_t n = 0;
        struct dirent *de;
        r = 0;
        while ((de = readdir(d))) {
                size_t len = strlen(de->d_name);
                if (de->d_name[0] == '.' || len < 6 || !streq(de->d_name + len - 5, ".conf"))
                        continue;
                char **a = reallocarray(names, n + 1, sizeof(char *));
                if (!a) {
                        r = -ENOMEM;
                        break;
                }
                names = a;
                if (asprintf(&names[n], "%s/%s", dir, de->d_name) < 0) {
                        r = -ENOMEM;
                        break;
                }
                n++;
        }
        closedir(d);
        if (r >= 0) {
                qsort(names, n, sizeof(char *), cmp_strp);
                for (size_t i = 0; i < n && r >= 0; i++)
                        r = config_parse_file(c, names[i], false);
        }
        for (size_t i = 0; i < n; i++)
                free(names[i]);
        free(names);
        return r;
}
