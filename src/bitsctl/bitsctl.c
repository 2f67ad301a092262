/* SPDX-License-Identifier: LGPL-2.1-or-later */

#include <ctype.h>
#include <getopt.h>
#include <inttypes.h>
#include <limits.h>
#include <stdarg.h>
#include <strings.h>
#include <sys/stat.h>

#include "bitsctl-follow.h"
#include "bitsctl-format.h"
#include "bitsctl.h"
#include "macro.h"

#ifndef PACKAGE_VERSION
#define PACKAGE_VERSION "unknown"
#endif

static const char *arg_address = NULL;
static const char *arg_type = "download";
static bool arg_all_users = false;
static const char *arg_priority = NULL;
static const char *arg_name = NULL;
static bool arg_progress = true;


#define IN_SET(x, a, b, c, d) ((x) == (a) || (x) == (b) || (x) == (c) || (x) == (d))

/* ---- helpers -------------------------------------------------------------------------------- */

_printf_(1, 2) static int log_usage(const char *fmt, ...) {
        va_list ap;

        fputs("bitsctl: ", stderr);
        va_start(ap, fmt);
        vfprintf(stderr, fmt, ap);
        va_end(ap);
        fputs("\nTry 'bitsctl --help' for more information.\n", stderr);
        return EXIT_USAGE;
}

int log_bus_error(const sd_bus_error *error, int r, const char *what) {
        if (sd_bus_error_is_set(error))
                fprintf(stderr, "bitsctl: %s (%s)\n",
                        isempty(error->message) ? error->name : error->message, error->name);
        else
                fprintf(stderr, "bitsctl: %s: %s\n", what, strerror(r < 0 ? -r : EIO));
        return r < 0 ? r : -EIO;
}

static int bus_connect(sd_bus **ret) {
        _cleanup_(sd_bus_flush_close_unrefp) sd_bus *bus = NULL;
        int r;

        if (arg_address) {
                r = sd_bus_new(&bus);
                if (r < 0)
                        return log_bus_error(NULL, r, "Failed to allocate bus");
                r = sd_bus_set_address(bus, arg_address);
                if (r < 0)
                        return log_bus_error(NULL, r, "Failed to set bus address");
                r = sd_bus_set_bus_client(bus, true);
                if (r >= 0)
                        r = sd_bus_start(bus);
        } else
                r = sd_bus_open_system(&bus);
        if (r < 0)
                return log_bus_error(NULL, r, "Failed to connect to bus");

        /* Let polkit ask for a password (through an agent) rather than refuse outright. */
        (void) sd_bus_set_allow_interactive_authorization(bus, true);

        *ret = TAKE_PTR(bus);
        return 0;
}

/* A job named on the command line: an object path is taken as is, anything else is an id that
 * the manager resolves (it accepts the canonical form, braces and 32 bare hex digits). */
static int resolve_job(sd_bus *bus, const char *name, char **ret_path) {
        _cleanup_(sd_bus_error_free) sd_bus_error error = SD_BUS_ERROR_NULL;
        _cleanup_(sd_bus_message_unrefp) sd_bus_message *reply = NULL;
        const char *path;
        char *p;
        int r;

        if (name[0] == '/') {
                if (!sd_bus_object_path_is_valid(name)) {
                        fprintf(stderr, "bitsctl: '%s' is not a valid object path.\n", name);
                        return -EINVAL;
                }
                path = name;
        } else {
                r = sd_bus_call_method(bus, BITS_SERVICE, BITS_MANAGER_PATH, BITS_MANAGER_INTERFACE,
                                       "GetJob", &error, &reply, "s", name);
                if (r < 0)
                        return log_bus_error(&error, r, "Failed to look up job");
                r = sd_bus_message_read(reply, "o", &path);
                if (r < 0)
                        return log_bus_error(NULL, r, "Failed to parse reply");
        }

        p = strdup(path);
        if (!p)
                return log_bus_error(NULL, -ENOMEM, "Out of memory");
        *ret_path = p;
        return 0;
}

static int job_call(sd_bus *bus, const char *path, const char *method, sd_bus_message **ret_reply) {
        _cleanup_(sd_bus_error_free) sd_bus_error error = SD_BUS_ERROR_NULL;
        int r;

        r = sd_bus_call_method(bus, BITS_SERVICE, path, BITS_JOB_INTERFACE, method, &error, ret_reply, NULL);
        if (r < 0)
                return log_bus_error(&error, r, method);
        return 0;
}

/* The daemon's working directory is not ours: a relative local path is made absolute here. The
 * directory part is canonicalized when it exists; otherwise the daemon judges the path. */
static int make_local_path(const char *path, char **ret) {
        _cleanup_free_ char *cwd = NULL, *dir = NULL, *real = NULL;
        const char *slash, *base;
        char *p;

        if (path[0] == '/') {
                p = strdup(path);
                if (!p)
                        return -ENOMEM;
                *ret = p;
                return 0;
        }

        slash = strrchr(path, '/');
        if (slash) {
                dir = strndup(path, (size_t) (slash - path) + 1);
                base = slash + 1;
        } else {
                dir = strdup(".");
                base = path;
        }
        if (!dir)
                return -ENOMEM;

        real = realpath(dir, NULL);
        if (real) {
                if (asprintf(&p, "%s%s%s", real, streq(real, "/") ? "" : "/", base) < 0)
                        return -ENOMEM;
        } else {
                cwd = getcwd(NULL, 0);
                if (!cwd)
                        return -errno;
                if (asprintf(&p, "%s/%s", cwd, path) < 0)
                        return -ENOMEM;
        }

        *ret = p;
        return 0;
}

/* The last path segment of a URL (or path), without query and fragment; NULL if there is none. */
static char *url_file_name(const char *url) {
        const char *p = url, *e, *s;

        e = strstr(p, "://");
        if (e) {
                p = e + 3;
                p += strcspn(p, "/?#");  /* skip the authority */
        }
        e = p + strcspn(p, "?#");
        for (s = e; s > p && s[-1] != '/'; s--)
                ;
        if (s == e || (e - s == 1 && s[0] == '.') || (e - s == 2 && s[0] == '.' && s[1] == '.'))
                return NULL;
        return strndup(s, (size_t) (e - s));
}

/* transfer's DEST: an existing directory, or a name ending in '/', receives the URL's file name. */
static int make_transfer_destination(const char *url, const char *dest, char **ret) {
        _cleanup_free_ char *joined = NULL, *name = NULL;
        struct stat st;
        size_t l = strlen(dest);

        if ((l > 0 && dest[l - 1] == '/') || (stat(dest, &st) >= 0 && S_ISDIR(st.st_mode))) {
                name = url_file_name(url);
                if (!name) {
                        fprintf(stderr, "bitsctl: cannot derive a file name from '%s'; give a file path instead of '%s'.\n",
                                url, dest);
                        return -EINVAL;
                }
                if (asprintf(&joined, "%s%s%s", dest, l > 0 && dest[l - 1] == '/' ? "" : "/", name) < 0)
                        return -ENOMEM;
                dest = joined;
        }

        return make_local_path(dest, ret);
}

static int get_property_string(sd_bus *bus, const char *path, const char *interface, const char *name, char **ret) {
        _cleanup_(sd_bus_error_free) sd_bus_error error = SD_BUS_ERROR_NULL;
        int r;

        r = sd_bus_get_property_string(bus, BITS_SERVICE, path, interface, name, &error, ret);
        if (r < 0)
                return log_bus_error(&error, r, name);
        return 0;
}

int job_print_error(sd_bus *bus, const char *path) {
        _cleanup_(sd_bus_error_free) sd_bus_error error = SD_BUS_ERROR_NULL;
        _cleanup_(sd_bus_message_unrefp) sd_bus_message *reply = NULL;
        const char *context, *code, *message, *protocol, *file;
        int r;

        r = sd_bus_get_property(bus, BITS_SERVICE, path, BITS_JOB_INTERFACE, "Error", &error, &reply, "(sssso)");
        if (r < 0)
                return log_bus_error(&error, r, "Failed to get job error");
        r = sd_bus_message_read(reply, "(sssso)", &context, &code, &message, &protocol, &file);
        if (r < 0)
                return log_bus_error(NULL, r, "Failed to parse job error");

        fprintf(stderr, "bitsctl: transfer failed: %s (context %s, code %s%s%s)\n",
                isempty(message) ? (isempty(code) ? "unknown error" : code) : message,
                isempty(context) ? "unknown" : context,
                isempty(code) ? "none" : code,
                isempty(protocol) ? "" : ", protocol ",
                strempty(protocol));

        if (!streq(file, "/")) {
                _cleanup_free_ char *remote = NULL, *local = NULL;

                sd_bus_error_free(&error);
                if (sd_bus_get_property_string(bus, BITS_SERVICE, file, BITS_FILE_INTERFACE, "RemoteName", &error, &remote) >= 0 &&
                    sd_bus_get_property_string(bus, BITS_SERVICE, file, BITS_FILE_INTERFACE, "LocalName", &error, &local) >= 0)
                        fprintf(stderr, "bitsctl: file: %s -> %s\n", remote, local);
                else
                        fprintf(stderr, "bitsctl: file: %s\n", file);
        }
        return 0;
}

/* ---- verbs ---------------------------------------------------------------------------------- */

static int verb_create(sd_bus *bus, int argc, char **argv) {
        _cleanup_(sd_bus_error_free) sd_bus_error error = SD_BUS_ERROR_NULL;
        _cleanup_(sd_bus_message_unrefp) sd_bus_message *reply = NULL;
        const char *id, *path;
        int r;

        r = sd_bus_call_method(bus, BITS_SERVICE, BITS_MANAGER_PATH, BITS_MANAGER_INTERFACE, "CreateJob",
                               &error, &reply, "ss", argv[1], arg_type);
        if (r < 0)
                return log_bus_error(&error, r, "Failed to create job");
        r = sd_bus_message_read(reply, "so", &id, &path);
        if (r < 0)
                return log_bus_error(NULL, r, "Failed to parse reply");

        printf("%s\n", id);
        return 0;
}

static int verb_add(sd_bus *bus, int argc, char **argv) {
        _cleanup_(sd_bus_error_free) sd_bus_error error = SD_BUS_ERROR_NULL;
        _cleanup_free_ char *path = NULL, *local = NULL;
        int r;

        r = make_local_path(argv[3], &local);
        if (r < 0)
                return log_bus_error(NULL, r, "Failed to make local path absolute");

        r = resolve_job(bus, argv[1], &path);
        if (r < 0)
                return r;

        r = sd_bus_call_method(bus, BITS_SERVICE, path, BITS_JOB_INTERFACE, "AddFile", &error, NULL,
                               "ss", argv[2], local);
        if (r < 0)
                return log_bus_error(&error, r, "Failed to add file");
        return 0;
}

/* AddFileSet with the (remote, local) pairs in pairs[0..n_pairs*2). */
static int job_add_file_set(sd_bus *bus, const char *path, char **pairs, size_t n_pairs) {
        _cleanup_(sd_bus_error_free) sd_bus_error error = SD_BUS_ERROR_NULL;
        _cleanup_(sd_bus_message_unrefp) sd_bus_message *m = NULL;
        int r;

        r = sd_bus_message_new_method_call(bus, &m, BITS_SERVICE, path, BITS_JOB_INTERFACE, "AddFileSet");
        if (r >= 0)
                r = sd_bus_message_open_container(m, 'a', "(ss)");
        for (size_t i = 0; r >= 0 && i < n_pairs; i++)
                r = sd_bus_message_append(m, "(ss)", pairs[2 * i], pairs[2 * i + 1]);
        if (r >= 0)
                r = sd_bus_message_close_container(m);
        if (r < 0)
                return log_bus_error(NULL, r, "Failed to build AddFileSet call");

        r = sd_bus_call(bus, m, 0, &error, NULL);
        if (r < 0)
                return log_bus_error(&error, r, "Failed to add files");
        return 0;
}

static int verb_addset(sd_bus *bus, int argc, char **argv) {
        _cleanup_strv_free_ char **pairs = NULL;
        _cleanup_free_ char *path = NULL;
        size_t n = (size_t) argc - 2;
        int r;

        if (n % 2 != 0)
                return log_usage("addset takes REMOTE LOCAL pairs; '%s' has no LOCAL.", argv[argc - 1]);

        pairs = calloc(n + 1, sizeof(char *));
        if (!pairs)
                return log_bus_error(NULL, -ENOMEM, "Out of memory");
        for (size_t i = 0; i < n; i++) {
                if (i % 2 == 0)
                        pairs[i] = strdup(argv[2 + i]);
                else {
                        r = make_local_path(argv[2 + i], &pairs[i]);
                        if (r < 0)
                                return log_bus_error(NULL, r, "Failed to make local path absolute");
                }
                if (!pairs[i])
                        return log_bus_error(NULL, -ENOMEM, "Out of memory");
        }

        r = resolve_job(bus, argv[1], &path);
        if (r < 0)
                return r;

        return job_add_file_set(bus, path, pairs, n / 2);
}

static int verb_simple(sd_bus *bus, int argc, char **argv) {
        static const struct {
                const char *verb;
                const char *method;
        } table[] = {
                { "resume",  "Resume"  },
                { "suspend", "Suspend" },
                { "cancel",  "Cancel"  },
        };
        _cleanup_free_ char *path = NULL;
        int r;

        r = resolve_job(bus, argv[1], &path);
        if (r < 0)
                return r;

        for (size_t i = 0; i < ELEMENTSOF(table); i++)
                if (streq(argv[0], table[i].verb))
                        return job_call(bus, path, table[i].method, NULL);

        return -EINVAL;
}

static int verb_complete(sd_bus *bus, int argc, char **argv) {
        _cleanup_(sd_bus_message_unrefp) sd_bus_message *reply = NULL;
        _cleanup_free_ char *path = NULL;
        const char *result;
        int r;

        r = resolve_job(bus, argv[1], &path);
        if (r < 0)
                return r;

        r = job_call(bus, path, "Complete", &reply);
        if (r < 0)
                return r;
        r = sd_bus_message_read(reply, "s", &result);
        if (r < 0)
                return log_bus_error(NULL, r, "Failed to parse reply");

        printf("%s\n", result);
        return 0;
}

static void format_bytes_pair(char *buf, size_t l, uint64_t done, uint64_t total) {
        if (total == UINT64_MAX)
                snprintf(buf, l, "%" PRIu64 "/?", done);
        else
                snprintf(buf, l, "%" PRIu64 "/%" PRIu64, done, total);
}

static void job_bytes_column(sd_bus *bus, const char *interface, const char *path, char *buf, size_t l) {
        uint64_t done, total;

        /* A job can become final between ListJobs and here: show '-' rather than fail the list. */
        if (sd_bus_get_property_trivial(bus, BITS_SERVICE, path, interface, "BytesTransferred", NULL, 't', &done) < 0 ||
            sd_bus_get_property_trivial(bus, BITS_SERVICE, path, interface, "BytesTotal", NULL, 't', &total) < 0) {
                snprintf(buf, l, "-");
                return;
        }
        format_bytes_pair(buf, l, done, total);
}

static int verb_list(sd_bus *bus, int argc, char **argv) {
        _cleanup_(sd_bus_error_free) sd_bus_error error = SD_BUS_ERROR_NULL;
        _cleanup_(sd_bus_message_unrefp) sd_bus_message *reply = NULL;
        const char *id, *path, *name, *state;
        uint32_t owner;
        int r;

        r = sd_bus_call_method(bus, BITS_SERVICE, BITS_MANAGER_PATH, BITS_MANAGER_INTERFACE, "ListJobs",
                               &error, &reply, "t", (uint64_t) (arg_all_users ? 1 : 0));
        if (r < 0)
                return log_bus_error(&error, r, "Failed to list jobs");

        r = sd_bus_message_enter_container(reply, 'a', "(sossu)");
        if (r < 0)
                return log_bus_error(NULL, r, "Failed to parse reply");

        printf("%-36s %-15s %-6s %-21s %s\n", "ID", "STATE", "OWNER", "BYTES", "NAME");

        while ((r = sd_bus_message_read(reply, "(sossu)", &id, &path, &name, &state, &owner)) > 0) {
                char bytes[48];

                job_bytes_column(bus, BITS_JOB_INTERFACE, path, bytes, sizeof bytes);
                printf("%-36s %-15s %-6" PRIu32 " %-21s %s\n", id, state, owner, bytes, name);
        }
        if (r < 0)
                return log_bus_error(NULL, r, "Failed to parse reply");

        return 0;
}

/* -- info -- */

typedef enum PropertyKind {
        PROPERTY_GENERIC,
        PROPERTY_SIZE,          /* t: bytes, UINT64_MAX unknown */
        PROPERTY_SIZE_LIMIT,    /* t: bytes, 0 no limit */
        PROPERTY_TIME,          /* t: µs since the epoch, 0 never */
        PROPERTY_SECONDS,       /* u */
        PROPERTY_MSEC,          /* u */
        PROPERTY_HEX,           /* u */
        PROPERTY_NOTIFY_FLAGS,  /* u */
        PROPERTY_UID,           /* u, UINT32_MAX none */
        PROPERTY_ERROR,         /* (sssso) */
        PROPERTY_CMDLINE,       /* (sas) */
        PROPERTY_STRV,          /* as */
} PropertyKind;

static const struct {
        const char *name;
        PropertyKind kind;
} job_properties[] = {
        /* The order in which info prints them; unknown properties follow. */
        { "Id",                              PROPERTY_GENERIC      },
        { "DisplayName",                     PROPERTY_GENERIC      },
        { "Description",                     PROPERTY_GENERIC      },
        { "Type",                            PROPERTY_GENERIC      },
        { "State",                           PROPERTY_GENERIC      },
        { "Priority",                        PROPERTY_GENERIC      },
        { "Owner",                           PROPERTY_UID          },
        { "BytesTransferred",                PROPERTY_SIZE         },
        { "BytesTotal",                      PROPERTY_SIZE         },
        { "FilesTransferred",                PROPERTY_GENERIC      },
        { "FilesTotal",                      PROPERTY_GENERIC      },
        { "CreationTime",                    PROPERTY_TIME         },
        { "ModificationTime",                PROPERTY_TIME         },
        { "TransferCompletionTime",          PROPERTY_TIME         },
        { "ErrorCount",                      PROPERTY_GENERIC      },
        { "Error",                           PROPERTY_ERROR        },
        { "NotifyFlags",                     PROPERTY_NOTIFY_FLAGS },
        { "NotifyCmdLine",                   PROPERTY_CMDLINE      },
        { "MinimumRetryDelay",               PROPERTY_SECONDS      },
        { "NoProgressTimeout",               PROPERTY_SECONDS      },
        { "MaximumDownloadTime",             PROPERTY_SECONDS      },
        { "MinimumNotificationIntervalMsec", PROPERTY_MSEC         },
        { "ProxyUsage",                      PROPERTY_GENERIC      },
        { "ProxyList",                       PROPERTY_GENERIC      },
        { "ProxyBypassList",                 PROPERTY_GENERIC      },
        { "CustomHeaders",                   PROPERTY_STRV         },
        { "SecurityFlags",                   PROPERTY_HEX          },
        { "HttpMethod",                      PROPERTY_GENERIC      },
        { "HelperTokenFlags",                PROPERTY_HEX          },
        { "HelperTokenUid",                  PROPERTY_UID          },
        { "CostFlags",                       PROPERTY_HEX          },
        { "DynamicContent",                  PROPERTY_GENERIC      },
        { "HighPerformance",                 PROPERTY_GENERIC      },
        { "OnDemand",                        PROPERTY_GENERIC      },
        { "MaxDownloadSize",                 PROPERTY_SIZE_LIMIT   },
        { "ReplyFileName",                   PROPERTY_GENERIC      },
        { "ReplyBytesTotal",                 PROPERTY_SIZE         },
        { "ReplyBytesTransferred",           PROPERTY_SIZE         },
};

static const char *property_signature(PropertyKind k) {
        switch (k) {
        case PROPERTY_SIZE:
        case PROPERTY_SIZE_LIMIT:
        case PROPERTY_TIME:
                return "t";
        case PROPERTY_SECONDS:
        case PROPERTY_MSEC:
        case PROPERTY_HEX:
        case PROPERTY_NOTIFY_FLAGS:
        case PROPERTY_UID:
                return "u";
        case PROPERTY_ERROR:
                return "(sssso)";
        case PROPERTY_CMDLINE:
                return "(sas)";
        case PROPERTY_STRV:
                return "as";
        default:
                return NULL;
        }
}

/* Writes any value at the read position of m (up to the end of the enclosing container). */
static int dump_values(sd_bus_message *m, FILE *f, const char *separator) {
        bool first = true;
        int r;

        for (;;) {
                const char *contents;
                char type;

                r = sd_bus_message_peek_type(m, &type, &contents);
                if (r < 0)
                        return r;
                if (r == 0)
                        return 0;

                if (!first)
                        fputs(separator, f);
                first = false;

                if (IN_SET(type, SD_BUS_TYPE_ARRAY, SD_BUS_TYPE_STRUCT, SD_BUS_TYPE_VARIANT, SD_BUS_TYPE_DICT_ENTRY)) {
                        r = sd_bus_message_enter_container(m, type, contents);
                        if (r < 0)
                                return r;
                        if (type == SD_BUS_TYPE_STRUCT)
                                fputc('(', f);
                        else if (type == SD_BUS_TYPE_ARRAY)
                                fputc('[', f);
                        r = dump_values(m, f, type == SD_BUS_TYPE_DICT_ENTRY ? "=" : ", ");
                        if (r < 0)
                                return r;
                        if (type == SD_BUS_TYPE_STRUCT)
                                fputc(')', f);
                        else if (type == SD_BUS_TYPE_ARRAY)
                                fputc(']', f);
                        r = sd_bus_message_exit_container(m);
                        if (r < 0)
                                return r;
                        continue;
                }

                union {
                        uint8_t u8;
                        uint16_t u16;
                        int16_t s16;
                        uint32_t u32;
                        int32_t s32;
                        uint64_t u64;
                        int64_t s64;
                        double d;
                        int b;
                        const char *s;
                        int fd;
                } v;

                r = sd_bus_message_read_basic(m, type, &v);
                if (r < 0)
                        return r;

                switch (type) {
                case SD_BUS_TYPE_BYTE:        fprintf(f, "%u", v.u8); break;
                case SD_BUS_TYPE_BOOLEAN:     fputs(v.b ? "yes" : "no", f); break;
                case SD_BUS_TYPE_INT16:       fprintf(f, "%" PRIi16, v.s16); break;
                case SD_BUS_TYPE_UINT16:      fprintf(f, "%" PRIu16, v.u16); break;
                case SD_BUS_TYPE_INT32:       fprintf(f, "%" PRIi32, v.s32); break;
                case SD_BUS_TYPE_UINT32:      fprintf(f, "%" PRIu32, v.u32); break;
                case SD_BUS_TYPE_INT64:       fprintf(f, "%" PRIi64, v.s64); break;
                case SD_BUS_TYPE_UINT64:      fprintf(f, "%" PRIu64, v.u64); break;
                case SD_BUS_TYPE_DOUBLE:      fprintf(f, "%g", v.d); break;
                case SD_BUS_TYPE_UNIX_FD:     fprintf(f, "fd:%d", v.fd); break;
                default:                      fputs(v.s, f); break;  /* s, o, g */
                }
        }
}

static int format_property(sd_bus_message *m, PropertyKind kind, FILE *f, char **ret_error_file) {
        char a[FORMAT_TIMESTAMP_MAX];
        uint64_t t;
        uint32_t u;
        int r;

        switch (kind) {
        case PROPERTY_SIZE:
        case PROPERTY_SIZE_LIMIT:
                r = sd_bus_message_read(m, "t", &t);
                if (r < 0)
                        return r;
                if (kind == PROPERTY_SIZE_LIMIT && t == 0)
                        fputs("unlimited", f);
                else if (t == UINT64_MAX || t < 1024)
                        fputs(format_bytes(a, sizeof a, t), f);
                else
                        fprintf(f, "%s (%" PRIu64 " bytes)", format_bytes(a, sizeof a, t), t);
                return 0;

        case PROPERTY_TIME:
                r = sd_bus_message_read(m, "t", &t);
                if (r < 0)
                        return r;
                fputs(format_timestamp(a, sizeof a, t), f);
                return 0;

        case PROPERTY_SECONDS:
        case PROPERTY_MSEC:
                r = sd_bus_message_read(m, "u", &u);
                if (r < 0)
                        return r;
                fputs(format_timespan(a, sizeof a, (usec_t) u * (kind == PROPERTY_MSEC ? USEC_PER_MSEC : USEC_PER_SEC)), f);
                return 0;

        case PROPERTY_HEX:
                r = sd_bus_message_read(m, "u", &u);
                if (r < 0)
                        return r;
                fprintf(f, "0x%" PRIx32, u);
                return 0;

        case PROPERTY_NOTIFY_FLAGS: {
                char flags[FORMAT_FLAGS_MAX];

                r = sd_bus_message_read(m, "u", &u);
                if (r < 0)
                        return r;
                fputs(format_notify_flags(flags, sizeof flags, u), f);
                return 0;
        }

        case PROPERTY_UID:
                r = sd_bus_message_read(m, "u", &u);
                if (r < 0)
                        return r;
                if (u == UINT32_MAX)
                        fputs("none", f);
                else
                        fprintf(f, "%" PRIu32, u);
                return 0;

        case PROPERTY_ERROR: {
                const char *context, *code, *message, *protocol, *file;

                r = sd_bus_message_read(m, "(sssso)", &context, &code, &message, &protocol, &file);
                if (r < 0)
                        return r;
                if (streq(context, "none") && isempty(code))
                        fputs("none", f);
                else
                        fprintf(f, "%s (context %s, code %s%s%s)",
                                isempty(message) ? "-" : message, context, isempty(code) ? "none" : code,
                                isempty(protocol) ? "" : ", protocol ", strempty(protocol));
                if (!streq(file, "/") && ret_error_file) {
                        *ret_error_file = strdup(file);
                        if (!*ret_error_file)
                                return -ENOMEM;
                }
                return 0;
        }

        case PROPERTY_CMDLINE: {
                const char *program, *arg;
                bool any = false;

                r = sd_bus_message_enter_container(m, 'r', "sas");
                if (r < 0)
                        return r;
                r = sd_bus_message_read(m, "s", &program);
                if (r < 0)
                        return r;
                r = sd_bus_message_enter_container(m, 'a', "s");
                if (r < 0)
                        return r;
                if (!isempty(program)) {
                        fputs(program, f);
                        any = true;
                }
                /* argv[0] conventionally repeats the program; show the argument vector as is. */
                fputs(any ? " [" : "", f);
                bool first = true;
                while ((r = sd_bus_message_read(m, "s", &arg)) > 0) {
                        fprintf(f, "%s%s", first ? "" : " ", arg);
                        first = false;
                }
                if (r < 0)
                        return r;
                if (any)
                        fputc(']', f);
                else
                        fputs("none", f);
                r = sd_bus_message_exit_container(m);
                if (r < 0)
                        return r;
                return sd_bus_message_exit_container(m);
        }

        case PROPERTY_STRV: {
                const char *s;
                bool first = true;

                r = sd_bus_message_enter_container(m, 'a', "s");
                if (r < 0)
                        return r;
                while ((r = sd_bus_message_read(m, "s", &s)) > 0) {
                        fprintf(f, "%s%s", first ? "" : "; ", s);
                        first = false;
                }
                if (r < 0)
                        return r;
                if (first)
                        fputs("none", f);
                return sd_bus_message_exit_container(m);
        }

        default:
                return dump_values(m, f, " ");
        }
}

typedef struct InfoLine {
        char *name;
        char *value;
} InfoLine;

typedef struct Info {
        InfoLine *lines;
        size_t n_lines;
        char *error_file;
} Info;

static void info_done(Info *i) {
        for (size_t k = 0; k < i->n_lines; k++) {
                free(i->lines[k].name);
                free(i->lines[k].value);
        }
        free(i->lines);
        free(i->error_file);
}

static ssize_t job_property_index(const char *name) {
        for (size_t k = 0; k < ELEMENTSOF(job_properties); k++)
                if (streq(job_properties[k].name, name))
                        return (ssize_t) k;
        return -1;
}

/* Reads one value (positioned inside its variant) and appends "name: value" to info. */
static int info_add(Info *info, const char *name, const char *contents, sd_bus_message *m) {
        _cleanup_free_ char *buf = NULL, *n = NULL;
        _cleanup_fclose_ FILE *f = NULL;
        PropertyKind kind = PROPERTY_GENERIC;
        ssize_t idx;
        size_t size;
        InfoLine *l;
        int r;

        idx = job_property_index(name);
        if (idx >= 0) {
                const char *sig = property_signature(job_properties[idx].kind);
                /* A daemon that changed a type still gets its value printed, just not decoded. */
                if (sig && streq(sig, contents))
                        kind = job_properties[idx].kind;
        }

        f = open_memstream(&buf, &size);
        if (!f)
                return -ENOMEM;
        r = format_property(m, kind, f, streq(name, "Error") ? &info->error_file : NULL);
        if (r < 0)
                return r;
        if (fflush(f) != 0)
                return -ENOMEM;
        f = (fclose(f), NULL);

        n = strdup(name);
        if (!n)
                return -ENOMEM;
        l = reallocarray(info->lines, info->n_lines + 1, sizeof(InfoLine));
        if (!l)
                return -ENOMEM;
        info->lines = l;
        info->lines[info->n_lines++] = (InfoLine) { .name = TAKE_PTR(n), .value = TAKE_PTR(buf) };
        return 0;
}

static int info_read_all(sd_bus *bus, const char *path, Info *info, sd_bus_error *error) {
        _cleanup_(sd_bus_message_unrefp) sd_bus_message *reply = NULL;
        int r;

        r = sd_bus_call_method(bus, BITS_SERVICE, path, "org.freedesktop.DBus.Properties", "GetAll",
                               error, &reply, "s", BITS_JOB_INTERFACE);
        if (r < 0)
                return r;

        r = sd_bus_message_enter_container(reply, 'a', "{sv}");
        if (r < 0)
                return r;
        while ((r = sd_bus_message_enter_container(reply, 'e', "sv")) > 0) {
                const char *name, *contents;

                r = sd_bus_message_read(reply, "s", &name);
                if (r < 0)
                        return r;
                r = sd_bus_message_peek_type(reply, NULL, &contents);
                if (r < 0)
                        return r;
                r = sd_bus_message_enter_container(reply, 'v', contents);
                if (r < 0)
                        return r;
                r = info_add(info, name, contents, reply);
                if (r < 0)
                        return r;
                r = sd_bus_message_exit_container(reply);
                if (r < 0)
                        return r;
                r = sd_bus_message_exit_container(reply);
                if (r < 0)
                        return r;
        }
        return r;
}

/* Fallback when GetAll fails as a whole, e.g. because one property (CustomHeaders after
 * MakeCustomHeadersWriteOnly) refuses to be read: get the known ones one by one. */
static int info_read_each(sd_bus *bus, const char *path, Info *info) {
        int r;

        for (size_t k = 0; k < ELEMENTSOF(job_properties); k++) {
                _cleanup_(sd_bus_error_free) sd_bus_error error = SD_BUS_ERROR_NULL;
                _cleanup_(sd_bus_message_unrefp) sd_bus_message *reply = NULL;
                const char *contents;

                r = sd_bus_call_method(bus, BITS_SERVICE, path, "org.freedesktop.DBus.Properties", "Get",
                                       &error, &reply, "ss", BITS_JOB_INTERFACE, job_properties[k].name);
                if (r < 0) {
                        if (sd_bus_error_has_name(&error, "org.freedesktop.DBus.Error.AccessDenied")) {
                                InfoLine *l = reallocarray(info->lines, info->n_lines + 1, sizeof(InfoLine));
                                if (!l)
                                        return -ENOMEM;
                                info->lines = l;
                                l[info->n_lines].name = strdup(job_properties[k].name);
                                l[info->n_lines].value = strdup("(not readable)");
                                if (!l[info->n_lines].name || !l[info->n_lines].value) {
                                        free(l[info->n_lines].name);
                                        free(l[info->n_lines].value);
                                        return -ENOMEM;
                                }
                                info->n_lines++;
                                continue;
                        }
                        if (sd_bus_error_has_name(&error, "org.freedesktop.DBus.Error.UnknownProperty") ||
                            sd_bus_error_has_name(&error, "org.freedesktop.DBus.Error.InvalidArgs"))
                                continue;  /* an older daemon without this property */
                        return log_bus_error(&error, r, "Failed to get property");
                }

                r = sd_bus_message_peek_type(reply, NULL, &contents);
                if (r >= 0)
                        r = sd_bus_message_enter_container(reply, 'v', contents);
                if (r >= 0)
                        r = info_add(info, job_properties[k].name, contents, reply);
                if (r < 0)
                        return log_bus_error(NULL, r, "Failed to parse property");
        }
        return 0;
}

static void info_print(const Info *info) {
        bool *printed = calloc(info->n_lines ?: 1, sizeof(bool));

        for (size_t k = 0; k < ELEMENTSOF(job_properties); k++)
                for (size_t j = 0; j < info->n_lines; j++)
                        if (streq(info->lines[j].name, job_properties[k].name)) {
                                printf("%s: %s\n", info->lines[j].name, info->lines[j].value);
                                if (printed)
                                        printed[j] = true;
                        }
        if (!printed)
                return;
        for (size_t j = 0; j < info->n_lines; j++)
                if (!printed[j] && job_property_index(info->lines[j].name) < 0)
                        printf("%s: %s\n", info->lines[j].name, info->lines[j].value);
        free(printed);
}

typedef struct FileInfo {
        char *remote;
        char *local;
        uint64_t bytes_total;
        uint64_t bytes_transferred;
        int completed;
} FileInfo;

static void file_info_done(FileInfo *fi) {
        free(fi->remote);
        free(fi->local);
}

static int file_info_get(sd_bus *bus, const char *path, FileInfo *ret) {
        _cleanup_(sd_bus_error_free) sd_bus_error error = SD_BUS_ERROR_NULL;
        _cleanup_(sd_bus_message_unrefp) sd_bus_message *reply = NULL;
        FileInfo fi = { .bytes_total = UINT64_MAX, .completed = -1 };
        int r;

        r = sd_bus_call_method(bus, BITS_SERVICE, path, "org.freedesktop.DBus.Properties", "GetAll",
                               &error, &reply, "s", BITS_FILE_INTERFACE);
        if (r < 0)
                return log_bus_error(&error, r, "Failed to get file properties");

        r = sd_bus_message_enter_container(reply, 'a', "{sv}");
        while (r >= 0 && (r = sd_bus_message_enter_container(reply, 'e', "sv")) > 0) {
                const char *name, *s;

                r = sd_bus_message_read(reply, "s", &name);
                if (r < 0)
                        break;

                if ((streq(name, "RemoteName") || streq(name, "LocalName")) &&
                    sd_bus_message_verify_type(reply, 'v', "s") > 0) {
                        r = sd_bus_message_read(reply, "v", "s", &s);
                        if (r >= 0) {
                                char **p = streq(name, "RemoteName") ? &fi.remote : &fi.local;
                                r = free_and_strdup(p, s);
                        }
                } else if ((streq(name, "BytesTotal") || streq(name, "BytesTransferred")) &&
                           sd_bus_message_verify_type(reply, 'v', "t") > 0)
                        r = sd_bus_message_read(reply, "v", "t",
                                                streq(name, "BytesTotal") ? &fi.bytes_total : &fi.bytes_transferred);
                else if (streq(name, "Completed") && sd_bus_message_verify_type(reply, 'v', "b") > 0)
                        r = sd_bus_message_read(reply, "v", "b", &fi.completed);
                else
                        r = sd_bus_message_skip(reply, "v");
                if (r >= 0)
                        r = sd_bus_message_exit_container(reply);
        }
        if (r < 0) {
                file_info_done(&fi);
                return log_bus_error(NULL, r, "Failed to parse file properties");
        }

        *ret = fi;
        return 0;
}

static int job_list_files(sd_bus *bus, const char *path, char ***ret) {
        _cleanup_(sd_bus_error_free) sd_bus_error error = SD_BUS_ERROR_NULL;
        _cleanup_(sd_bus_message_unrefp) sd_bus_message *reply = NULL;
        _cleanup_strv_free_ char **l = NULL;
        size_t n = 0;
        const char *p;
        int r;

        r = sd_bus_call_method(bus, BITS_SERVICE, path, BITS_JOB_INTERFACE, "ListFiles", &error, &reply, NULL);
        if (r < 0)
                return log_bus_error(&error, r, "Failed to list files");

        l = calloc(1, sizeof(char *));
        if (!l)
                return log_bus_error(NULL, -ENOMEM, "Out of memory");

        r = sd_bus_message_enter_container(reply, 'a', "o");
        while (r >= 0 && (r = sd_bus_message_read(reply, "o", &p)) > 0) {
                char **nl = reallocarray(l, n + 2, sizeof(char *));
                if (!nl)
                        return log_bus_error(NULL, -ENOMEM, "Out of memory");
                l = nl;
                l[n] = strdup(p);
                if (!l[n])
                        return log_bus_error(NULL, -ENOMEM, "Out of memory");
                l[++n] = NULL;
        }
        if (r < 0)
                return log_bus_error(NULL, r, "Failed to parse reply");

        *ret = TAKE_PTR(l);
        return 0;
}

static int verb_info(sd_bus *bus, int argc, char **argv) {
        _cleanup_(sd_bus_error_free) sd_bus_error error = SD_BUS_ERROR_NULL;
        _cleanup_strv_free_ char **files = NULL;
        _cleanup_free_ char *path = NULL;
        Info info = {};
        int r;

        r = resolve_job(bus, argv[1], &path);
        if (r < 0)
                return r;

        r = info_read_all(bus, path, &info, &error);
        if (r < 0 && sd_bus_error_has_name(&error, "org.freedesktop.DBus.Error.AccessDenied")) {
                info_done(&info);
                info = (Info) {};
                r = info_read_each(bus, path, &info);
                if (r < 0)
                        goto finish;
        } else if (r < 0) {
                r = log_bus_error(&error, r, "Failed to get job properties");
                goto finish;
        }

        printf("Path: %s\n", path);
        info_print(&info);

        if (info.error_file) {
                FileInfo fi;

                if (file_info_get(bus, info.error_file, &fi) >= 0) {
                        printf("ErrorFile: %s -> %s\n", strempty(fi.remote), strempty(fi.local));
                        file_info_done(&fi);
                } else
                        printf("ErrorFile: %s\n", info.error_file);
        }

        r = job_list_files(bus, path, &files);
        if (r < 0)
                goto finish;
        for (size_t k = 0; files[k]; k++) {
                char done[FORMAT_BYTES_MAX], total[FORMAT_BYTES_MAX];
                FileInfo fi;

                r = file_info_get(bus, files[k], &fi);
                if (r < 0)
                        goto finish;
                printf("File: %s -> %s (%s / %s%s)\n", strempty(fi.remote), strempty(fi.local),
                       format_bytes(done, sizeof done, fi.bytes_transferred),
                       format_bytes(total, sizeof total, fi.bytes_total),
                       fi.completed > 0 ? ", completed" : "");
                file_info_done(&fi);
        }
        r = 0;

finish:
        info_done(&info);
        return r;
}

static int verb_files(sd_bus *bus, int argc, char **argv) {
        _cleanup_strv_free_ char **files = NULL;
        _cleanup_free_ char *path = NULL;
        int r;

        r = resolve_job(bus, argv[1], &path);
        if (r < 0)
                return r;

        r = job_list_files(bus, path, &files);
        if (r < 0)
                return r;

        printf("%-5s %-9s %-21s %s %s\n", "INDEX", "COMPLETED", "BYTES", "REMOTE", "LOCAL");
        for (size_t k = 0; files[k]; k++) {
                char bytes[48];
                FileInfo fi;

                r = file_info_get(bus, files[k], &fi);
                if (r < 0)
                        return r;
                format_bytes_pair(bytes, sizeof bytes, fi.bytes_transferred, fi.bytes_total);
                printf("%-5zu %-9s %-21s %s %s\n", k, fi.completed > 0 ? "yes" : "no", bytes,
                       strempty(fi.remote), strempty(fi.local));
                file_info_done(&fi);
        }
        return 0;
}

static const struct {
        const char *name;
        char type;
} settable_properties[] = {
        { "DisplayName",                     's' },
        { "Description",                     's' },
        { "Priority",                        's' },
        { "NotifyFlags",                     'u' },
        { "MinimumRetryDelay",               'u' },
        { "NoProgressTimeout",               'u' },
        { "MaximumDownloadTime",             'u' },
        { "MinimumNotificationIntervalMsec", 'u' },
        { "SecurityFlags",                   'u' },
        { "HttpMethod",                      's' },
        { "HelperTokenFlags",                'u' },
        { "CostFlags",                       'u' },
        { "DynamicContent",                  'b' },
        { "HighPerformance",                 'b' },
        { "OnDemand",                        'b' },
        { "MaxDownloadSize",                 't' },
        { "ReplyFileName",                   's' },
};

static int job_set_property(sd_bus *bus, const char *path, const char *name, char type, const void *value) {
        _cleanup_(sd_bus_error_free) sd_bus_error error = SD_BUS_ERROR_NULL;
        char sig[2] = { type, 0 };
        int r;

        switch (type) {
        case 's':
                r = sd_bus_set_property(bus, BITS_SERVICE, path, BITS_JOB_INTERFACE, name, &error, sig,
                                        (const char *) value);
                break;
        case 'u':
                r = sd_bus_set_property(bus, BITS_SERVICE, path, BITS_JOB_INTERFACE, name, &error, sig,
                                        *(const uint32_t *) value);
                break;
        case 'b':
                r = sd_bus_set_property(bus, BITS_SERVICE, path, BITS_JOB_INTERFACE, name, &error, sig,
                                        *(const int *) value);
                break;
        case 't':
                r = sd_bus_set_property(bus, BITS_SERVICE, path, BITS_JOB_INTERFACE, name, &error, sig,
                                        *(const uint64_t *) value);
                break;
        default:
                return -EINVAL;
        }
        if (r < 0)
                return log_bus_error(&error, r, "Failed to set property");
        return 0;
}

static int verb_set(sd_bus *bus, int argc, char **argv) {
        _cleanup_free_ char *path = NULL, *local = NULL;
        const char *name = NULL, *value = argv[3];
        char type = 0;
        uint64_t t;
        uint32_t u;
        int b, r;
        const void *p;

        for (size_t k = 0; k < ELEMENTSOF(settable_properties); k++)
                if (strcasecmp(settable_properties[k].name, argv[2]) == 0) {
                        name = settable_properties[k].name;
                        type = settable_properties[k].type;
                        break;
                }
        if (!name) {
                fprintf(stderr, "bitsctl: '%s' is not a writable job property. Writable properties:\n", argv[2]);
                for (size_t k = 0; k < ELEMENTSOF(settable_properties); k++)
                        fprintf(stderr, "  %s\n", settable_properties[k].name);
                return EXIT_USAGE;
        }

        switch (type) {
        case 'u':
                if (parse_uint32(value, &u) < 0)
                        return log_usage("%s takes an unsigned 32-bit number, not '%s'.", name, value);
                p = &u;
                break;
        case 't':
                if (parse_uint64(value, &t) < 0)
                        return log_usage("%s takes an unsigned 64-bit number, not '%s'.", name, value);
                p = &t;
                break;
        case 'b':
                b = parse_boolean(value);
                if (b < 0)
                        return log_usage("%s takes a boolean (yes/no), not '%s'.", name, value);
                p = &b;
                break;
        default:
                if (streq(name, "ReplyFileName") && !isempty(value)) {
                        r = make_local_path(value, &local);
                        if (r < 0)
                                return log_bus_error(NULL, r, "Failed to make local path absolute");
                        value = local;
                }
                p = value;
        }

        r = resolve_job(bus, argv[1], &path);
        if (r < 0)
                return r;

        return job_set_property(bus, path, name, type, p);
}

/* Prints the local names of the files Complete() renamed into place. The file list is taken
 * before Complete: methods of a final job answer InvalidState, its properties stay readable. */
static int print_completed_files(sd_bus *bus, char **files) {
        int r;

        for (size_t k = 0; files[k]; k++) {
                FileInfo fi;

                r = file_info_get(bus, files[k], &fi);
                if (r < 0)
                        return r;
                if (fi.completed > 0)
                        printf("%s\n", strempty(fi.local));
                file_info_done(&fi);
        }
        return 0;
}

static int follow_and_finish(sd_bus *bus, const char *id, const char *path, bool complete) {
        _cleanup_(sd_bus_message_unrefp) sd_bus_message *reply = NULL;
        _cleanup_free_ char *state = NULL;
        const char *result;
        int r;

        r = follow_job(bus, path, arg_progress, &state);
        if (r == EXIT_INTERRUPTED) {
                fprintf(stderr, "bitsctl: job %s continues in the background; follow it with 'bitsctl info %s'",
                        id, id);
                if (complete)
                        fprintf(stderr, " and finish it with 'bitsctl complete %s' once transferred", id);
                fputs(".\n", stderr);
                return r;
        }
        if (r < 0) {
                fprintf(stderr, "bitsctl: job %s was left as it is.\n", id);
                return r;
        }

        if (streq(state, "error")) {
                (void) job_print_error(bus, path);
                fprintf(stderr, "bitsctl: job %s is in state 'error'; retry with 'bitsctl resume %s', "
                        "or remove it with 'bitsctl cancel %s'.\n", id, id, id);
                return -EIO;
        }

        if (job_state_is_final(state)) {
                fprintf(stderr, "bitsctl: job %s was %s by another client.\n", id, state);
                return complete || streq(state, "cancelled") ? -ECANCELED : 0;
        }

        /* transferred */
        if (!complete)
                return 0;

        _cleanup_strv_free_ char **files = NULL;
        r = job_list_files(bus, path, &files);
        if (r < 0)
                return r;
        r = job_call(bus, path, "Complete", &reply);
        if (r < 0) {
                fprintf(stderr, "bitsctl: job %s is transferred but not completed; retry with 'bitsctl complete %s'.\n",
                        id, id);
                return r;
        }
        r = sd_bus_message_read(reply, "s", &result);
        if (r < 0)
                return log_bus_error(NULL, r, "Failed to parse reply");
        if (streq(result, "partial"))
                fprintf(stderr, "bitsctl: warning: only some files were transferred (partial).\n");
        else if (streq(result, "unable-to-delete-files"))
                fprintf(stderr, "bitsctl: warning: some temporary files could not be deleted.\n");

        return print_completed_files(bus, files);
}

static int verb_transfer(sd_bus *bus, int argc, char **argv) {
        _cleanup_(sd_bus_error_free) sd_bus_error error = SD_BUS_ERROR_NULL;
        _cleanup_(sd_bus_message_unrefp) sd_bus_message *reply = NULL;
        _cleanup_strv_free_ char **pairs = NULL;
        _cleanup_free_ char *id = NULL, *path = NULL;
        size_t n = (size_t) argc - 1;
        const char *i, *p;
        int r;

        if (n % 2 != 0)
                return log_usage("transfer takes URL DEST pairs; '%s' has no DEST.", argv[argc - 1]);

        pairs = calloc(n + 1, sizeof(char *));
        if (!pairs)
                return log_bus_error(NULL, -ENOMEM, "Out of memory");
        for (size_t k = 0; k < n; k += 2) {
                pairs[k] = strdup(argv[1 + k]);
                if (!pairs[k])
                        return log_bus_error(NULL, -ENOMEM, "Out of memory");
                r = make_transfer_destination(argv[1 + k], argv[2 + k], &pairs[k + 1]);
                if (r == -EINVAL)
                        return EXIT_USAGE;
                if (r < 0)
                        return log_bus_error(NULL, r, "Failed to make local path absolute");
        }

        r = sd_bus_call_method(bus, BITS_SERVICE, BITS_MANAGER_PATH, BITS_MANAGER_INTERFACE, "CreateJob",
                               &error, &reply, "ss", arg_name ?: "bitsctl transfer", "download");
        if (r < 0)
                return log_bus_error(&error, r, "Failed to create job");
        r = sd_bus_message_read(reply, "so", &i, &p);
        if (r < 0)
                return log_bus_error(NULL, r, "Failed to parse reply");
        id = strdup(i);
        path = strdup(p);
        if (!id || !path)
                return log_bus_error(NULL, -ENOMEM, "Out of memory");

        if (arg_priority)
                r = job_set_property(bus, path, "Priority", 's', arg_priority);
        if (r >= 0) {
                if (n == 2) {
                        sd_bus_error_free(&error);
                        r = sd_bus_call_method(bus, BITS_SERVICE, path, BITS_JOB_INTERFACE, "AddFile", &error,
                                               NULL, "ss", pairs[0], pairs[1]);
                        if (r < 0)
                                r = log_bus_error(&error, r, "Failed to add file");
                } else
                        r = job_add_file_set(bus, path, pairs, n / 2);
        }
        if (r >= 0)
                r = job_call(bus, path, "Resume", NULL);
        if (r < 0) {
                /* Nothing was transferred yet: don't leave a half-built job behind. */
                (void) sd_bus_call_method(bus, BITS_SERVICE, path, BITS_JOB_INTERFACE, "Cancel", NULL, NULL, NULL);
                return r;
        }

        if (arg_progress)
                fprintf(stderr, "Job %s\n", id);

        return follow_and_finish(bus, id, path, /* complete= */ true);
}

static int verb_monitor(sd_bus *bus, int argc, char **argv) {
        _cleanup_free_ char *path = NULL, *id = NULL;
        int r;

        r = resolve_job(bus, argv[1], &path);
        if (r < 0)
                return r;

        r = get_property_string(bus, path, BITS_JOB_INTERFACE, "Id", &id);
        if (r < 0)
                return r;

        return follow_and_finish(bus, id, path, /* complete= */ false);
}

/* ---- command line --------------------------------------------------------------------------- */

static void help(void) {
        printf("bitsctl [OPTIONS...] COMMAND ...\n\n"
               "Control bitsd, the background intelligent transfer service.\n\n"
               "Commands:\n"
               "  create [--type=TYPE] NAME             Create a job, print its id\n"
               "  add JOB REMOTE LOCAL                  Add a file to a job\n"
               "  addset JOB REMOTE LOCAL [REMOTE LOCAL...]\n"
               "                                        Add files to a job, all or none\n"
               "  resume JOB                            Start or restart transferring\n"
               "  suspend JOB                           Stop transferring\n"
               "  cancel JOB                            Cancel a job, delete its temporary files\n"
               "  complete JOB                          Move the transferred files into place\n"
               "  list [--all-users]                    List jobs\n"
               "  info JOB                              Show a job's properties and files\n"
               "  files JOB                             List a job's files\n"
               "  set JOB PROPERTY VALUE                Change a job property\n"
               "  transfer [--priority=P] [--name=N] [--no-progress] URL DEST [URL DEST...]\n"
               "                                        Download, wait, complete, print the paths\n"
               "  monitor [--no-progress] JOB           Follow a job until transferred or failed\n\n"
               "JOB is a job id (UUID, {UUID} or 32 hex digits) or a job object path.\n\n"
               "Options:\n"
               "  -h --help                Show this help\n"
               "     --version             Show package version\n"
               "     --address=ADDRESS     Connect to the bus at ADDRESS\n"
               "     --type=TYPE           Job type: download, upload, upload-reply\n"
               "     --all-users           List the jobs of all users\n"
               "     --priority=PRIORITY   foreground, high, normal, low\n"
               "     --name=NAME           Display name of the transfer job\n"
               "     --no-progress         Do not show progress\n\n"
               "See the bitsctl(1) man page for details.\n");
}

enum {
        ARG_VERSION = 0x100,
        ARG_ADDRESS,
        ARG_TYPE,
        ARG_ALL_USERS,
        ARG_PRIORITY,
        ARG_NAME,
        ARG_NO_PROGRESS,
};

/* Which command options each verb accepts. */
#define OPT(x) (1u << ((x) - ARG_TYPE))

typedef struct Verb {
        const char *name;
        int min_args;   /* including the verb */
        int max_args;   /* INT_MAX for "any" */
        unsigned options;
        int (*run)(sd_bus *bus, int argc, char **argv);
        const char *usage;
} Verb;

static const Verb verbs[] = {
        { "create",   2, 2,       OPT(ARG_TYPE),      verb_create,   "create [--type=TYPE] NAME"                   },
        { "add",      4, 4,       0,                  verb_add,      "add JOB REMOTE LOCAL"                        },
        { "addset",   4, INT_MAX, 0,                  verb_addset,   "addset JOB REMOTE LOCAL [REMOTE LOCAL...]"   },
        { "resume",   2, 2,       0,                  verb_simple,   "resume JOB"                                  },
        { "suspend",  2, 2,       0,                  verb_simple,   "suspend JOB"                                 },
        { "cancel",   2, 2,       0,                  verb_simple,   "cancel JOB"                                  },
        { "complete", 2, 2,       0,                  verb_complete, "complete JOB"                                },
        { "list",     1, 1,       OPT(ARG_ALL_USERS), verb_list,     "list [--all-users]"                          },
        { "info",     2, 2,       0,                  verb_info,     "info JOB"                                    },
        { "files",    2, 2,       0,                  verb_files,    "files JOB"                                   },
        { "set",      4, 4,       0,                  verb_set,      "set JOB PROPERTY VALUE"                      },
        { "transfer", 3, INT_MAX, OPT(ARG_PRIORITY) | OPT(ARG_NAME) | OPT(ARG_NO_PROGRESS),
          verb_transfer, "transfer [--priority=P] [--name=N] [--no-progress] URL DEST [URL DEST...]" },
        { "monitor",  2, 2,       OPT(ARG_NO_PROGRESS), verb_monitor, "monitor [--no-progress] JOB"            },
};

static const char *option_name(int o) {
        switch (o) {
        case ARG_TYPE:        return "--type";
        case ARG_ALL_USERS:   return "--all-users";
        case ARG_PRIORITY:    return "--priority";
        case ARG_NAME:        return "--name";
        case ARG_NO_PROGRESS: return "--no-progress";
        default:              return "?";
        }
}

static int parse_argv(int argc, char *argv[], unsigned *ret_options) {
        static const struct option options[] = {
                { "help",        no_argument,       NULL, 'h'             },
                { "version",     no_argument,       NULL, ARG_VERSION     },
                { "address",     required_argument, NULL, ARG_ADDRESS     },
                { "type",        required_argument, NULL, ARG_TYPE        },
                { "all-users",   no_argument,       NULL, ARG_ALL_USERS   },
                { "priority",    required_argument, NULL, ARG_PRIORITY    },
                { "name",        required_argument, NULL, ARG_NAME        },
                { "no-progress", no_argument,       NULL, ARG_NO_PROGRESS },
                {}
        };
        unsigned seen = 0;
        int c;

        /* Options may follow the command (GNU permutation), e.g. "bitsctl create --type=upload X". */
        opterr = 0;
        while ((c = getopt_long(argc, argv, ":h", options, NULL)) >= 0)
                switch (c) {
                case 'h':
                        help();
                        return 0;
                case ARG_VERSION:
                        printf("bitsctl %s\n", PACKAGE_VERSION);
                        return 0;
                case ARG_ADDRESS:
                        arg_address = optarg;
                        break;
                case ARG_TYPE:
                        arg_type = optarg;
                        seen |= OPT(c);
                        break;
                case ARG_ALL_USERS:
                        arg_all_users = true;
                        seen |= OPT(c);
                        break;
                case ARG_PRIORITY:
                        arg_priority = optarg;
                        seen |= OPT(c);
                        break;
                case ARG_NAME:
                        arg_name = optarg;
                        seen |= OPT(c);
                        break;
                case ARG_NO_PROGRESS:
                        arg_progress = false;
                        seen |= OPT(c);
                        break;
                case ':':
                        return -log_usage("option '%s' requires an argument.", argv[optind - 1]);
                case '?':
                        if (optopt != 0)
                                return -log_usage("unknown option '-%c'%s.", optopt,
                                                  isdigit(optopt) ? " (put '--' before a negative value)" : "");
                        return -log_usage("unknown option '%s'.", argv[optind - 1]);
                default:
                        return -log_usage("unexpected option.");
                }

        *ret_options = seen;
        return 1;
}

int main(int argc, char *argv[]) {
        _cleanup_(sd_bus_flush_close_unrefp) sd_bus *bus = NULL;
        const Verb *verb = NULL;
        unsigned options = 0;
        int r, n;

        r = parse_argv(argc, argv, &options);
        if (r < 0)
                return EXIT_USAGE;
        if (r == 0)
                return EXIT_SUCCESS;

        n = argc - optind;
        if (n <= 0)
                return log_usage("missing command.");

        if (streq(argv[optind], "help")) {
                help();
                return EXIT_SUCCESS;
        }

        for (size_t k = 0; k < ELEMENTSOF(verbs); k++)
                if (streq(verbs[k].name, argv[optind])) {
                        verb = &verbs[k];
                        break;
                }
        if (!verb)
                return log_usage("unknown command '%s'.", argv[optind]);

        for (int o = ARG_TYPE; o <= ARG_NO_PROGRESS; o++)
                if ((options & OPT(o)) && !(verb->options & OPT(o)))
                        return log_usage("option '%s' does not apply to '%s'.", option_name(o), verb->name);

        if (n < verb->min_args)
                return log_usage("too few arguments. Usage: bitsctl %s", verb->usage);
        if (n > verb->max_args)
                return log_usage("too many arguments. Usage: bitsctl %s", verb->usage);

        r = bus_connect(&bus);
        if (r < 0)
                return EXIT_FAILURE;

        r = verb->run(bus, n, argv + optind);
        fflush(stdout);
        if (r < 0)
                return EXIT_FAILURE;
        return r;
}
