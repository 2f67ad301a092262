/* SPDX-License-Identifier: LGPL-2.1-or-later */
#include <sqlite3.h>

#include "log.h"
#include "store.h"

enum {
        STMT_BEGIN,
        STMT_COMMIT,
        STMT_SYNC_NORMAL,
        STMT_SYNC_FULL,
        STMT_ROLLBACK,
        STMT_SAVE_JOB,
        STMT_SAVE_FILE,
        STMT_DELETE_JOB,
        STMT_DELETE_FILES,
        _STMT_MAX,
};

struct Store {
        sqlite3 *db;
        sqlite3_stmt *stmt[_STMT_MAX];
};

static const char *const stmt_sql[_STMT_MAX] = {
        [STMT_BEGIN] = "BEGIN IMMEDIATE",
        [STMT_COMMIT] = "COMMIT",
        [STMT_SYNC_NORMAL] = "PRAGMA synchronous=NORMAL",
        [STMT_SYNC_FULL] = "PRAGMA synchronous=FULL",
        [STMT_ROLLBACK] = "ROLLBACK",
        [STMT_SAVE_JOB] =
                "INSERT OR REPLACE INTO jobs (id, type, state, owner, display_name, description, priority,"
                " notify_flags, minimum_retry_delay, no_progress_timeout, maximum_download_time,"
                " notify_interval_msec, creation_time, modification_time, transfer_completion_time,"
                " error_count, error_context, error_code, error_message, error_protocol, error_file,"
                " no_progress_since, retry_time, active_usec, notify_program, notify_argv, notify_uid,"
                " helper_token_flags)"
                " VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12, ?13, ?14, ?15, ?16, ?17, ?18,"
                " ?19, ?20, ?21, ?22, ?23, ?24, ?25, ?26, ?27, ?28)",
        [STMT_SAVE_FILE] =
                "INSERT OR REPLACE INTO files (job_id, idx, remote_name, local_name, temp_name, bytes_total,"
                " bytes_transferred, completed, temp_created, validator)"
                " VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10)",
        [STMT_DELETE_JOB] = "DELETE FROM jobs WHERE id = ?1",
        [STMT_DELETE_FILES] = "DELETE FROM files WHERE job_id = ?1",
};

/* The migration ladder: entry N brings the schema from version N to N+1. */
static const char *const migrations[] = {
        "CREATE TABLE jobs ("
        " id TEXT PRIMARY KEY NOT NULL,"
        " type TEXT NOT NULL,"
        " state TEXT NOT NULL,"
        " owner INTEGER NOT NULL,"
        " display_name TEXT NOT NULL,"
        " description TEXT NOT NULL,"
        " priority TEXT NOT NULL,"
        " notify_flags INTEGER NOT NULL,"
        " minimum_retry_delay INTEGER NOT NULL,"
        " no_progress_timeout INTEGER NOT NULL,"
        " maximum_download_time INTEGER NOT NULL,"
        " notify_interval_msec INTEGER NOT NULL,"
        " creation_time INTEGER NOT NULL,"
        " modification_time INTEGER NOT NULL,"
        " transfer_completion_time INTEGER NOT NULL,"
        " error_count INTEGER NOT NULL,"
        " error_context TEXT NOT NULL,"
        " error_code TEXT,"
        " error_message TEXT,"
        " error_protocol TEXT,"
        " error_file INTEGER NOT NULL,"
        " no_progress_since INTEGER NOT NULL,"
        " retry_time INTEGER NOT NULL,"
        " active_usec INTEGER NOT NULL"
        ") WITHOUT ROWID;"
        "CREATE TABLE files ("
        " job_id TEXT NOT NULL,"
        " idx INTEGER NOT NULL,"
        " remote_name TEXT NOT NULL,"
        " local_name TEXT NOT NULL,"
        " temp_name TEXT NOT NULL,"
        " bytes_total INTEGER NOT NULL,"
        " bytes_transferred INTEGER NOT NULL,"
        " completed INTEGER NOT NULL,"
        " temp_created INTEGER NOT NULL,"
        " validator TEXT,"
        " PRIMARY KEY (job_id, idx)"
        ") WITHOUT ROWID;",
        /* v1 -> v2: the notify command line (SetNotifyCmdLine); argv is its entries, each
         * followed by a NUL byte (D-Bus strings cannot contain one). */
        "ALTER TABLE jobs ADD COLUMN notify_program TEXT NOT NULL DEFAULT '';"
        "ALTER TABLE jobs ADD COLUMN notify_argv BLOB;"
        "ALTER TABLE jobs ADD COLUMN notify_uid INTEGER NOT NULL DEFAULT 0;",
        /* v2 -> v3: HelperTokenFlags (the token itself is never stored) */
        "ALTER TABLE jobs ADD COLUMN helper_token_flags INTEGER NOT NULL DEFAULT 0;",
};

const char *store_last_error(Store *s) {
        return s && s->db ? sqlite3_errmsg(s->db) : "no database";
}

static int sqlite_to_errno(int rc) {
        switch (rc & 0xff) {
        case SQLITE_OK:
        case SQLITE_DONE:
        case SQLITE_ROW:
                return 0;
        case SQLITE_NOMEM:
                return -ENOMEM;
        case SQLITE_FULL:
                return -ENOSPC;
        case SQLITE_READONLY:
        case SQLITE_PERM:
        case SQLITE_AUTH:
                return -EACCES;
        case SQLITE_BUSY:
        case SQLITE_LOCKED:
                return -EBUSY;
        case SQLITE_CORRUPT:
        case SQLITE_NOTADB:
                return -EBADMSG;
        case SQLITE_CANTOPEN:
                return -ENOENT;
        default:
                return -EIO;
        }
}

static int exec_sql(Store *s, const char *sql) {
        char *err = NULL;
        int rc = sqlite3_exec(s->db, sql, NULL, NULL, &err);
        if (rc != SQLITE_OK) {
                log_error("Database statement failed: %s", err ?: sqlite3_errstr(rc));
                sqlite3_free(err);
                return sqlite_to_errno(rc);
        }
        return 0;
}

static int get_user_version(Store *s, int *ret) {
        sqlite3_stmt *st;
        int rc = sqlite3_prepare_v2(s->db, "PRAGMA user_version", -1, &st, NULL);
        if (rc != SQLITE_OK)
                return sqlite_to_errno(rc);
        rc = sqlite3_step(st);
        *ret = rc == SQLITE_ROW ? sqlite3_column_int(st, 0) : 0;
        sqlite3_finalize(st);
        return rc == SQLITE_ROW ? 0 : sqlite_to_errno(rc);
}

static int migrate(Store *s) {
        int version, r;

        r = get_user_version(s, &version);
        if (r < 0)
                return r;
        if (version > STORE_SCHEMA_VERSION) {
                log_error("Database schema version %d is newer than this bitsd knows (%d), refusing to touch it.",
                          version, STORE_SCHEMA_VERSION);
                return -EPROTONOSUPPORT;
        }
        if (version == STORE_SCHEMA_VERSION)
                return 0;

        r = exec_sql(s, "BEGIN IMMEDIATE");
        if (r < 0)
                return r;
        for (int v = version; v < STORE_SCHEMA_VERSION; v++) {
                r = exec_sql(s, migrations[v]);
                if (r < 0) {
                        (void) exec_sql(s, "ROLLBACK");
                        return r;
                }
        }
        char pragma[64];
        snprintf(pragma, sizeof(pragma), "PRAGMA user_version = %d", STORE_SCHEMA_VERSION);
        r = exec_sql(s, pragma);
        if (r >= 0)
                r = exec_sql(s, "COMMIT");
        if (r < 0)
                (void) exec_sql(s, "ROLLBACK");
        if (r >= 0 && version > 0)
                log_info("Database migrated from schema version %d to %d.", version, STORE_SCHEMA_VERSION);
        return r;
}

int store_open(const char *path, Store **ret) {
        _cleanup_(store_freep) Store *s = calloc(1, sizeof(Store));
        int rc, r;

        if (!s)
                return -ENOMEM;
        rc = sqlite3_open_v2(path, &s->db,
                             SQLITE_OPEN_READWRITE | SQLITE_OPEN_CREATE | SQLITE_OPEN_NOMUTEX | SQLITE_OPEN_NOFOLLOW,
                             NULL);
        if (rc != SQLITE_OK) {
                log_error("Cannot open database '%s': %s", path, s->db ? sqlite3_errmsg(s->db) : sqlite3_errstr(rc));
                return sqlite_to_errno(rc);
        }
        sqlite3_extended_result_codes(s->db, 1);
        (void) sqlite3_busy_timeout(s->db, 5000);

        /* Durable commits: WAL with synchronous=FULL fsyncs the log at every commit. The
         * quick_check finds a damaged file before any job is trusted. */
        r = exec_sql(s, "PRAGMA journal_mode=WAL");
        if (r >= 0)
                r = exec_sql(s, "PRAGMA synchronous=FULL");
        if (r >= 0)
                r = exec_sql(s, "PRAGMA foreign_keys=OFF");
        if (r < 0)
                return r;

        sqlite3_stmt *check;
        rc = sqlite3_prepare_v2(s->db, "PRAGMA quick_check", -1, &check, NULL);
        if (rc != SQLITE_OK)
                return sqlite_to_errno(rc) ?: -EBADMSG;
        rc = sqlite3_step(check);
        bool ok = rc == SQLITE_ROW && streq_ptr((const char *) sqlite3_column_text(check, 0), "ok");
        sqlite3_finalize(check);
        if (!ok)
                return -EBADMSG;

        r = migrate(s);
        if (r < 0)
                return r;

        for (size_t i = 0; i < _STMT_MAX; i++) {
                rc = sqlite3_prepare_v3(s->db, stmt_sql[i], -1, SQLITE_PREPARE_PERSISTENT, &s->stmt[i], NULL);
                if (rc != SQLITE_OK) {
                        log_error("Cannot prepare statement: %s", sqlite3_errmsg(s->db));
                        return sqlite_to_errno(rc);
                }
        }

        *ret = TAKE_PTR(s);
        return 0;
}

Store *store_free(Store *s) {
        if (!s)
                return NULL;
        for (size_t i = 0; i < _STMT_MAX; i++)
                sqlite3_finalize(s->stmt[i]);
        sqlite3_close(s->db);
        return mfree(s);
}

static int step_done(Store *s, sqlite3_stmt *st) {
        int rc = sqlite3_step(st);
        while (rc == SQLITE_ROW) /* a PRAGMA may answer with its value */
                rc = sqlite3_step(st);
        sqlite3_reset(st);
        sqlite3_clear_bindings(st);
        if (rc != SQLITE_DONE) {
                log_error("Database write failed: %s", sqlite3_errmsg(s->db));
                return sqlite_to_errno(rc) ?: -EIO;
        }
        return 0;
}

int store_begin(Store *s) {
        return step_done(s, s->stmt[STMT_BEGIN]);
}

int store_commit(Store *s) {
        int r = step_done(s, s->stmt[STMT_COMMIT]);
        if (r < 0)
                store_rollback(s);
        return r;
}

int store_begin_progress(Store *s) {
        int r = step_done(s, s->stmt[STMT_SYNC_NORMAL]);
        if (r < 0)
                return r;
        r = store_begin(s);
        if (r < 0)
                (void) step_done(s, s->stmt[STMT_SYNC_FULL]);
        return r;
}

int store_commit_progress(Store *s) {
        int r = store_commit(s);
        int k = step_done(s, s->stmt[STMT_SYNC_FULL]);
        return r < 0 ? r : k;
}

void store_rollback(Store *s) {
        if (!sqlite3_get_autocommit(s->db))
                (void) step_done(s, s->stmt[STMT_ROLLBACK]);
        (void) step_done(s, s->stmt[STMT_SYNC_FULL]);
}

static void bind_text(sqlite3_stmt *st, int i, const char *v) {
        if (v)
                sqlite3_bind_text(st, i, v, -1, SQLITE_STATIC);
        else
                sqlite3_bind_null(st, i);
}

static void bind_u64(sqlite3_stmt *st, int i, uint64_t v) {
        /* SQLite integers are signed 64-bit: the bit pattern round-trips, UINT64_MAX included. */
        sqlite3_bind_int64(st, i, (sqlite3_int64) v);
}

int store_save_job(Store *s, const Job *j) {
        sqlite3_stmt *st = s->stmt[STMT_SAVE_JOB];
        bind_text(st, 1, j->id);
        bind_text(st, 2, job_type_to_string(j->type));
        bind_text(st, 3, job_state_to_string(j->state));
        bind_u64(st, 4, j->owner);
        bind_text(st, 5, j->display_name);
        bind_text(st, 6, j->description);
        bind_text(st, 7, job_priority_to_string(j->priority));
        bind_u64(st, 8, j->notify_flags);
        bind_u64(st, 9, j->minimum_retry_delay);
        bind_u64(st, 10, j->no_progress_timeout);
        bind_u64(st, 11, j->maximum_download_time);
        bind_u64(st, 12, j->minimum_notification_interval_msec);
        bind_u64(st, 13, j->creation_time);
        bind_u64(st, 14, j->modification_time);
        bind_u64(st, 15, j->transfer_completion_time);
        bind_u64(st, 16, j->error_count);
        bind_text(st, 17, error_context_to_string(j->error.context));
        bind_text(st, 18, j->error.code);
        bind_text(st, 19, j->error.message);
        bind_text(st, 20, j->error.protocol);
        sqlite3_bind_int(st, 21, j->error.file_index);
        bind_u64(st, 22, j->no_progress_since);
        bind_u64(st, 23, j->retry_time);
        bind_u64(st, 24, j->active_usec);
        bind_text(st, 25, strempty(j->notify_program));
        _cleanup_free_ char *argv = NULL;
        size_t argv_size = 0;
        if (j->notify_argv && j->notify_argv[0]) {
                for (char **a = j->notify_argv; *a; a++)
                        argv_size += strlen(*a) + 1;
                argv = malloc(argv_size);
                if (!argv)
                        return -ENOMEM;
                char *p = argv;
                for (char **a = j->notify_argv; *a; a++)
                        p = stpcpy(p, *a) + 1;
                sqlite3_bind_blob(st, 26, argv, (int) argv_size, SQLITE_STATIC);
        } else
                sqlite3_bind_null(st, 26);
        bind_u64(st, 27, j->notify_uid);
        bind_u64(st, 28, j->helper_token_flags);
        return step_done(s, st);
}

int store_save_file(Store *s, const BitsFile *f) {
        sqlite3_stmt *st = s->stmt[STMT_SAVE_FILE];
        bind_text(st, 1, f->job->id);
        sqlite3_bind_int(st, 2, (int) f->index);
        bind_text(st, 3, f->remote_name);
        bind_text(st, 4, f->local_name);
        bind_text(st, 5, f->temp_name);
        bind_u64(st, 6, f->bytes_total);
        bind_u64(st, 7, f->bytes_checkpoint);
        sqlite3_bind_int(st, 8, f->completed);
        sqlite3_bind_int(st, 9, f->temp_created);
        bind_text(st, 10, f->validator);
        return step_done(s, st);
}

int store_delete_job(Store *s, const char *id) {
        int r;
        bind_text(s->stmt[STMT_DELETE_FILES], 1, id);
        r = step_done(s, s->stmt[STMT_DELETE_FILES]);
        if (r < 0)
                return r;
        bind_text(s->stmt[STMT_DELETE_JOB], 1, id);
        return step_done(s, s->stmt[STMT_DELETE_JOB]);
}

static const char *col_text(sqlite3_stmt *st, int i) {
        return (const char *) sqlite3_column_text(st, i);
}

static uint64_t col_u64(sqlite3_stmt *st, int i) {
        return (uint64_t) sqlite3_column_int64(st, i);
}

static int load_files(Store *s, Job *j) {
        sqlite3_stmt *st;
        int rc, r = 0;

        rc = sqlite3_prepare_v2(s->db,
                                "SELECT idx, remote_name, local_name, temp_name, bytes_total, bytes_transferred,"
                                " completed, temp_created, validator FROM files WHERE job_id = ?1 ORDER BY idx",
                                -1, &st, NULL);
        if (rc != SQLITE_OK)
                return sqlite_to_errno(rc);
        bind_text(st, 1, j->id);
        while ((rc = sqlite3_step(st)) == SQLITE_ROW) {
                unsigned idx = (unsigned) sqlite3_column_int(st, 0);
                if (idx != j->n_files) {
                        log_error("Job %s: file rows are not contiguous (found index %u, expected %u).", j->id, idx, j->n_files);
                        r = -EBADMSG;
                        break;
                }
                _cleanup_(bits_file_freep) BitsFile *f =
                        bits_file_new(strempty(col_text(st, 1)), strempty(col_text(st, 2)), strempty(col_text(st, 3)));
                if (!f) {
                        r = -ENOMEM;
                        break;
                }
                f->bytes_total = col_u64(st, 4);
                f->bytes_transferred = f->bytes_checkpoint = col_u64(st, 5);
                f->completed = sqlite3_column_int(st, 6);
                f->temp_created = sqlite3_column_int(st, 7);
                if (col_text(st, 8) && !(f->validator = strdup(col_text(st, 8)))) {
                        r = -ENOMEM;
                        break;
                }
                BitsFile *p = f;
                r = job_append_files(j, &p, 1);
                if (r < 0)
                        break;
                TAKE_PTR(f);
        }
        if (r == 0 && rc != SQLITE_DONE)
                r = sqlite_to_errno(rc) ?: -EIO;
        sqlite3_finalize(st);
        return r;
}

static int load_notify_cmdline(sqlite3_stmt *st, int col, Job *j) {
        const char *program = col_text(st, col);
        const char *blob = sqlite3_column_blob(st, col + 1);
        int size = sqlite3_column_bytes(st, col + 1);
        const char *end = blob ? blob + MAX(size, 0) : NULL;
        _cleanup_strv_free_ char **argv = NULL;
        size_t n = 0;

        if (isempty(program))
                return 0;
        if (blob && (size <= 0 || end[-1] != '\0'))
                return log_error_errno(-EBADMSG, "Job %s: malformed notify command line in the database.", j->id);
        for (const char *p = blob; p && p < end; p += strlen(p) + 1)
                n++;
        argv = calloc(n + 1, sizeof(char *));
        if (!argv)
                return -ENOMEM;
        n = 0;
        for (const char *p = blob; p && p < end; p += strlen(p) + 1)
                if (!(argv[n++] = strdup(p)))
                        return -ENOMEM;
        if (free_and_strdup(&j->notify_program, program) < 0)
                return -ENOMEM;
        strv_free(j->notify_argv);
        j->notify_argv = TAKE_PTR(argv);
        j->notify_uid = (uid_t) col_u64(st, col + 2);
        return 0;
}

int store_load(Store *s, int (*cb)(Job *j, void *userdata), void *userdata) {
        sqlite3_stmt *st;
        int rc, r = 0, n = 0;

        rc = sqlite3_prepare_v2(s->db,
                                "SELECT id, type, state, owner, display_name, description, priority, notify_flags,"
                                " minimum_retry_delay, no_progress_timeout, maximum_download_time, notify_interval_msec,"
                                " creation_time, modification_time, transfer_completion_time, error_count, error_context,"
                                " error_code, error_message, error_protocol, error_file, no_progress_since, retry_time,"
                                " active_usec, notify_program, notify_argv, notify_uid, helper_token_flags"
                                " FROM jobs ORDER BY creation_time, id",
                                -1, &st, NULL);
        if (rc != SQLITE_OK)
                return sqlite_to_errno(rc);

        while ((rc = sqlite3_step(st)) == SQLITE_ROW) {
                const char *id = col_text(st, 0);
                JobType type = job_type_from_string(col_text(st, 1));
                JobState state = job_state_from_string(col_text(st, 2));
                JobPriority prio = job_priority_from_string(col_text(st, 6));
                ErrorContext ctx = error_context_from_string(col_text(st, 16));
                if (type < 0 || state < 0 || prio < 0 || ctx < 0) {
                        log_error("Job %s has an unknown type, state, priority or error context in the database.", strempty(id));
                        r = -EBADMSG;
                        break;
                }
                _cleanup_(job_freep) Job *j = job_new(id, type, (uid_t) col_u64(st, 3), col_u64(st, 12));
                if (!j) {
                        r = -ENOMEM;
                        break;
                }
                j->state = state;
                if (free_and_strdup(&j->display_name, strempty(col_text(st, 4))) < 0 ||
                    free_and_strdup(&j->description, strempty(col_text(st, 5))) < 0) {
                        r = -ENOMEM;
                        break;
                }
                j->priority = prio;
                j->notify_flags = (uint32_t) col_u64(st, 7);
                j->minimum_retry_delay = (uint32_t) col_u64(st, 8);
                j->no_progress_timeout = (uint32_t) col_u64(st, 9);
                j->maximum_download_time = (uint32_t) col_u64(st, 10);
                j->minimum_notification_interval_msec = (uint32_t) col_u64(st, 11);
                j->modification_time = col_u64(st, 13);
                j->transfer_completion_time = col_u64(st, 14);
                j->error_count = (uint32_t) col_u64(st, 15);
                if (ctx != ERROR_CONTEXT_NONE) {
                        r = job_set_error(j, ctx, strempty(col_text(st, 17)), col_text(st, 19),
                                          sqlite3_column_int(st, 20), "%s", strempty(col_text(st, 18)));
                        if (r < 0)
                                break;
                }
                j->no_progress_since = col_u64(st, 21);
                j->retry_time = col_u64(st, 22);
                j->active_usec = col_u64(st, 23);
                r = load_notify_cmdline(st, 24, j);
                if (r < 0)
                        break;
                j->helper_token_flags = (uint32_t) col_u64(st, 27);

                r = load_files(s, j);
                if (r < 0)
                        break;
                r = cb(TAKE_PTR(j), userdata);
                if (r < 0)
                        break;
                n++;
        }
        if (r == 0 && rc != SQLITE_DONE)
                r = sqlite_to_errno(rc) ?: -EIO;
        sqlite3_finalize(st);
        return r < 0 ? r : n;
}
