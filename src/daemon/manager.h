/* SPDX-License-Identifier: LGPL-2.1-or-later */
#pragma once

#include <systemd/sd-bus.h>
#include <systemd/sd-event.h>
#include <systemd/sd-login.h>

#include "auth.h"
#include "config.h"
#include "file-ops.h"
#include "hashmap.h"
#include "job.h"
#include "notify.h"
#include "store.h"
#include "transfer.h"

typedef struct Manager {
        sd_event *event;
        sd_bus *bus;
        char *bus_address;   /* NULL: the system bus */
        char *state_dir;
        char *config_path;
        Config config;

        Store *store;
        FileOps *file_ops;
        TransferEngine *engine;
        Notifier *notifier;
        Auth *auth;

        Hashmap *jobs;       /* hex id -> Job, final ones included until they expire */
        unsigned n_live_jobs; /* not final */
        uint64_t queue_seq;

        Hashmap *callers;    /* unique bus name -> CallerCache */
        sd_event_source *schedule_source;
        sd_login_monitor *login_monitor;
        sd_event_source *login_source;
        bool track_sessions;         /* RequireOwnerSession= and logind's state is available */
        sd_event_source *gc_timer;
} Manager;

typedef struct JobOp JobOp;

/* A bus call on a job. Returns < 0 with `error` set (the caller replies with it), 0 when it
 * replied itself, 1 when it started file work as the owner and will reply when that is done. */
typedef int (*JobCallHandler)(Manager *m, Job *j, sd_bus_message *msg, sd_bus_error *error);

typedef struct ParkedCall {
        sd_bus_message *msg;
        JobCallHandler handler;
} ParkedCall;

#define JOB_PARKED_CALLS_MAX 64U

/* Per-job runtime state that is never persisted. */
typedef struct JobRuntime {
        JobOp *op;                       /* file work for a call in flight (AddFile, Complete, Cancel) */
        ParkedCall *parked;              /* calls that arrived meanwhile, answered in order afterwards */
        unsigned n_parked;
        Transfer *transfer;
        bool has_token;                  /* SetHelperToken(): never persisted */
        Identity token;
        sd_event_source *retry_timer;    /* transient-error -> queued, or -> error when the no-progress timeout ends */
        sd_event_source *deadline_timer; /* MaximumDownloadTime */
        sd_event_source *expire_timer;   /* final job leaves the bus */
} JobRuntime;

int manager_new(Manager **ret);
Manager *manager_free(Manager *m);
DEFINE_TRIVIAL_CLEANUP_FUNC(Manager *, manager_free);

int manager_startup(Manager *m);
int manager_run(Manager *m);

/* Lookup by hex or canonical id; final jobs are returned too (the bus layer decides). */
Job *manager_get_job(Manager *m, const char *id);

/* Operations, called by the bus layer after it checked access. Each validates fully before it
 * changes anything, persists, and only then replies; user errors fill `error`. */
int manager_create_job(Manager *m, uid_t owner, const char *name, const char *type, Job **ret, sd_bus_error *error);

/* Runs the handler for a call on a job now, or — while the job has file work in flight — after
 * it and the calls that arrived before, so calls on one job are answered in the order sent. */
int manager_job_call(Manager *m, Job *j, sd_bus_message *msg, JobCallHandler handler);

/* The handlers of the Job methods (see JobCallHandler). */
int manager_call_add_file(Manager *m, Job *j, sd_bus_message *msg, sd_bus_error *error);
int manager_call_add_file_set(Manager *m, Job *j, sd_bus_message *msg, sd_bus_error *error);
int manager_call_resume(Manager *m, Job *j, sd_bus_message *msg, sd_bus_error *error);
int manager_call_suspend(Manager *m, Job *j, sd_bus_message *msg, sd_bus_error *error);
int manager_call_cancel(Manager *m, Job *j, sd_bus_message *msg, sd_bus_error *error);
int manager_call_complete(Manager *m, Job *j, sd_bus_message *msg, sd_bus_error *error);
int manager_call_take_ownership(Manager *m, Job *j, sd_bus_message *msg, sd_bus_error *error);
int manager_call_set_helper_token(Manager *m, Job *j, sd_bus_message *msg, sd_bus_error *error);
int manager_call_clear_helper_token(Manager *m, Job *j, sd_bus_message *msg, sd_bus_error *error);
/* The UID of the job's helper token, or UINT32_MAX. */
uint32_t manager_job_helper_token_uid(Job *j);
/* Persist a property change (bumps ModificationTime). */
int manager_job_save(Manager *m, Job *j);

bool manager_uid_is_exempt(uid_t uid);
/* An error reply for a failed system call, with a name from the contract: AccessDenied for
 * EACCES/EPERM, NoMemory, and Failed for everything else; the message names the value. */
int bus_error_set_errnof(sd_bus_error *error, int r, const char *format, ...) _printf_(3, 4);
/* Re-evaluate which jobs run (after a priority change, a new queued job, a free slot). */
void manager_schedule(Manager *m);
