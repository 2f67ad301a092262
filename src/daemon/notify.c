/* SPDX-License-Identifier: LGPL-2.1-or-later */
/* Placeholder until the notifier lands: the hooks do nothing and the bus methods say so. */
#include "bus-errors.h"
#include "manager.h"
#include "notify.h"

struct Notifier {
        Manager *manager;
};

int notifier_new(Manager *m, Notifier **ret) {
        *ret = calloc(1, sizeof(Notifier));
        return *ret ? 0 : -ENOMEM;
}

Notifier *notifier_free(Notifier *n) {
        return mfree(n);
}

void notify_job_state(Manager *m, Job *j, JobState old) {}
void notify_job_progress(Manager *m, Job *j) {}
void notify_job_modified(Manager *m, Job *j) {}
void notify_file_transferred(Manager *m, Job *j, BitsFile *f) {}
void notify_job_freed(Manager *m, Job *j) {}
void notify_name_lost(Manager *m, const char *name) {}

static int not_yet(sd_bus_error *error) {
        return sd_bus_error_set(error, BITS_ERROR_NOT_SUPPORTED, "Notifications are not available in this version.");
}

int bus_job_subscribe(sd_bus_message *msg, void *userdata, sd_bus_error *error) {
        return not_yet(error);
}
int bus_job_unsubscribe(sd_bus_message *msg, void *userdata, sd_bus_error *error) {
        return not_yet(error);
}
int bus_job_set_notify_cmdline(sd_bus_message *msg, void *userdata, sd_bus_error *error) {
        return not_yet(error);
}
int bus_job_property_get_notify_cmdline(sd_bus *bus, const char *path, const char *interface, const char *property,
                                        sd_bus_message *reply, void *userdata, sd_bus_error *error) {
        return not_yet(error);
}
int bus_manager_watch_jobs(sd_bus_message *msg, void *userdata, sd_bus_error *error) {
        return not_yet(error);
}
int bus_manager_unwatch_jobs(sd_bus_message *msg, void *userdata, sd_bus_error *error) {
        return not_yet(error);
}
