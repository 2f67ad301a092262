/* SPDX-License-Identifier: LGPL-2.1-or-later */
#include <ctype.h>
#include <fcntl.h>
#include <stdarg.h>
#include <sys/random.h>

#include "job.h"

static const char *const job_state_table[_JOB_STATE_MAX] = {
        [JOB_SUSPENDED] = "suspended",
        [JOB_QUEUED] = "queued",
        [JOB_CONNECTING] = "connecting",
        [JOB_TRANSFERRING] = "transferring",
        [JOB_TRANSIENT_ERROR] = "transient-error",
        [JOB_ERROR] = "error",
        [JOB_TRANSFERRED] = "transferred",
        [JOB_ACKNOWLEDGED] = "acknowledged",
        [JOB_CANCELLED] = "cancelled",
};

static const char *const job_type_table[_JOB_TYPE_MAX] = {
        [JOB_DOWNLOAD] = "download",
        [JOB_UPLOAD] = "upload",
        [JOB_UPLOAD_REPLY] = "upload-reply",
};

static const char *const job_priority_table[_JOB_PRIORITY_MAX] = {
        [JOB_PRIORITY_FOREGROUND] = "foreground",
        [JOB_PRIORITY_HIGH] = "high",
        [JOB_PRIORITY_NORMAL] = "normal",
        [JOB_PRIORITY_LOW] = "low",
};

static const char *const error_context_table[_ERROR_CONTEXT_MAX] = {
        [ERROR_CONTEXT_NONE] = "none",
        [ERROR_CONTEXT_UNKNOWN] = "unknown",
        [ERROR_CONTEXT_QUEUE_MANAGER] = "queue-manager",
        [ERROR_CONTEXT_NOTIFICATION] = "notification",
        [ERROR_CONTEXT_LOCAL_FILE] = "local-file",
        [ERROR_CONTEXT_REMOTE_FILE] = "remote-file",
        [ERROR_CONTEXT_TRANSPORT] = "transport",
        [ERROR_CONTEXT_REMOTE_APPLICATION] = "remote-application",
};

static const char *table_to_string(const char *const *table, size_t n, int i) {
        return i >= 0 && (size_t) i < n ? table[i] : NULL;
}

static int table_from_string(const char *const *table, size_t n, const char *s) {
        if (!s)
                return -EINVAL;
        for (size_t i = 0; i < n; i++)
                if (table[i] && streq(table[i], s))
                        return (int) i;
        return -EINVAL;
}

#define DEFINE_STRING_TABLE(name, type, table)                                          \
        const char *name##_to_string(type v) {                                          \
                return table_to_string(table, ELEMENTSOF(table), (int) v);              \
        }                                                                               \
        type name##_from_string(const char *s) {                                        \
                return (type) table_from_string(table, ELEMENTSOF(table), s);           \
        }

DEFINE_STRING_TABLE(job_state, JobState, job_state_table)
DEFINE_STRING_TABLE(job_type, JobType, job_type_table)
DEFINE_STRING_TABLE(job_priority, JobPriority, job_priority_table)
DEFINE_STRING_TABLE(error_context, ErrorContext, error_context_table)

int job_state_next(JobState from, JobEvent event, bool has_pending_files) {
        if (from < 0 || from >= _JOB_STATE_MAX || job_state_is_final(from))
                return -EBUSY;

        switch (event) {
        case JOB_EVENT_RESUME:
                switch (from) {
                case JOB_SUSPENDED:
                case JOB_ERROR:
                case JOB_TRANSIENT_ERROR:
                        return has_pending_files ? JOB_QUEUED : JOB_TRANSFERRED;
                case JOB_TRANSFERRED:
                        return has_pending_files ? JOB_QUEUED : JOB_TRANSFERRED;
                default:
                        return from; /* already on its way */
                }
        case JOB_EVENT_SUSPEND:
                return JOB_SUSPENDED;
        case JOB_EVENT_CANCEL:
                return JOB_CANCELLED;
        case JOB_EVENT_COMPLETE:
                return JOB_ACKNOWLEDGED;
        case JOB_EVENT_START:
                return from == JOB_QUEUED ? JOB_CONNECTING : -EBUSY;
        case JOB_EVENT_CONNECTED:
                return job_state_is_active(from) ? JOB_TRANSFERRING : -EBUSY;
        case JOB_EVENT_PREEMPT:
                return job_state_is_active(from) || from == JOB_QUEUED ? JOB_QUEUED : -EBUSY;
        case JOB_EVENT_TRANSFERRED:
                return job_state_is_active(from) || from == JOB_QUEUED ? JOB_TRANSFERRED : -EBUSY;
        case JOB_EVENT_TRANSIENT_ERROR:
                return job_state_is_active(from) || from == JOB_QUEUED || from == JOB_TRANSIENT_ERROR
                        ? JOB_TRANSIENT_ERROR : -EBUSY;
        case JOB_EVENT_FATAL_ERROR:
                return job_state_is_active(from) || from == JOB_QUEUED || from == JOB_TRANSIENT_ERROR
                        ? JOB_ERROR : -EBUSY;
        case JOB_EVENT_RETRY:
                return from == JOB_TRANSIENT_ERROR ? JOB_QUEUED : -EBUSY;
        default:
                return -EINVAL;
        }
}

void job_error_info_clear(JobErrorInfo *e) {
        e->context = ERROR_CONTEXT_NONE;
        e->code = mfree(e->code);
        e->message = mfree(e->message);
        e->protocol = mfree(e->protocol);
        e->file_index = -1;
}

Job *job_new(const char *id, JobType type, uid_t owner, usec_t now_realtime) {
        _cleanup_(job_freep) Job *j = calloc(1, sizeof(Job));
        if (!j)
                return NULL;
        if (id_normalize(id, j->id) < 0)
                return NULL;
        id_to_hex(j->id, j->hex);
        if (asprintf(&j->object_path, "/org/freedesktop/bits1/job/%s", j->hex) < 0) {
                j->object_path = NULL;
                return NULL;
        }
        j->display_name = strdup("");
        j->description = strdup("");
        if (!j->display_name || !j->description)
                return NULL;
        j->type = type;
        j->state = JOB_SUSPENDED;
        j->owner = owner;
        j->priority = JOB_PRIORITY_NORMAL;
        j->notify_flags = JOB_NOTIFY_FLAGS_DEFAULT;
        j->minimum_retry_delay = JOB_MIN_RETRY_DELAY_DEFAULT;
        j->no_progress_timeout = JOB_NO_PROGRESS_TIMEOUT_DEFAULT;
        j->maximum_download_time = JOB_MAX_DOWNLOAD_TIME_DEFAULT;
        j->minimum_notification_interval_msec = JOB_NOTIFY_INTERVAL_DEFAULT_MSEC;
        j->creation_time = j->modification_time = now_realtime;
        j->error.file_index = -1;
        return TAKE_PTR(j);
}

Job *job_free(Job *j) {
        if (!j)
                return NULL;
        for (unsigned i = 0; i < j->n_files; i++)
                bits_file_free(j->files[i]);
        free(j->files);
        job_error_info_clear(&j->error);
        free(j->object_path);
        free(j->notify_program);
        strv_free(j->notify_argv);
        free(j->display_name);
        free(j->description);
        return mfree(j);
}

BitsFile *bits_file_new(const char *remote, const char *local, const char *temp) {
        _cleanup_(bits_file_freep) BitsFile *f = calloc(1, sizeof(BitsFile));
        if (!f)
                return NULL;
        f->remote_name = strdup(remote);
        f->local_name = strdup(local);
        f->temp_name = strdup(temp);
        if (!f->remote_name || !f->local_name || !f->temp_name)
                return NULL;
        f->bytes_total = BYTES_UNKNOWN;
        return TAKE_PTR(f);
}

BitsFile *bits_file_free(BitsFile *f) {
        if (!f)
                return NULL;
        free(f->remote_name);
        free(f->local_name);
        free(f->temp_name);
        free(f->validator);
        return mfree(f);
}

int job_append_files(Job *j, BitsFile **files, unsigned n) {
        BitsFile **a = reallocarray(j->files, j->n_files + n, sizeof(BitsFile *));
        if (!a)
                return -ENOMEM;
        j->files = a;
        for (unsigned i = 0; i < n; i++) {
                files[i]->job = j;
                files[i]->index = j->n_files;
                j->files[j->n_files++] = files[i];
        }
        return 0;
}

bool bits_file_is_transferred(const BitsFile *f) {
        return f->completed || (f->bytes_total != BYTES_UNKNOWN && f->bytes_transferred == f->bytes_total);
}

BitsFile *job_next_pending_file(const Job *j) {
        for (unsigned i = 0; i < j->n_files; i++)
                if (!bits_file_is_transferred(j->files[i]))
                        return j->files[i];
        return NULL;
}

uint64_t job_bytes_total(const Job *j) {
        uint64_t sum = 0;
        for (unsigned i = 0; i < j->n_files; i++) {
                if (j->files[i]->bytes_total == BYTES_UNKNOWN)
                        return BYTES_UNKNOWN;
                sum += j->files[i]->bytes_total;
        }
        return sum;
}

uint64_t job_bytes_transferred(const Job *j) {
        uint64_t sum = 0;
        for (unsigned i = 0; i < j->n_files; i++)
                sum += j->files[i]->bytes_transferred;
        return sum;
}

unsigned job_files_transferred(const Job *j) {
        unsigned n = 0;
        for (unsigned i = 0; i < j->n_files; i++)
                n += bits_file_is_transferred(j->files[i]);
        return n;
}

int job_set_error(Job *j, ErrorContext ctx, const char *code, const char *protocol, int file_index,
                  const char *format, ...) {
        char *message, *c, *p;
        va_list ap;

        va_start(ap, format);
        if (vasprintf(&message, format, ap) < 0)
                message = NULL;
        va_end(ap);
        c = strdup(code);
        p = strdup(strempty(protocol));
        if (!message || !c || !p) {
                free(message);
                free(c);
                free(p);
                return -ENOMEM;
        }
        job_error_info_clear(&j->error);
        j->error = (JobErrorInfo) {
                .context = ctx, .code = c, .message = message, .protocol = p, .file_index = file_index,
        };
        return 0;
}

/* ---- ids ---- */

static void hex_to_canonical(const char hex[static 32], char ret[static 37]) {
        /* 8-4-4-4-12 */
        size_t k = 0;
        for (size_t i = 0; i < 32; i++) {
                if ((i == 8 || i == 12 || i == 16 || i == 20))
                        ret[k++] = '-';
                ret[k++] = (char) tolower((unsigned char) hex[i]);
        }
        ret[k] = '\0';
}

int id_generate(char ret[static 37]) {
        uint8_t b[16];
        char hex[33];

        if (getrandom(b, sizeof(b), 0) != sizeof(b))
                return -EIO;
        b[6] = (b[6] & 0x0f) | 0x40; /* version 4 */
        b[8] = (b[8] & 0x3f) | 0x80; /* RFC 4122 variant */
        for (size_t i = 0; i < 16; i++)
                snprintf(hex + 2 * i, 3, "%02x", b[i]);
        hex_to_canonical(hex, ret);
        return 0;
}

int id_normalize(const char *s, char ret[static 37]) {
        char hex[33];
        size_t n = 0, len;

        if (!s)
                return -EINVAL;
        len = strlen(s);
        if (len == 38 && s[0] == '{' && s[37] == '}') {
                s++;
                len -= 2;
        }
        if (len == 36) {
                for (size_t i = 0; i < 36; i++) {
                        if (i == 8 || i == 13 || i == 18 || i == 23) {
                                if (s[i] != '-')
                                        return -EINVAL;
                                continue;
                        }
                        if (!isxdigit((unsigned char) s[i]))
                                return -EINVAL;
                        hex[n++] = s[i];
                }
        } else if (len == 32) {
                for (size_t i = 0; i < 32; i++) {
                        if (!isxdigit((unsigned char) s[i]))
                                return -EINVAL;
                        hex[n++] = s[i];
                }
        } else
                return -EINVAL;
        hex[32] = '\0';
        hex_to_canonical(hex, ret);
        return 0;
}

void id_to_hex(const char id[static 37], char ret[static 33]) {
        size_t k = 0;
        for (size_t i = 0; id[i] && k < 32; i++)
                if (id[i] != '-')
                        ret[k++] = id[i];
        ret[k] = '\0';
}

int id_from_hex(const char *hex, char ret[static 37]) {
        if (!hex || strlen(hex) != 32)
                return -EINVAL;
        for (size_t i = 0; i < 32; i++)
                if (!isxdigit((unsigned char) hex[i]) || isupper((unsigned char) hex[i]))
                        return -EINVAL;
        hex_to_canonical(hex, ret);
        return 0;
}

/* ---- validation ---- */

size_t utf8_length(const char *s) {
        size_t n = 0;
        for (; *s; s++)
                if (((unsigned char) *s & 0xc0) != 0x80)
                        n++;
        return n;
}

static int fail(char **ret_message, int r, const char *format, ...) _printf_(3, 4);
static int fail(char **ret_message, int r, const char *format, ...) {
        va_list ap;
        if (ret_message) {
                va_start(ap, format);
                if (vasprintf(ret_message, format, ap) < 0)
                        *ret_message = NULL;
                va_end(ap);
        }
        return r;
}

/* A short, printable rendering of a user-supplied value for error messages: control characters
 * escaped, cut at a character boundary (the input is valid UTF-8, and so must the message be, or
 * the bus refuses to send it). */
const char *value_for_message(const char *s, char *buf, size_t size) {
        size_t k = 0;
        for (; *s; s++) {
                unsigned char c = (unsigned char) *s;
                size_t need = c < 0x20 || c == 0x7f ? 4 : 1;
                /* Room for the whole character (a lead byte and its continuation bytes) and "...". */
                if (c >= 0xc0)
                        need = c >= 0xf0 ? 4 : c >= 0xe0 ? 3 : 2;
                if (k + need + 4 > size)
                        break;
                if (c < 0x20 || c == 0x7f)
                        k += (size_t) snprintf(buf + k, size - k, "\\x%02x", c);
                else if (c >= 0xc0) {
                        memcpy(buf + k, s, need);
                        k += need;
                        s += need - 1;
                } else
                        buf[k++] = (char) c;
        }
        if (*s) {
                memcpy(buf + k, "...", 3);
                k += 3;
        }
        buf[k] = '\0';
        return buf;
}

int validate_display_name(const char *s, unsigned max_chars, char **ret_message) {
        char q[96];
        size_t n = utf8_length(s);
        if (n > max_chars) {
                value_for_message(s, q, sizeof(q));
                return fail(ret_message, -E2BIG, "'%s' is %zu characters long, at most %u are allowed", q, n, max_chars);
        }
        return 0;
}

static bool has_prefix_nocase(const char *s, const char *prefix) {
        return strncasecmp(s, prefix, strlen(prefix)) == 0;
}

bool remote_is_local_file(const char *remote) {
        return remote[0] == '/' || has_prefix_nocase(remote, "file://");
}

const char *remote_protocol(const char *remote) {
        if (has_prefix_nocase(remote, "https://"))
                return "https";
        if (has_prefix_nocase(remote, "http://"))
                return "http";
        return "file";
}

static int unhex(char c) {
        if (c >= '0' && c <= '9')
                return c - '0';
        c = (char) tolower((unsigned char) c);
        if (c >= 'a' && c <= 'f')
                return c - 'a' + 10;
        return -1;
}

int remote_local_path(const char *remote, char **ret) {
        const char *p = remote;
        if (has_prefix_nocase(p, "file://")) {
                p += 7;
                if (has_prefix_nocase(p, "localhost/"))
                        p += 9;
                if (*p != '/')
                        return -EINVAL; /* file://host/... is not local */
                _cleanup_free_ char *d = malloc(strlen(p) + 1);
                if (!d)
                        return -ENOMEM;
                size_t k = 0;
                for (; *p; p++) {
                        if (*p == '?' || *p == '#')
                                return -EINVAL;
                        if (*p == '%') {
                                int a = unhex(p[1]), b = a >= 0 ? unhex(p[2]) : -1;
                                if (a < 0 || b < 0 || (a == 0 && b == 0))
                                        return -EINVAL; /* bad escape or an embedded NUL */
                                d[k++] = (char) (a * 16 + b);
                                p += 2;
                        } else
                                d[k++] = *p;
                }
                d[k] = '\0';
                *ret = TAKE_PTR(d);
                return 0;
        }
        if (*p != '/')
                return -EINVAL;
        *ret = strdup(p);
        return *ret ? 0 : -ENOMEM;
}

static int check_path_shape(const char *path, const char *what, const char *q, char **ret_message) {
        size_t len = strlen(path);
        if (len == 0 || path[0] != '/')
                return fail(ret_message, -EINVAL, "%s '%s' is not an absolute path", what, q);
        if (len > JOB_PATH_MAX)
                return fail(ret_message, -E2BIG, "%s '%s' is longer than %u bytes", what, q, JOB_PATH_MAX);
        if (path[len - 1] == '/')
                return fail(ret_message, -EINVAL, "%s '%s' names a directory, not a file", what, q);
        for (const char *c = path; *c; c++)
                if ((unsigned char) *c < 0x20 || *c == 0x7f)
                        return fail(ret_message, -EINVAL, "%s '%s' contains a control character", what, q);
        /* Components: not empty, not "." or "..", at most NAME_MAX. */
        for (const char *c = path + 1; *c;) {
                const char *e = strchrnul(c, '/');
                size_t n = (size_t) (e - c);
                if (n == 0 || (n == 1 && c[0] == '.') || (n == 2 && c[0] == '.' && c[1] == '.'))
                        return fail(ret_message, -EINVAL, "%s '%s' is not a normalized absolute path", what, q);
                if (n > 255)
                        return fail(ret_message, -E2BIG, "%s '%s' has a component longer than 255 bytes", what, q);
                c = *e ? e + 1 : e;
        }
        return 0;
}

int validate_remote_name(const char *s, char **ret_message) {
        char q[128];
        size_t len = strlen(s);

        value_for_message(s, q, sizeof(q));
        if (len == 0)
                return fail(ret_message, -EINVAL, "remote name is empty");
        if (len > JOB_URL_MAX)
                return fail(ret_message, -E2BIG, "remote name '%s' is %zu bytes long, at most %u are allowed", q, len, JOB_URL_MAX);
        for (const char *c = s; *c; c++) {
                unsigned char u = (unsigned char) *c;
                if (u < 0x20 || u == 0x7f)
                        return fail(ret_message, -EINVAL, "remote name '%s' contains a control character (CR, LF, ...)", q);
        }
        if (s[0] == '/')
                return check_path_shape(s, "remote name", q, ret_message);
        if (has_prefix_nocase(s, "file://")) {
                _cleanup_free_ char *p = NULL;
                if (remote_local_path(s, &p) < 0)
                        return fail(ret_message, -EINVAL, "remote URL '%s' is not a local file:// URL", q);
                return check_path_shape(p, "remote URL", q, ret_message);
        }
        if (!has_prefix_nocase(s, "http://") && !has_prefix_nocase(s, "https://")) {
                if (strstr(s, "://"))
                        return fail(ret_message, -EPROTONOSUPPORT, "remote URL '%s' uses an unsupported scheme (http, https and file are)", q);
                return fail(ret_message, -EINVAL, "remote name '%s' is neither a URL nor an absolute path", q);
        }
        const char *host = strstr(s, "://") + 3;
        if (*host == '\0' || *host == '/' || *host == '?' || *host == '#')
                return fail(ret_message, -EINVAL, "remote URL '%s' has no host", q);
        for (const char *c = s; *c; c++)
                if (*c == ' ' || (unsigned char) *c >= 0x80)
                        return fail(ret_message, -EINVAL, "remote URL '%s' contains a space or non-ASCII byte (percent-encode it)", q);
        return 0;
}

int validate_local_path(const char *s, char **ret_message) {
        char q[128];
        value_for_message(s, q, sizeof(q));
        if (s[0] == '\0')
                return fail(ret_message, -EINVAL, "local name is empty");
        return check_path_shape(s, "local name", q, ret_message);
}

/* ---- retry ---- */

void job_retry_plan(usec_t now, usec_t *no_progress_since, uint32_t min_retry_delay, uint32_t no_progress_timeout,
                    uint32_t retry_after, bool *ret_fatal, usec_t *ret_retry_at, usec_t *ret_give_up_at) {
        usec_t delay = (usec_t) MAX(MAX(min_retry_delay, JOB_MIN_RETRY_DELAY_MIN), retry_after) * USEC_PER_SEC;
        usec_t timeout = (usec_t) no_progress_timeout * USEC_PER_SEC;

        if (*no_progress_since == 0 || *no_progress_since > now)
                *no_progress_since = now;

        usec_t give_up = usec_add(*no_progress_since, timeout);

        *ret_fatal = no_progress_timeout == 0 ||           /* no retries at all */
                     min_retry_delay > no_progress_timeout || /* it could never retry in time */
                     now >= give_up;
        *ret_retry_at = usec_add(now, delay);
        *ret_give_up_at = give_up;
}

/* mountinfo escapes blanks and backslashes as \ooo octal. */
static char *mountinfo_unescape(const char *s, size_t n) {
        char *r = malloc(n + 1), *o = r;
        if (!r)
                return NULL;
        for (size_t i = 0; i < n; i++) {
                if (s[i] == '\\' && i + 3 < n && s[i + 1] >= '0' && s[i + 1] <= '3' &&
                    s[i + 2] >= '0' && s[i + 2] <= '7' && s[i + 3] >= '0' && s[i + 3] <= '7') {
                        *o++ = (char) ((s[i + 1] - '0') * 64 + (s[i + 2] - '0') * 8 + (s[i + 3] - '0'));
                        i += 3;
                } else
                        *o++ = s[i];
        }
        *o = '\0';
        return r;
}

static bool path_is_under(const char *path, const char *dir) {
        size_t n = strlen(dir);
        if (streq(dir, "/"))
                return true;
        return strncmp(path, dir, n) == 0 && (path[n] == '/' || path[n] == '\0');
}

int mountinfo_fuse_of_user(const char *mountinfo, const char *path, uid_t uid, char **ret_mount_point) {
        char want[32];
        _cleanup_free_ char *best = NULL;

        snprintf(want, sizeof(want), "user_id=%u", (unsigned) uid);
        for (const char *line = mountinfo; line && *line;) {
                const char *end = strchrnul(line, '\n');
                /* id parent major:minor root mount-point options [optional...] - fstype source super-options */
                const char *f[5] = {}, *p = line;
                size_t k = 0;
                while (k < 5 && p < end) {
                        f[k++] = p;
                        p = memchr(p, ' ', (size_t) (end - p));
                        if (!p)
                                break;
                        p++;
                }
                const char *sep = k == 5 ? strstr(line, " - ") : NULL;
                if (sep && sep < end) {
                        const char *fstype = sep + 3;
                        const char *src = memchr(fstype, ' ', (size_t) (end - fstype));
                        const char *super = src ? memchr(src + 1, ' ', (size_t) (end - src - 1)) : NULL;
                        if (super && strncmp(fstype, "fuse", 4) == 0) {
                                /* super options: comma separated, e.g. rw,user_id=1000,group_id=1000 */
                                _cleanup_free_ char *opts = strndup(super + 1, (size_t) (end - super - 1));
                                bool mine = false;
                                for (char *o = opts, *save = NULL, *t; opts && (t = strtok_r(o, ",", &save)); o = NULL)
                                        mine = mine || streq(t, want);
                                const char *mp_end = memchr(f[4], ' ', (size_t) (end - f[4]));
                                _cleanup_free_ char *mp = mp_end ? mountinfo_unescape(f[4], (size_t) (mp_end - f[4])) : NULL;
                                if (mine && mp && path_is_under(path, mp) && (!best || strlen(mp) > strlen(best)))
                                        free_and_replace(best, mp);
                        }
                }
                line = *end ? end + 1 : end;
        }
        if (!best)
                return 0;
        *ret_mount_point = TAKE_PTR(best);
        return 1;
}

bool http_status_is_transient(long status) {
        if (status >= 300 && status < 400)
                return !(status <= 305 || status == 307);
        if (status >= 400 && status < 500)
                return status == 408 || status == 409 || status == 429;
        if (status >= 500 && status < 600)
                return !(status == 501 || status == 505);
        return true;
}
