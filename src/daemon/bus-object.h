/* SPDX-License-Identifier: LGPL-2.1-or-later */
#pragma once

#include <systemd/sd-bus.h>

#include "manager.h"

#define BITS_BUS_NAME "org.freedesktop.bits1"
#define BITS_MANAGER_PATH "/org/freedesktop/bits1"
#define BITS_JOB_PREFIX "/org/freedesktop/bits1/job"
#define BITS_MANAGER_INTERFACE "org.freedesktop.bits1.Manager"
#define BITS_JOB_INTERFACE "org.freedesktop.bits1.Job"
#define BITS_FILE_INTERFACE "org.freedesktop.bits1.File"

/* Connects, registers every object and takes the well-known name. */
int bus_setup(Manager *m);
void bus_callers_free(Manager *m);

/* The UID of the sender of m, from the bus (never /proc); cached per unique name until it
 * leaves the bus. */
int bus_caller_uid(Manager *mgr, sd_bus_message *m, uid_t *ret);
/* May the caller see (and act on) this job? Owner and root; bus_job_visible_to() also callers that
 * polkit authorized for manage-any-job (from the decision the access filter obtained first). */
bool bus_job_visible(Job *j, uid_t uid);
bool bus_job_visible_to(Manager *m, sd_bus_message *msg, Job *j, uid_t uid);

extern const sd_bus_vtable manager_vtable[];
extern const sd_bus_vtable job_vtable[];
extern const sd_bus_vtable file_vtable[];

int job_object_find(sd_bus *bus, const char *path, const char *interface, void *userdata, void **found, sd_bus_error *error);
int file_object_find(sd_bus *bus, const char *path, const char *interface, void *userdata, void **found, sd_bus_error *error);
int job_node_enumerator(sd_bus *bus, const char *path, void *userdata, char ***nodes, sd_bus_error *error);
