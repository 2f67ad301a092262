/* SPDX-License-Identifier: LGPL-2.1-or-later */
#pragma once

/* Persistence of jobs and files in SQLite (WAL, durable commits, prepared statements only).
 * A change is written inside store_begin()/store_commit(); callers answer a D-Bus call only
 * after the commit returned. */

#include "job.h"

typedef struct Store Store;

#define STORE_SCHEMA_VERSION 3

/* Opens (creating and migrating as needed) the database at path. A database from a newer
 * version is refused with -EPROTONOSUPPORT; a corrupt one with -EBADMSG. */
int store_open(const char *path, Store **ret);
Store *store_free(Store *s);
DEFINE_TRIVIAL_CLEANUP_FUNC(Store *, store_free);

int store_begin(Store *s);
int store_commit(Store *s);
void store_rollback(Store *s);

/* A transaction that records only progress: committed without waiting for the disk. Progress
 * that is lost on a power failure is fetched again; it can never claim more than the disk holds,
 * since the file data was made durable before the count was written, and the next durable commit
 * (any state change) carries it along. */
int store_begin_progress(Store *s);
int store_commit_progress(Store *s);

/* Writes the job row (all columns). */
int store_save_job(Store *s, const Job *j);
/* Writes the file row (all columns). */
int store_save_file(Store *s, const BitsFile *f);
/* Removes the job and its files. */
int store_delete_job(Store *s, const char *id);

/* Loads every job with its files, calling cb for each (cb takes ownership of the job, also on
 * error). Returns the number of jobs or -errno. */
int store_load(Store *s, int (*cb)(Job *j, void *userdata), void *userdata);

const char *store_last_error(Store *s);
