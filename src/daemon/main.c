/* SPDX-License-Identifier: LGPL-2.1-or-later */
#include <curl/curl.h>
#include <getopt.h>
#include <sys/stat.h>

#include "log.h"
#include "manager.h"

static void help(void) {
        printf("bitsd [OPTIONS...]\n\n"
               "Background Intelligent Transfer Service daemon.\n\n"
               "  -h --help               Show this help\n"
               "     --version            Show the version\n"
               "     --bus-address=ADDR   Connect to this bus instead of the system bus\n"
               "     --state-dir=DIR      Keep the job database here (default: %s)\n"
               "     --config=FILE        Read this configuration (default: %s)\n"
               "     --log-level=LEVEL    err, warning, notice, info or debug\n",
               BITSD_STATE_DIR, BITSD_CONFIG_FILE);
}

static int parse_argv(int argc, char *argv[], Manager *m) {
        enum { ARG_VERSION = 0x100, ARG_BUS_ADDRESS, ARG_STATE_DIR, ARG_CONFIG, ARG_LOG_LEVEL };
        static const struct option options[] = {
                { "help", no_argument, NULL, 'h' },
                { "version", no_argument, NULL, ARG_VERSION },
                { "bus-address", required_argument, NULL, ARG_BUS_ADDRESS },
                { "state-dir", required_argument, NULL, ARG_STATE_DIR },
                { "config", required_argument, NULL, ARG_CONFIG },
                { "log-level", required_argument, NULL, ARG_LOG_LEVEL },
                {}
        };
        int c, l;

        while ((c = getopt_long(argc, argv, "h", options, NULL)) >= 0)
                switch (c) {
                case 'h':
                        help();
                        return 0;
                case ARG_VERSION:
                        printf("bitsd %s\n", PACKAGE_VERSION);
                        return 0;
                case ARG_BUS_ADDRESS:
                        if (free_and_strdup(&m->bus_address, optarg) < 0)
                                return log_oom();
                        break;
                case ARG_STATE_DIR:
                        if (optarg[0] != '/')
                                return log_error_errno(EINVAL, "--state-dir= needs an absolute path, not '%s'.", optarg);
                        if (free_and_strdup(&m->state_dir, optarg) < 0)
                                return log_oom();
                        break;
                case ARG_CONFIG:
                        if (free_and_strdup(&m->config_path, optarg) < 0)
                                return log_oom();
                        break;
                case ARG_LOG_LEVEL:
                        l = log_level_from_string(optarg);
                        if (l < 0)
                                return log_error_errno(EINVAL, "Unknown log level '%s'.", optarg);
                        log_set_max_level(l);
                        break;
                case '?':
                        return -EINVAL;
                default:
                        return -EINVAL;
                }
        if (optind < argc)
                return log_error_errno(EINVAL, "Unexpected argument '%s'.", argv[optind]);
        return 1;
}

int main(int argc, char *argv[]) {
        _cleanup_(manager_freep) Manager *m = NULL;
        int r;

        umask(0077);
        r = manager_new(&m);
        if (r < 0) {
                log_error_errno(r, "Cannot allocate the manager: %m");
                return EXIT_FAILURE;
        }
        r = parse_argv(argc, argv, m);
        if (r <= 0)
                return r < 0 ? EXIT_FAILURE : EXIT_SUCCESS;

        /* Without --bus-address, DBUS_SYSTEM_BUS_ADDRESS (read by sd-bus) or the system bus. */
        if (!m->state_dir && free_and_strdup(&m->state_dir, getenv("STATE_DIRECTORY") ?: BITSD_STATE_DIR) < 0)
                return EXIT_FAILURE;

        if (curl_global_init(CURL_GLOBAL_DEFAULT) != CURLE_OK) {
                log_error("Cannot initialize libcurl.");
                return EXIT_FAILURE;
        }

        r = manager_startup(m);
        if (r >= 0) {
                log_info("bitsd %s running.", PACKAGE_VERSION);
                r = manager_run(m);
        }
        m = manager_free(m);
        curl_global_cleanup();
        return r < 0 ? EXIT_FAILURE : EXIT_SUCCESS;
}
