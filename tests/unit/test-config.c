/* SPDX-License-Identifier: LGPL-2.1-or-later */
#include <sys/stat.h>

#include "config.h"
#include "macro.h"
#include "tests.h"

static char dir[] = "/tmp/test-config-XXXXXX";

static void write_file(const char *name, const char *text) {
        char path[256];
        snprintf(path, sizeof(path), "%s/%s", dir, name);
        FILE *f = fopen(path, "we");
        fputs(text, f);
        fclose(f);
}

int main(void) {
        Config c;
        char path[256], d[256];

        if (!mkdtemp(dir))
                return EXIT_FAILURE;
        snprintf(path, sizeof(path), "%s/bitsd.conf", dir);
        snprintf(d, sizeof(d), "%s/bitsd.conf.d", dir);

        config_init(&c);
        CHECK_EQ_INT(c.max_jobs_per_user, 60);
        CHECK_EQ_INT(c.max_jobs_per_machine, 300);
        CHECK_EQ_INT(c.max_files_per_job, 200);
        CHECK_EQ_INT(c.max_ranges_per_file, 500);
        CHECK_EQ_INT(c.final_job_retention_sec, 600);
        CHECK_EQ_INT(c.notify_cmdline_timeout_sec, 300);

        /* A missing optional file is fine, a missing explicit one is not. */
        CHECK_EQ_INT(config_load(&c, path, true), 0);
        CHECK(config_load(&c, path, false) < 0);

        write_file("bitsd.conf", "# comment\n[Daemon]\nMaxJobsPerUser = 5\nFinalJobRetentionSec=2\n"
                                 "RequireOwnerSession=no\nSomethingNew=1\n[Other]\nMaxJobsPerUser=77\n");
        mkdir(d, 0755);
        write_file("bitsd.conf.d/20-b.conf", "[Daemon]\nMaxFilesPerJob=9\n");
        write_file("bitsd.conf.d/10-a.conf", "[Daemon]\nMaxFilesPerJob=3\nMaxJobsPerMachine=50\n");
        write_file("bitsd.conf.d/ignored.txt", "[Daemon]\nMaxJobsPerMachine=1\n");
        config_init(&c);
        CHECK_EQ_INT(config_load(&c, path, false), 0);
        CHECK_EQ_INT(c.max_jobs_per_user, 5);       /* [Other] is not [Daemon] */
        CHECK_EQ_INT(c.final_job_retention_sec, 2);
        CHECK(!c.require_owner_session);
        CHECK_EQ_INT(c.max_files_per_job, 9);       /* drop-ins in lexical order, last wins */
        CHECK_EQ_INT(c.max_jobs_per_machine, 50);

        /* Malformed values are errors. */
        write_file("bitsd.conf", "[Daemon]\nMaxJobsPerUser=lots\n");
        config_init(&c);
        CHECK(config_parse_file(&c, path, false) < 0);
        write_file("bitsd.conf", "[Daemon]\nMaxJobsPerUser=0\n");
        CHECK(config_parse_file(&c, path, false) < 0);
        write_file("bitsd.conf", "[Daemon]\nMaxJobsPerUser=99999999999\n");
        CHECK(config_parse_file(&c, path, false) < 0);
        write_file("bitsd.conf", "[Daemon]\nRequireOwnerSession=maybe\n");
        CHECK(config_parse_file(&c, path, false) < 0);
        write_file("bitsd.conf", "[Daemon]\njust words\n");
        CHECK(config_parse_file(&c, path, false) < 0);

        char cmd[300];
        snprintf(cmd, sizeof(cmd), "rm -rf '%s'", dir);
        (void) system(cmd);
        return tests_finish("test-config");
}
