/* SPDX-License-Identifier: LGPL-2.1-or-later */
#include "bus-errors.h"
#include "bus-object.h"
#include "log.h"

#define LIST_JOBS_ALL_USERS UINT64_C(1)

static int method_create_job(sd_bus_message *msg, void *userdata, sd_bus_error *error) {
        Manager *m = userdata;
        const char *name, *type;
        uid_t uid;
        Job *j;
        int r;

        r = sd_bus_message_read(msg, "ss", &name, &type);
        if (r < 0)
                return r;
        r = bus_caller_uid(m, msg, &uid);
        if (r < 0)
                return r;
        r = manager_create_job(m, uid, name, type, &j, error);
        if (r < 0)
                return r;
        return sd_bus_reply_method_return(msg, "so", j->id, j->object_path);
}

static int method_get_job(sd_bus_message *msg, void *userdata, sd_bus_error *error) {
        Manager *m = userdata;
        const char *id;
        char canonical[37];
        uid_t uid;
        int r;

        r = sd_bus_message_read(msg, "s", &id);
        if (r < 0)
                return r;
        if (id_normalize(id, canonical) < 0) {
                char q[96];
                return sd_bus_error_setf(error, SD_BUS_ERROR_INVALID_ARGS,
                                         "'%s' is not a job id (a UUID, with or without braces or dashes).",
                                         value_for_message(id, q, sizeof(q)));
        }
        r = bus_caller_uid(m, msg, &uid);
        if (r < 0)
                return r;
        Job *j = manager_get_job(m, canonical);
        if (!j || !bus_job_visible(j, uid)) {
                /* Not the caller's own: ask polkit — for missing ids too, so nothing tells them apart. */
                r = auth_check(m->auth, msg, uid, AUTH_ACTION_MANAGE_ANY_JOB, NULL);
                if (r == -EINPROGRESS)
                        return 1;
                if (r == -EUSERS)
                        return sd_bus_error_set(error, SD_BUS_ERROR_LIMITS_EXCEEDED,
                                                "Too many authorization checks of this caller are in flight.");
                if (r < 0)
                        return r;
                if (r == 0)
                        j = NULL;
        }
        /* Final, foreign and unknown jobs all answer alike. */
        if (!j || job_state_is_final(j->state))
                return sd_bus_error_setf(error, BITS_ERROR_NOT_FOUND, "Job %s not found.", canonical);
        return sd_bus_reply_method_return(msg, "o", j->object_path);
}

static int method_list_jobs(sd_bus_message *msg, void *userdata, sd_bus_error *error) {
        _cleanup_(sd_bus_message_unrefp) sd_bus_message *reply = NULL;
        Manager *m = userdata;
        uint64_t flags;
        uid_t uid;
        Job *j;
        int r;

        r = sd_bus_message_read(msg, "t", &flags);
        if (r < 0)
                return r;
        if (flags & ~LIST_JOBS_ALL_USERS)
                return sd_bus_error_setf(error, SD_BUS_ERROR_INVALID_ARGS, "Unknown flags 0x%" PRIx64 " in 0x%" PRIx64 ".",
                                         flags & ~LIST_JOBS_ALL_USERS, flags);
        r = bus_caller_uid(m, msg, &uid);
        if (r < 0)
                return r;
        if (flags & LIST_JOBS_ALL_USERS) {
                r = auth_require(m->auth, msg, uid, AUTH_ACTION_MANAGE_ANY_JOB, "Listing the jobs of all users", error);
                if (r == -EINPROGRESS)
                        return 1; /* dispatched again once polkit answered */
                if (r < 0)
                        return r;
        }

        r = sd_bus_message_new_method_return(msg, &reply);
        if (r >= 0)
                r = sd_bus_message_open_container(reply, 'a', "(sossu)");
        HASHMAP_FOREACH(j, m->jobs) {
                if (r < 0)
                        break;
                if (job_state_is_final(j->state))
                        continue;
                if (!(flags & LIST_JOBS_ALL_USERS) && j->owner != uid)
                        continue;
                r = sd_bus_message_append(reply, "(sossu)", j->id, j->object_path, j->display_name,
                                          job_state_to_string(j->state), (uint32_t) j->owner);
        }
        if (r >= 0)
                r = sd_bus_message_close_container(reply);
        if (r < 0)
                return r;
        return sd_bus_send(NULL, reply, NULL);
}

static int property_get_config_u32(sd_bus *bus, const char *path, const char *interface, const char *property,
                                   sd_bus_message *reply, void *userdata, sd_bus_error *error) {
        Manager *m = userdata;
        uint32_t v = streq(property, "MaxJobsPerUser") ? m->config.max_jobs_per_user
                   : streq(property, "MaxJobsPerMachine") ? m->config.max_jobs_per_machine
                   : streq(property, "MaxFilesPerJob") ? m->config.max_files_per_job
                   : m->config.max_ranges_per_file;
        return sd_bus_message_append(reply, "u", v);
}

static int property_get_version(sd_bus *bus, const char *path, const char *interface, const char *property,
                                sd_bus_message *reply, void *userdata, sd_bus_error *error) {
        return sd_bus_message_append(reply, "s", PACKAGE_VERSION);
}

const sd_bus_vtable manager_vtable[] = {
        SD_BUS_VTABLE_START(0),
        SD_BUS_PROPERTY("Version", "s", property_get_version, 0, SD_BUS_VTABLE_PROPERTY_CONST),
        SD_BUS_PROPERTY("MaxJobsPerUser", "u", property_get_config_u32, 0, SD_BUS_VTABLE_PROPERTY_CONST),
        SD_BUS_PROPERTY("MaxJobsPerMachine", "u", property_get_config_u32, 0, SD_BUS_VTABLE_PROPERTY_CONST),
        SD_BUS_PROPERTY("MaxFilesPerJob", "u", property_get_config_u32, 0, SD_BUS_VTABLE_PROPERTY_CONST),
        SD_BUS_PROPERTY("MaxRangesPerFile", "u", property_get_config_u32, 0, SD_BUS_VTABLE_PROPERTY_CONST),
        SD_BUS_METHOD_WITH_ARGS("CreateJob",
                                SD_BUS_ARGS("s", display_name, "s", type),
                                SD_BUS_RESULT("s", id, "o", job),
                                method_create_job, SD_BUS_VTABLE_UNPRIVILEGED),
        SD_BUS_METHOD_WITH_ARGS("GetJob",
                                SD_BUS_ARGS("s", id),
                                SD_BUS_RESULT("o", job),
                                method_get_job, SD_BUS_VTABLE_UNPRIVILEGED),
        SD_BUS_METHOD_WITH_ARGS("ListJobs",
                                SD_BUS_ARGS("t", flags),
                                SD_BUS_RESULT("a(sossu)", jobs),
                                method_list_jobs, SD_BUS_VTABLE_UNPRIVILEGED),
        SD_BUS_METHOD("WatchJobs", NULL, NULL, bus_manager_watch_jobs, SD_BUS_VTABLE_UNPRIVILEGED),
        SD_BUS_METHOD("UnwatchJobs", NULL, NULL, bus_manager_unwatch_jobs, SD_BUS_VTABLE_UNPRIVILEGED),
        SD_BUS_SIGNAL_WITH_ARGS("JobChanged", SD_BUS_ARGS("o", job, "s", state, "t", bytes_transferred, "t", bytes_total), 0),
        SD_BUS_SIGNAL_WITH_ARGS("JobRemoved", SD_BUS_ARGS("o", job, "s", final_state), 0),
        SD_BUS_VTABLE_END,
};
