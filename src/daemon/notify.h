/* SPDX-License-Identifier: LGPL-2.1-or-later */
#pragma once

/* Telling clients what happened to their jobs: D-Bus signals in place of BITS' callbacks.
 *
 * - Job.Subscribe()/Unsubscribe(): one subscriber per job (last caller wins), not persisted,
 *   dropped when its name leaves the bus. Signals are unicast to it and filtered by NotifyFlags:
 *   Transferred, Error, Modification (coalesced, at most one per MinimumNotificationIntervalMsec),
 *   FileTransferred (always before Transferred), FileRangesTransferred.
 * - Manager.WatchJobs()/UnwatchJobs(): any number of observers get JobChanged/JobRemoved for
 *   every job they may see, rate-limited per job.
 * - Job.SetNotifyCmdLine(): a program run as the user who set it on transferred/error when no
 *   subscriber took the signal.
 *
 * The manager calls the notify_*() hooks below on every event; they must be cheap (progress is
 * reported for every chunk written) and never block. */

#include <systemd/sd-bus.h>

#include "job.h"

typedef struct Manager Manager;
typedef struct Notifier Notifier;

int notifier_new(Manager *m, Notifier **ret);
Notifier *notifier_free(Notifier *n);

/* The job changed state (old -> j->state), final states included. */
void notify_job_state(Manager *m, Job *j, JobState old);
/* Bytes moved (any file of the job). Called very often. */
void notify_job_progress(Manager *m, Job *j);
/* A property or the file list changed. */
void notify_job_modified(Manager *m, Job *j);
/* A file of the job is complete on disk; called before the job's own state moves on. */
void notify_file_transferred(Manager *m, Job *j, BitsFile *f);
/* The job's objects are about to be freed: forget everything about it. */
void notify_job_freed(Manager *m, Job *j);
/* A unique name left the bus: drop it as a subscriber and as a watcher. */
void notify_name_lost(Manager *m, const char *name);
/* Forget the job's command line (TakeOwnership): clears notify_program/argv/uid and any pending
 * run or retry; a run in progress finishes. The caller persists the job (manager_job_save()). */
void notify_job_clear_cmdline(Manager *m, Job *j);

/* Bus handlers (vtable entries in bus-job.c and bus-manager.c). */
int bus_job_subscribe(sd_bus_message *msg, void *userdata, sd_bus_error *error);
int bus_job_unsubscribe(sd_bus_message *msg, void *userdata, sd_bus_error *error);
int bus_job_set_notify_cmdline(sd_bus_message *msg, void *userdata, sd_bus_error *error);
int bus_job_property_get_notify_cmdline(sd_bus *bus, const char *path, const char *interface, const char *property,
                                        sd_bus_message *reply, void *userdata, sd_bus_error *error);
int bus_manager_watch_jobs(sd_bus_message *msg, void *userdata, sd_bus_error *error);
int bus_manager_unwatch_jobs(sd_bus_message *msg, void *userdata, sd_bus_error *error);
