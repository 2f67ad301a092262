/* SPDX-License-Identifier: LGPL-2.1-or-later */
#include "bus-errors.h"
#include "bus-object.h"
#include "log.h"

static int check_not_final(Job *j, sd_bus_error *error) {
        if (job_state_is_final(j->state))
                return sd_bus_error_setf(error, BITS_ERROR_INVALID_STATE, "Job %s is %s.", j->id, job_state_to_string(j->state));
        return 0;
}

/* Methods on a job go through the manager, which keeps calls on one job in order. */
#define JOB_CALL(name, handler)                                                                         \
        static int name(sd_bus_message *msg, void *userdata, sd_bus_error *error) {                     \
                Job *j = userdata;                                                                      \
                return manager_job_call(j->manager, j, msg, handler);                                   \
        }

JOB_CALL(method_add_file, manager_call_add_file)
JOB_CALL(method_add_file_set, manager_call_add_file_set)
JOB_CALL(method_suspend, manager_call_suspend)
JOB_CALL(method_resume, manager_call_resume)
JOB_CALL(method_cancel, manager_call_cancel)
JOB_CALL(method_complete, manager_call_complete)
JOB_CALL(method_take_ownership, manager_call_take_ownership)
JOB_CALL(method_set_helper_token, manager_call_set_helper_token)
JOB_CALL(method_clear_helper_token, manager_call_clear_helper_token)

static int method_list_files(sd_bus_message *msg, void *userdata, sd_bus_error *error) {
        _cleanup_(sd_bus_message_unrefp) sd_bus_message *reply = NULL;
        Job *j = userdata;
        int r;

        r = check_not_final(j, error);
        if (r < 0)
                return r;
        r = sd_bus_message_new_method_return(msg, &reply);
        if (r >= 0)
                r = sd_bus_message_open_container(reply, 'a', "o");
        for (unsigned i = 0; r >= 0 && i < j->n_files; i++) {
                char path[256];
                snprintf(path, sizeof(path), "%s/file/%u", j->object_path, i);
                r = sd_bus_message_append(reply, "o", path);
        }
        if (r >= 0)
                r = sd_bus_message_close_container(reply);
        if (r < 0)
                return r;
        return sd_bus_send(NULL, reply, NULL);
}

/* ---- Job properties ---- */

/* A property getter: `var` of `type` (the object's userdata) yields `expr` of D-Bus type `sig`. */
#define DEFINE_GETTER(fname, type, var, sig, expr)                                                      \
        static int fname(sd_bus *bus, const char *path, const char *interface, const char *property,   \
                         sd_bus_message *reply, void *userdata, sd_bus_error *error) {                  \
                type *var = userdata;                                                                   \
                return sd_bus_message_append(reply, sig, expr);                                        \
        }
#define JOB_GETTER(name, sig, expr) DEFINE_GETTER(property_get_##name, Job, j, sig, expr)

JOB_GETTER(id, "s", j->id)
JOB_GETTER(type, "s", job_type_to_string(j->type))
JOB_GETTER(state, "s", job_state_to_string(j->state))
JOB_GETTER(owner, "u", (uint32_t) j->owner)
JOB_GETTER(display_name, "s", j->display_name)
JOB_GETTER(description, "s", j->description)
JOB_GETTER(priority, "s", job_priority_to_string(j->priority))
JOB_GETTER(bytes_total, "t", job_bytes_total(j))
JOB_GETTER(bytes_transferred, "t", job_bytes_transferred(j))
JOB_GETTER(files_total, "u", (uint32_t) j->n_files)
JOB_GETTER(files_transferred, "u", (uint32_t) job_files_transferred(j))
JOB_GETTER(creation_time, "t", (uint64_t) j->creation_time)
JOB_GETTER(modification_time, "t", (uint64_t) j->modification_time)
JOB_GETTER(transfer_completion_time, "t", (uint64_t) j->transfer_completion_time)
JOB_GETTER(error_count, "u", j->error_count)
JOB_GETTER(notify_flags, "u", j->notify_flags)
JOB_GETTER(minimum_retry_delay, "u", j->minimum_retry_delay)
JOB_GETTER(no_progress_timeout, "u", j->no_progress_timeout)
JOB_GETTER(maximum_download_time, "u", j->maximum_download_time)
JOB_GETTER(notify_interval, "u", j->minimum_notification_interval_msec)
JOB_GETTER(helper_token_flags, "u", j->helper_token_flags)
JOB_GETTER(helper_token_uid, "u", manager_job_helper_token_uid(j))

static int property_get_error(sd_bus *bus, const char *path, const char *interface, const char *property,
                              sd_bus_message *reply, void *userdata, sd_bus_error *error) {
        Job *j = userdata;
        char file[256] = "/";

        if (j->error.file_index >= 0)
                snprintf(file, sizeof(file), "%s/file/%d", j->object_path, j->error.file_index);
        return sd_bus_message_append(reply, "(sssso)", error_context_to_string(j->error.context),
                                     strempty(j->error.code), strempty(j->error.message),
                                     strempty(j->error.protocol), file);
}

/* Every setter: not on final jobs, validated before anything changes, persisted before the reply. */
static int job_commit_or_revert(Job *j, sd_bus_error *error, void *field, const void *old, size_t size) {
        int r = manager_job_save(j->manager, j);
        if (r < 0) {
                memcpy(field, old, size);
                return bus_error_set_errnof(error, -r, "Cannot record the change.");
        }
        return 0;
}

static int property_set_string(sd_bus *bus, const char *path, const char *interface, const char *property,
                               sd_bus_message *value, void *userdata, sd_bus_error *error) {
        Job *j = userdata;
        _cleanup_free_ char *msg = NULL;
        const char *s;
        bool is_name = streq(property, "DisplayName");
        char **field = is_name ? &j->display_name : &j->description;
        int r;

        r = check_not_final(j, error);
        if (r < 0)
                return r;
        r = sd_bus_message_read(value, "s", &s);
        if (r < 0)
                return r;
        if (validate_display_name(s, is_name ? JOB_DISPLAY_NAME_MAX : JOB_DESCRIPTION_MAX, &msg) < 0)
                return sd_bus_error_setf(error, BITS_ERROR_STRING_TOO_LONG, "%s %s.", property, strempty(msg));

        char *copy = strdup(s);
        if (!copy)
                return -ENOMEM;
        char *old = *field;
        *field = copy;
        r = job_commit_or_revert(j, error, field, &old, sizeof(old));
        if (r < 0) {
                free(copy);
                return r;
        }
        free(old);
        return 0;
}

static int property_set_priority(sd_bus *bus, const char *path, const char *interface, const char *property,
                                 sd_bus_message *value, void *userdata, sd_bus_error *error) {
        Job *j = userdata;
        const char *s;
        int r;

        r = check_not_final(j, error);
        if (r < 0)
                return r;
        r = sd_bus_message_read(value, "s", &s);
        if (r < 0)
                return r;
        JobPriority p = job_priority_from_string(s);
        if (p < 0) {
                char q[96];
                return sd_bus_error_setf(error, SD_BUS_ERROR_INVALID_ARGS,
                                         "Unknown priority '%s' (foreground, high, normal, low).",
                                         value_for_message(s, q, sizeof(q)));
        }
        JobPriority old = j->priority;
        j->priority = p;
        r = job_commit_or_revert(j, error, &j->priority, &old, sizeof(old));
        if (r < 0)
                return r;
        manager_schedule(j->manager);
        return 0;
}

static int property_set_u32(sd_bus *bus, const char *path, const char *interface, const char *property,
                            sd_bus_message *value, void *userdata, sd_bus_error *error) {
        Job *j = userdata;
        uint32_t v, *field;
        int r;

        r = check_not_final(j, error);
        if (r < 0)
                return r;
        r = sd_bus_message_read(value, "u", &v);
        if (r < 0)
                return r;

        if (streq(property, "NotifyFlags")) {
                if (v & ~JOB_NOTIFY_FLAGS_VALID)
                        return sd_bus_error_setf(error, SD_BUS_ERROR_INVALID_ARGS,
                                                 "Unknown notify flags 0x%x in 0x%x (known: 0x%x).",
                                                 v & ~JOB_NOTIFY_FLAGS_VALID, v, JOB_NOTIFY_FLAGS_VALID);
                field = &j->notify_flags;
        } else if (streq(property, "MinimumRetryDelay")) {
                v = MAX(v, JOB_MIN_RETRY_DELAY_MIN);
                field = &j->minimum_retry_delay;
        } else if (streq(property, "HelperTokenFlags")) {
                if (v & ~HELPER_TOKEN_FLAGS_VALID)
                        return sd_bus_error_setf(error, SD_BUS_ERROR_INVALID_ARGS,
                                                 "Unknown helper token flags 0x%x in 0x%x (known: 0x1 local file, 0x2 network).",
                                                 v & ~HELPER_TOKEN_FLAGS_VALID, v);
                field = &j->helper_token_flags;
        } else if (streq(property, "NoProgressTimeout"))
                field = &j->no_progress_timeout;
        else if (streq(property, "MaximumDownloadTime"))
                field = &j->maximum_download_time;
        else
                field = &j->minimum_notification_interval_msec;

        uint32_t old = *field;
        *field = v;
        return job_commit_or_revert(j, error, field, &old, sizeof(old));
}

const sd_bus_vtable job_vtable[] = {
        SD_BUS_VTABLE_START(0),
        SD_BUS_PROPERTY("Id", "s", property_get_id, 0, SD_BUS_VTABLE_PROPERTY_CONST),
        SD_BUS_PROPERTY("Type", "s", property_get_type, 0, SD_BUS_VTABLE_PROPERTY_CONST),
        SD_BUS_PROPERTY("State", "s", property_get_state, 0, 0),
        SD_BUS_PROPERTY("Owner", "u", property_get_owner, 0, 0),
        SD_BUS_WRITABLE_PROPERTY("DisplayName", "s", property_get_display_name, property_set_string, 0, SD_BUS_VTABLE_UNPRIVILEGED),
        SD_BUS_WRITABLE_PROPERTY("Description", "s", property_get_description, property_set_string, 0, SD_BUS_VTABLE_UNPRIVILEGED),
        SD_BUS_WRITABLE_PROPERTY("Priority", "s", property_get_priority, property_set_priority, 0, SD_BUS_VTABLE_UNPRIVILEGED),
        SD_BUS_PROPERTY("BytesTotal", "t", property_get_bytes_total, 0, 0),
        SD_BUS_PROPERTY("BytesTransferred", "t", property_get_bytes_transferred, 0, 0),
        SD_BUS_PROPERTY("FilesTotal", "u", property_get_files_total, 0, 0),
        SD_BUS_PROPERTY("FilesTransferred", "u", property_get_files_transferred, 0, 0),
        SD_BUS_PROPERTY("CreationTime", "t", property_get_creation_time, 0, SD_BUS_VTABLE_PROPERTY_CONST),
        SD_BUS_PROPERTY("ModificationTime", "t", property_get_modification_time, 0, 0),
        SD_BUS_PROPERTY("TransferCompletionTime", "t", property_get_transfer_completion_time, 0, 0),
        SD_BUS_PROPERTY("ErrorCount", "u", property_get_error_count, 0, 0),
        SD_BUS_PROPERTY("Error", "(sssso)", property_get_error, 0, 0),
        SD_BUS_WRITABLE_PROPERTY("NotifyFlags", "u", property_get_notify_flags, property_set_u32, 0, SD_BUS_VTABLE_UNPRIVILEGED),
        SD_BUS_WRITABLE_PROPERTY("MinimumRetryDelay", "u", property_get_minimum_retry_delay, property_set_u32, 0, SD_BUS_VTABLE_UNPRIVILEGED),
        SD_BUS_WRITABLE_PROPERTY("NoProgressTimeout", "u", property_get_no_progress_timeout, property_set_u32, 0, SD_BUS_VTABLE_UNPRIVILEGED),
        SD_BUS_WRITABLE_PROPERTY("MaximumDownloadTime", "u", property_get_maximum_download_time, property_set_u32, 0, SD_BUS_VTABLE_UNPRIVILEGED),
        SD_BUS_WRITABLE_PROPERTY("MinimumNotificationIntervalMsec", "u", property_get_notify_interval, property_set_u32, 0, SD_BUS_VTABLE_UNPRIVILEGED),
        SD_BUS_PROPERTY("NotifyCmdLine", "(sas)", bus_job_property_get_notify_cmdline, 0, 0),
        SD_BUS_WRITABLE_PROPERTY("HelperTokenFlags", "u", property_get_helper_token_flags, property_set_u32, 0, SD_BUS_VTABLE_UNPRIVILEGED),
        SD_BUS_PROPERTY("HelperTokenUid", "u", property_get_helper_token_uid, 0, 0),
        SD_BUS_METHOD_WITH_ARGS("AddFile", SD_BUS_ARGS("s", remote_url, "s", local_path), SD_BUS_NO_RESULT,
                                method_add_file, SD_BUS_VTABLE_UNPRIVILEGED),
        SD_BUS_METHOD_WITH_ARGS("AddFileSet", SD_BUS_ARGS("a(ss)", files), SD_BUS_NO_RESULT,
                                method_add_file_set, SD_BUS_VTABLE_UNPRIVILEGED),
        SD_BUS_METHOD_WITH_ARGS("ListFiles", SD_BUS_NO_ARGS, SD_BUS_RESULT("ao", files),
                                method_list_files, SD_BUS_VTABLE_UNPRIVILEGED),
        SD_BUS_METHOD("Suspend", NULL, NULL, method_suspend, SD_BUS_VTABLE_UNPRIVILEGED),
        SD_BUS_METHOD("Resume", NULL, NULL, method_resume, SD_BUS_VTABLE_UNPRIVILEGED),
        SD_BUS_METHOD("Cancel", NULL, NULL, method_cancel, SD_BUS_VTABLE_UNPRIVILEGED),
        SD_BUS_METHOD_WITH_ARGS("Complete", SD_BUS_NO_ARGS, SD_BUS_RESULT("s", result),
                                method_complete, SD_BUS_VTABLE_UNPRIVILEGED),
        SD_BUS_METHOD("TakeOwnership", NULL, NULL, method_take_ownership, SD_BUS_VTABLE_UNPRIVILEGED),
        SD_BUS_METHOD_WITH_ARGS("SetHelperToken", SD_BUS_ARGS("h", socket), SD_BUS_NO_RESULT,
                                method_set_helper_token, SD_BUS_VTABLE_UNPRIVILEGED),
        SD_BUS_METHOD("ClearHelperToken", NULL, NULL, method_clear_helper_token, SD_BUS_VTABLE_UNPRIVILEGED),
        SD_BUS_METHOD("Subscribe", NULL, NULL, bus_job_subscribe, SD_BUS_VTABLE_UNPRIVILEGED),
        SD_BUS_METHOD("Unsubscribe", NULL, NULL, bus_job_unsubscribe, SD_BUS_VTABLE_UNPRIVILEGED),
        SD_BUS_METHOD_WITH_ARGS("SetNotifyCmdLine", SD_BUS_ARGS("s", program, "as", argv), SD_BUS_NO_RESULT,
                                bus_job_set_notify_cmdline, SD_BUS_VTABLE_UNPRIVILEGED),
        SD_BUS_SIGNAL("Transferred", NULL, 0),
        SD_BUS_SIGNAL_WITH_ARGS("Error", SD_BUS_ARGS("s", context, "s", code, "s", message), 0),
        SD_BUS_SIGNAL("Modification", NULL, 0),
        SD_BUS_SIGNAL_WITH_ARGS("FileTransferred", SD_BUS_ARGS("o", file), 0),
        SD_BUS_SIGNAL_WITH_ARGS("FileRangesTransferred", SD_BUS_ARGS("o", file, "a(tt)", ranges), 0),
        SD_BUS_VTABLE_END,
};

/* ---- File ---- */

#define FILE_GETTER(name, sig, expr) DEFINE_GETTER(property_get_file_##name, BitsFile, f, sig, expr)

FILE_GETTER(remote_name, "s", f->remote_name)
FILE_GETTER(local_name, "s", f->local_name)
FILE_GETTER(temporary_name, "s", f->temp_name)
FILE_GETTER(bytes_total, "t", f->bytes_total)
FILE_GETTER(bytes_transferred, "t", f->bytes_transferred)
FILE_GETTER(completed, "b", (int) f->completed)

const sd_bus_vtable file_vtable[] = {
        SD_BUS_VTABLE_START(0),
        SD_BUS_PROPERTY("RemoteName", "s", property_get_file_remote_name, 0, 0),
        SD_BUS_PROPERTY("LocalName", "s", property_get_file_local_name, 0, SD_BUS_VTABLE_PROPERTY_CONST),
        SD_BUS_PROPERTY("TemporaryName", "s", property_get_file_temporary_name, 0, SD_BUS_VTABLE_PROPERTY_CONST),
        SD_BUS_PROPERTY("BytesTotal", "t", property_get_file_bytes_total, 0, 0),
        SD_BUS_PROPERTY("BytesTransferred", "t", property_get_file_bytes_transferred, 0, 0),
        SD_BUS_PROPERTY("Completed", "b", property_get_file_completed, 0, 0),
        SD_BUS_VTABLE_END,
};
