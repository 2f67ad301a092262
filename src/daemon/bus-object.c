/* SPDX-License-Identifier: LGPL-2.1-or-later */
#include <inttypes.h>

#include "bus-object.h"
#include "log.h"

#define CALLERS_CACHE_MAX 16384U

typedef struct Caller {
        char *name;
        uid_t uid;
} Caller;

void bus_callers_free(Manager *m) {
        Caller *c;
        if (!m->callers)
                return;
        HASHMAP_FOREACH(c, m->callers) {
                hashmap_remove(m->callers, c->name);
                free(c->name);
                free(c);
        }
}

static int on_name_owner_changed(sd_bus_message *msg, void *userdata, sd_bus_error *error) {
        Manager *m = userdata;
        const char *name, *old_owner, *new_owner;

        if (sd_bus_message_read(msg, "sss", &name, &old_owner, &new_owner) < 0)
                return 0;
        if (name[0] != ':' || !isempty(new_owner))
                return 0;
        Caller *c = hashmap_remove(m->callers, name);
        if (c) {
                free(c->name);
                free(c);
        }
        notify_name_lost(m, name);
        auth_name_lost(m->auth, name);
        return 0;
}

int bus_caller_uid(Manager *mgr, sd_bus_message *m, uid_t *ret) {
        _cleanup_(sd_bus_error_free) sd_bus_error error = SD_BUS_ERROR_NULL;
        _cleanup_(sd_bus_message_unrefp) sd_bus_message *reply = NULL;
        const char *sender = sd_bus_message_get_sender(m);
        uint32_t uid;
        int r;

        if (!sender)
                return -EPERM; /* direct connections carry no sender: refuse */
        Caller *c = hashmap_get(mgr->callers, sender);
        if (c) {
                *ret = c->uid;
                return 0;
        }
        r = sd_bus_call_method(sd_bus_message_get_bus(m), "org.freedesktop.DBus", "/org/freedesktop/DBus",
                               "org.freedesktop.DBus", "GetConnectionUnixUser", &error, &reply, "s", sender);
        if (r < 0)
                return log_debug_errno(r, "Cannot get the uid of '%s': %s", sender, error.message);
        r = sd_bus_message_read(reply, "u", &uid);
        if (r < 0)
                return r;

        if (hashmap_size(mgr->callers) < CALLERS_CACHE_MAX) {
                c = calloc(1, sizeof(Caller));
                if (c && (c->name = strdup(sender))) {
                        c->uid = uid;
                        if (hashmap_put(mgr->callers, c->name, c) < 0) {
                                free(c->name);
                                free(c);
                        }
                } else
                        free(c);
        }
        *ret = uid;
        return 0;
}

bool bus_job_visible(Job *j, uid_t uid) {
        return uid == 0 || j->owner == uid;
}

bool bus_job_visible_to(Manager *m, sd_bus_message *msg, Job *j, uid_t uid) {
        return bus_job_visible(j, uid) || auth_cached(m->auth, msg, uid, AUTH_ACTION_MANAGE_ANY_JOB) > 0;
}

/* "/org/freedesktop/bits1/job/<hex>" followed by rest (which may be ""). */
static Job *job_from_path(Manager *m, const char *path, const char **rest) {
        const char *p = path + strlen(BITS_JOB_PREFIX);
        char hex[33], id[37];

        if (strncmp(path, BITS_JOB_PREFIX "/", strlen(BITS_JOB_PREFIX) + 1) != 0)
                return NULL;
        p++;
        if (strlen(p) < 32)
                return NULL;
        memcpy(hex, p, 32);
        hex[32] = '\0';
        if (id_from_hex(hex, id) < 0)
                return NULL;
        *rest = p + 32;
        return hashmap_get(m->jobs, hex);
}

static Job *visible_job_from_path(sd_bus *bus, Manager *m, const char *path, const char **rest) {
        sd_bus_message *msg = sd_bus_get_current_message(bus);
        uid_t uid;
        Job *j = job_from_path(m, path, rest);

        if (!j || !msg || bus_caller_uid(m, msg, &uid) < 0)
                return NULL;
        /* To anyone else the job does not exist: the same UnknownObject as for a bad id. */
        return bus_job_visible_to(m, msg, j, uid) ? j : NULL;
}

int job_object_find(sd_bus *bus, const char *path, const char *interface, void *userdata, void **found, sd_bus_error *error) {
        const char *rest;
        Job *j = visible_job_from_path(bus, userdata, path, &rest);
        if (!j || *rest != '\0')
                return 0;
        *found = j;
        return 1;
}

int file_object_find(sd_bus *bus, const char *path, const char *interface, void *userdata, void **found, sd_bus_error *error) {
        const char *rest;
        char *end;
        Job *j = visible_job_from_path(bus, userdata, path, &rest);

        if (!j || strncmp(rest, "/file/", 6) != 0)
                return 0;
        rest += 6;
        if (rest[0] < '0' || rest[0] > '9' || (rest[0] == '0' && rest[1] != '\0'))
                return 0;
        errno = 0;
        unsigned long idx = strtoul(rest, &end, 10);
        if (errno != 0 || *end != '\0' || idx >= j->n_files)
                return 0;
        *found = j->files[idx];
        return 1;
}

int job_node_enumerator(sd_bus *bus, const char *path, void *userdata, char ***nodes, sd_bus_error *error) {
        Manager *m = userdata;
        sd_bus_message *msg = sd_bus_get_current_message(bus);
        char **l = NULL;
        size_t n = 0, a = 0;
        uid_t uid;
        Job *j;

        if (!msg || bus_caller_uid(m, msg, &uid) < 0) {
                *nodes = NULL;
                return 0;
        }
        HASHMAP_FOREACH(j, m->jobs) {
                if (!bus_job_visible_to(m, msg, j, uid))
                        continue;
                if (n + j->n_files + 2 > a) {
                        a = (n + j->n_files + 2) * 2;
                        char **t = reallocarray(l, a, sizeof(char *));
                        if (!t) {
                                l[n] = NULL;
                                strv_free(l);
                                return -ENOMEM;
                        }
                        l = t;
                }
                l[n] = strdup(j->object_path);
                if (!l[n])
                        goto oom;
                n++;
                for (unsigned i = 0; i < j->n_files; i++) {
                        if (asprintf(&l[n], "%s/file/%u", j->object_path, i) < 0)
                                goto oom;
                        n++;
                }
        }
        if (l)
                l[n] = NULL;
        *nodes = l;
        return 0;
oom:
        l[n] = NULL;
        strv_free(l);
        return -ENOMEM;
}

/* Calls on job objects that are not the caller's own — whether the job exists or not, so that
 * neither the answer nor its timing tells a foreign job from a missing one — and listings of the
 * objects wait until polkit decided manage-any-job for the caller. The decision is then found by
 * the object lookup, which must answer synchronously. */
static int on_incoming(sd_bus_message *msg, void *userdata, sd_bus_error *error) {
        Manager *m = userdata;
        const char *path, *iface, *rest;
        bool challenge;
        uid_t uid;
        int r;

        uint8_t type;
        if (sd_bus_message_get_type(msg, &type) < 0 || type != SD_BUS_MESSAGE_METHOD_CALL)
                return 0;
        path = sd_bus_message_get_path(msg);
        iface = sd_bus_message_get_interface(msg);
        if (!path)
                return 0;
        if (streq(path, BITS_MANAGER_PATH) || streq(path, "/") || streq(path, "/org/freedesktop") ||
            streq(path, "/org/freedesktop/bits1/job")) {
                /* Only the listings of objects depend on the decision. */
                if (!streq_ptr(iface, "org.freedesktop.DBus.ObjectManager") &&
                    !streq_ptr(iface, "org.freedesktop.DBus.Introspectable"))
                        return 0;
        } else if (strncmp(path, BITS_JOB_PREFIX "/", strlen(BITS_JOB_PREFIX) + 1) != 0)
                return 0;
        if (auth_take_redispatched(m->auth, msg))
                return 0;
        if (bus_caller_uid(m, msg, &uid) < 0 || uid == 0)
                return 0;

        Job *j = job_from_path(m, path, &rest);
        if (j && j->owner == uid)
                return 0;

        r = auth_check(m->auth, msg, uid, AUTH_ACTION_MANAGE_ANY_JOB, &challenge);
        if (r == -EINPROGRESS)
                return 1; /* parked; dispatched again once polkit answered */
        if (r == -EUSERS) {
                (void) sd_bus_reply_method_errorf(msg, SD_BUS_ERROR_LIMITS_EXCEEDED,
                                                  "Too many authorization checks of this caller are in flight.");
                return 1;
        }
        return 0; /* decided: the lookup knows */
}

int bus_setup(Manager *m) {
        int r;

        if (m->bus_address) {
                r = sd_bus_new(&m->bus);
                if (r < 0)
                        return r;
                r = sd_bus_set_address(m->bus, m->bus_address);
                if (r < 0)
                        return log_error_errno(r, "Bad bus address '%s': %m", m->bus_address);
                (void) sd_bus_set_bus_client(m->bus, true);
                r = sd_bus_start(m->bus);
        } else
                r = sd_bus_open_system(&m->bus);
        if (r < 0)
                return log_error_errno(r, "Cannot connect to the bus: %m");
        (void) sd_bus_set_description(m->bus, "bitsd");

        r = sd_bus_match_signal(m->bus, NULL, "org.freedesktop.DBus", "/org/freedesktop/DBus", "org.freedesktop.DBus",
                                "NameOwnerChanged", on_name_owner_changed, m);
        if (r < 0)
                return log_error_errno(r, "Cannot watch bus names: %m");

        r = sd_bus_add_filter(m->bus, NULL, on_incoming, m);
        if (r < 0)
                return log_error_errno(r, "Cannot install the access filter: %m");

        r = sd_bus_add_object_vtable(m->bus, NULL, BITS_MANAGER_PATH, BITS_MANAGER_INTERFACE, manager_vtable, m);
        if (r >= 0)
                r = sd_bus_add_fallback_vtable(m->bus, NULL, BITS_JOB_PREFIX, BITS_JOB_INTERFACE, job_vtable, job_object_find, m);
        if (r >= 0)
                r = sd_bus_add_fallback_vtable(m->bus, NULL, BITS_JOB_PREFIX, BITS_FILE_INTERFACE, file_vtable, file_object_find, m);
        if (r >= 0)
                r = sd_bus_add_node_enumerator(m->bus, NULL, BITS_JOB_PREFIX, job_node_enumerator, m);
        if (r >= 0)
                r = sd_bus_add_object_manager(m->bus, NULL, BITS_MANAGER_PATH);
        if (r < 0)
                return log_error_errno(r, "Cannot register bus objects: %m");

        r = sd_bus_request_name(m->bus, BITS_BUS_NAME, 0);
        if (r < 0)
                return log_error_errno(r, "Cannot own the name %s: %m", BITS_BUS_NAME);
        r = sd_bus_attach_event(m->bus, m->event, SD_EVENT_PRIORITY_NORMAL);
        if (r < 0)
                return r;
        log_info("Listening on the bus as %s.", BITS_BUS_NAME);
        return 0;
}
