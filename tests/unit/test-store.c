/* SPDX-License-Identifier: LGPL-2.1-or-later */
#include <sqlite3.h>

#include "store.h"
#include "tests.h"

static char dir[] = "/tmp/test-store-XXXXXX";
static char path[256];
static Job *loaded[8];
static unsigned n_loaded;

static int collect(Job *j, void *userdata) {
        if (n_loaded >= 8) {
                job_free(j);
                return -E2BIG;
        }
        loaded[n_loaded++] = j;
        return 0;
}

static void unload(void) {
        for (unsigned i = 0; i < n_loaded; i++)
                job_free(loaded[i]);
        n_loaded = 0;
}

static void test_roundtrip(void) {
        Store *s = NULL;
        Job *j = job_new("0123abcd-89ab-4def-8123-456789abcdef", JOB_DOWNLOAD, 4001, 111);
        BitsFile *f = bits_file_new("http://x/a b", "/tmp/a", "/tmp/.BITA.TMP");

        CHECK_EQ_INT(store_open(path, &s), 0);
        free(j->display_name);
        j->display_name = strdup("nightly 'image'; DROP TABLE jobs;--");
        j->state = JOB_TRANSIENT_ERROR;
        j->priority = JOB_PRIORITY_LOW;
        j->error_count = 3;
        j->retry_time = 999;
        CHECK_EQ_INT(job_set_error(j, ERROR_CONTEXT_TRANSPORT, "curl:COULDNT_CONNECT", "http", 0, "refused"), 0);
        job_append_files(j, &f, 1);
        f->bytes_total = UINT64_MAX;
        f->bytes_transferred = 4096;
        f->bytes_checkpoint = 1024; /* only the durable count is stored */
        f->validator = strdup("\"etag-1\"");
        /* Empty entries and spaces survive (argv is stored NUL-separated). */
        j->notify_program = strdup("/usr/local/bin/on job done");
        j->notify_argv = calloc(5, sizeof(char *));
        j->notify_argv[0] = strdup("on-done");
        j->notify_argv[1] = strdup("");
        j->notify_argv[2] = strdup("--job=0123 'x'");
        j->notify_argv[3] = strdup("");
        j->notify_uid = 4001;
        j->helper_token_flags = 0x3;

        CHECK_EQ_INT(store_begin(s), 0);
        CHECK_EQ_INT(store_save_job(s, j), 0);
        CHECK_EQ_INT(store_save_file(s, f), 0);
        CHECK_EQ_INT(store_commit(s), 0);

        /* A rolled-back change leaves no trace. */
        CHECK_EQ_INT(store_begin(s), 0);
        j->state = JOB_ERROR;
        CHECK_EQ_INT(store_save_job(s, j), 0);
        store_rollback(s);
        store_free(s);

        s = NULL;
        CHECK_EQ_INT(store_open(path, &s), 0);
        CHECK_EQ_INT(store_load(s, collect, NULL), 1);
        CHECK_EQ_INT(n_loaded, 1);
        Job *k = loaded[0];
        CHECK_STREQ(k->id, j->id);
        CHECK_STREQ(k->display_name, "nightly 'image'; DROP TABLE jobs;--");
        CHECK_EQ_INT(k->state, JOB_TRANSIENT_ERROR);
        CHECK_EQ_INT(k->priority, JOB_PRIORITY_LOW);
        CHECK_EQ_INT(k->owner, 4001);
        CHECK_EQ_INT(k->creation_time, 111);
        CHECK_EQ_INT(k->error_count, 3);
        CHECK_EQ_INT(k->retry_time, 999);
        CHECK_STREQ(k->error.code, "curl:COULDNT_CONNECT");
        CHECK_EQ_INT(k->error.context, ERROR_CONTEXT_TRANSPORT);
        CHECK_EQ_INT(k->n_files, 1);
        CHECK_STREQ(k->files[0]->remote_name, "http://x/a b");
        CHECK(k->files[0]->bytes_total == UINT64_MAX);
        CHECK_EQ_INT(k->files[0]->bytes_transferred, 1024);
        CHECK_STREQ(k->files[0]->validator, "\"etag-1\"");
        CHECK_STREQ(k->notify_program, "/usr/local/bin/on job done");
        CHECK_STREQ(k->notify_argv[0], "on-done");
        CHECK_STREQ(k->notify_argv[1], "");
        CHECK_STREQ(k->notify_argv[2], "--job=0123 'x'");
        CHECK_STREQ(k->notify_argv[3], "");
        CHECK(k->notify_argv[4] == NULL);
        CHECK_EQ_INT(k->notify_uid, 4001);
        CHECK_EQ_INT(k->helper_token_flags, 0x3);
        unload();

        CHECK_EQ_INT(store_begin(s), 0);
        CHECK_EQ_INT(store_delete_job(s, j->id), 0);
        CHECK_EQ_INT(store_commit(s), 0);
        CHECK_EQ_INT(store_load(s, collect, NULL), 0);
        store_free(s);
        job_free(j);
}

/* The v1 schema as released, with one job in it. */
static const char v1_sql[] =
        "CREATE TABLE jobs (id TEXT PRIMARY KEY NOT NULL, type TEXT NOT NULL, state TEXT NOT NULL,"
        " owner INTEGER NOT NULL, display_name TEXT NOT NULL, description TEXT NOT NULL, priority TEXT NOT NULL,"
        " notify_flags INTEGER NOT NULL, minimum_retry_delay INTEGER NOT NULL, no_progress_timeout INTEGER NOT NULL,"
        " maximum_download_time INTEGER NOT NULL, notify_interval_msec INTEGER NOT NULL, creation_time INTEGER NOT NULL,"
        " modification_time INTEGER NOT NULL, transfer_completion_time INTEGER NOT NULL, error_count INTEGER NOT NULL,"
        " error_context TEXT NOT NULL, error_code TEXT, error_message TEXT, error_protocol TEXT, error_file INTEGER NOT NULL,"
        " no_progress_since INTEGER NOT NULL, retry_time INTEGER NOT NULL, active_usec INTEGER NOT NULL) WITHOUT ROWID;"
        "CREATE TABLE files (job_id TEXT NOT NULL, idx INTEGER NOT NULL, remote_name TEXT NOT NULL,"
        " local_name TEXT NOT NULL, temp_name TEXT NOT NULL, bytes_total INTEGER NOT NULL,"
        " bytes_transferred INTEGER NOT NULL, completed INTEGER NOT NULL, temp_created INTEGER NOT NULL,"
        " validator TEXT, PRIMARY KEY (job_id, idx)) WITHOUT ROWID;"
        "INSERT INTO jobs VALUES ('11111111-2222-4333-8444-555555555555', 'download', 'suspended', 4002, 'old', '',"
        " 'normal', 3, 600, 1209600, 7776000, 500, 222, 333, 0, 0, 'none', NULL, NULL, NULL, -1, 0, 0, 0);"
        "PRAGMA user_version = 1;";

static void test_migration_v1(void) {
        char p[300];
        sqlite3 *db;
        Store *s = NULL;

        snprintf(p, sizeof(p), "%s/v1.db", dir);
        CHECK_EQ_INT(sqlite3_open(p, &db), SQLITE_OK);
        CHECK_EQ_INT(sqlite3_exec(db, v1_sql, NULL, NULL, NULL), SQLITE_OK);
        sqlite3_close(db);

        CHECK_EQ_INT(store_open(p, &s), 0);
        CHECK_EQ_INT(store_load(s, collect, NULL), 1);
        Job *k = loaded[0];
        CHECK_STREQ(k->id, "11111111-2222-4333-8444-555555555555");
        CHECK_EQ_INT(k->owner, 4002);
        CHECK_STREQ(k->display_name, "old");
        CHECK(isempty(k->notify_program));
        CHECK(!k->notify_argv || !k->notify_argv[0]);

        /* The migrated table takes the new columns. */
        k->notify_program = strdup("/usr/bin/true");
        k->notify_argv = calloc(2, sizeof(char *));
        k->notify_argv[0] = strdup("true");
        k->notify_uid = 4002;
        k->helper_token_flags = 0x1;
        CHECK_EQ_INT(store_begin(s), 0);
        CHECK_EQ_INT(store_save_job(s, k), 0);
        CHECK_EQ_INT(store_commit(s), 0);
        unload();
        store_free(s);

        s = NULL;
        CHECK_EQ_INT(store_open(p, &s), 0);
        CHECK_EQ_INT(store_load(s, collect, NULL), 1);
        CHECK_STREQ(loaded[0]->notify_program, "/usr/bin/true");
        CHECK_STREQ(loaded[0]->notify_argv[0], "true");
        CHECK(loaded[0]->notify_argv[1] == NULL);
        CHECK_EQ_INT(loaded[0]->notify_uid, 4002);
        CHECK_EQ_INT(loaded[0]->helper_token_flags, 0x1);
        unload();
        store_free(s);

        CHECK_EQ_INT(sqlite3_open(p, &db), SQLITE_OK);
        sqlite3_stmt *st;
        CHECK_EQ_INT(sqlite3_prepare_v2(db, "PRAGMA user_version", -1, &st, NULL), SQLITE_OK);
        CHECK_EQ_INT(sqlite3_step(st), SQLITE_ROW);
        CHECK_EQ_INT(sqlite3_column_int(st, 0), STORE_SCHEMA_VERSION);
        sqlite3_finalize(st);
        sqlite3_close(db);
}

static void test_newer_schema_refused(void) {
        sqlite3 *db;
        Store *s = NULL;

        CHECK_EQ_INT(sqlite3_open(path, &db), SQLITE_OK);
        CHECK_EQ_INT(sqlite3_exec(db, "PRAGMA user_version = 99", NULL, NULL, NULL), SQLITE_OK);
        sqlite3_close(db);
        CHECK_EQ_INT(store_open(path, &s), -EPROTONOSUPPORT);
        CHECK(s == NULL);
}

static void test_corrupt_detected(void) {
        char p[300];
        Store *s = NULL;
        snprintf(p, sizeof(p), "%s/garbage.db", dir);
        FILE *f = fopen(p, "we");
        for (int i = 0; i < 4096; i++)
                fputs("this is not a database ", f);
        fclose(f);
        CHECK_EQ_INT(store_open(p, &s), -EBADMSG);
}

int main(void) {
        if (!mkdtemp(dir))
                return EXIT_FAILURE;
        snprintf(path, sizeof(path), "%s/bitsd.db", dir);
        test_roundtrip();
        test_migration_v1();
        test_newer_schema_refused();
        test_corrupt_detected();
        char cmd[300];
        snprintf(cmd, sizeof(cmd), "rm -rf '%s'", dir);
        (void) system(cmd);
        return tests_finish("test-store");
}
