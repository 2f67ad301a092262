/* SPDX-License-Identifier: LGPL-2.1-or-later */
#include "auth.h"
#include "hashmap.h"
#include "log.h"
#include "manager.h"

#define AUTH_CACHE_USEC (5 * USEC_PER_SEC)
#define AUTH_CACHE_MAX 4096U
#define REDISPATCHED_MAX 1024U

typedef struct Decision {
        char *key;            /* "<sender>\n<action>" */
        bool authorized;
        bool challenge;
        bool interactive;     /* asked with AllowUserInteraction */
        usec_t when;          /* CLOCK_MONOTONIC */
} Decision;

typedef struct Check {
        Auth *auth;
        char *key;            /* "<sender>\n<action>\n<i|n>": plain and interactive questions differ */
        char *decision_key;   /* "<sender>\n<action>" */
        char *sender;
        bool interactive;
        sd_bus_slot *slot;
        sd_bus_message **parked;
        unsigned n_parked;
} Check;

struct Auth {
        Manager *manager;
        Hashmap *decisions;   /* key -> Decision */
        Hashmap *checks;      /* key -> Check */
        sd_bus_message **redispatched;
        unsigned n_redispatched;
};

static char *make_key(const char *sender, const char *action) {
        char *k;
        return asprintf(&k, "%s\n%s", sender, action) < 0 ? NULL : k;
}

static Decision *decision_free(Decision *d) {
        if (!d)
                return NULL;
        free(d->key);
        return mfree(d);
}

static Check *check_free(Check *c) {
        if (!c)
                return NULL;
        sd_bus_slot_unref(c->slot);
        for (unsigned i = 0; i < c->n_parked; i++)
                sd_bus_message_unref(c->parked[i]);
        free(c->parked);
        free(c->key);
        free(c->decision_key);
        free(c->sender);
        return mfree(c);
}

int auth_new(Manager *m, Auth **ret) {
        Auth *a = calloc(1, sizeof(Auth));
        if (!a)
                return -ENOMEM;
        a->manager = m;
        a->decisions = hashmap_new();
        a->checks = hashmap_new();
        if (!a->decisions || !a->checks) {
                auth_free(a);
                return -ENOMEM;
        }
        *ret = a;
        return 0;
}

Auth *auth_free(Auth *a) {
        Decision *d;
        Check *c;

        if (!a)
                return NULL;
        if (a->decisions) {
                HASHMAP_FOREACH(d, a->decisions) {
                        hashmap_remove(a->decisions, d->key);
                        decision_free(d);
                }
                hashmap_free(a->decisions);
        }
        if (a->checks) {
                HASHMAP_FOREACH(c, a->checks) {
                        hashmap_remove(a->checks, c->key);
                        check_free(c);
                }
                hashmap_free(a->checks);
        }
        for (unsigned i = 0; i < a->n_redispatched; i++)
                sd_bus_message_unref(a->redispatched[i]);
        free(a->redispatched);
        return mfree(a);
}

static void forget_decisions(Auth *a) {
        Decision *d;
        HASHMAP_FOREACH(d, a->decisions) {
                hashmap_remove(a->decisions, d->key);
                decision_free(d);
        }
}

static void remember(Auth *a, const char *key, bool authorized, bool challenge, bool interactive) {
        Decision *d = hashmap_remove(a->decisions, key);
        decision_free(d);
        if (hashmap_size(a->decisions) >= AUTH_CACHE_MAX)
                forget_decisions(a); /* cheap and safe: they are only asked again */
        d = calloc(1, sizeof(Decision));
        if (!d || !(d->key = strdup(key))) {
                decision_free(d);
                return;
        }
        d->authorized = authorized;
        d->challenge = challenge;
        d->interactive = interactive;
        d->when = now(CLOCK_MONOTONIC);
        if (hashmap_put(a->decisions, d->key, d) < 0)
                decision_free(d);
}

/* A fresh decision that answers this message: a denial reached without asking the user does not
 * answer a message that allows interactive authorization. */
static Decision *lookup(Auth *a, const char *key, bool interactive) {
        Decision *d = hashmap_get(a->decisions, key);
        if (!d)
                return NULL;
        if (now(CLOCK_MONOTONIC) - d->when > AUTH_CACHE_USEC) {
                hashmap_remove(a->decisions, key);
                decision_free(d);
                return NULL;
        }
        if (!d->authorized && d->challenge && interactive && !d->interactive)
                return NULL;
        return d;
}

int auth_cached(Auth *a, sd_bus_message *msg, uid_t uid, const char *action) {
        _cleanup_free_ char *key = NULL;
        const char *sender = sd_bus_message_get_sender(msg);

        if (uid == 0)
                return 1;
        if (!sender || !(key = make_key(sender, action)))
                return -ENOENT;
        Decision *d = lookup(a, key, sd_bus_message_get_allow_interactive_authorization(msg) > 0);
        return d ? d->authorized : -ENOENT;
}

bool auth_take_redispatched(Auth *a, sd_bus_message *msg) {
        for (unsigned i = 0; i < a->n_redispatched; i++)
                if (a->redispatched[i] == msg) {
                        sd_bus_message_unref(a->redispatched[i]);
                        a->redispatched[i] = a->redispatched[--a->n_redispatched];
                        return true;
                }
        return false;
}

static void redispatch(Auth *a, sd_bus_message *msg) {
        sd_bus *bus = sd_bus_message_get_bus(msg);
        int r;

        if (a->n_redispatched < REDISPATCHED_MAX) {
                sd_bus_message **p = reallocarray(a->redispatched, a->n_redispatched + 1, sizeof(*p));
                if (p) {
                        a->redispatched = p;
                        a->redispatched[a->n_redispatched++] = sd_bus_message_ref(msg);
                }
        }
        r = sd_bus_enqueue_for_read(bus, msg);
        if (r < 0) {
                log_warning_errno(r, "Cannot dispatch a call again after its authorization: %m");
                (void) auth_take_redispatched(a, msg);
                (void) sd_bus_reply_method_errorf(msg, SD_BUS_ERROR_FAILED, "Authorization could not be completed.");
        }
}

static int on_polkit_reply(sd_bus_message *reply, void *userdata, sd_bus_error *ret_error) {
        Check *c = userdata;
        Auth *a = c->auth;
        const sd_bus_error *e = sd_bus_message_get_error(reply);
        int authorized = 0, challenge = 0, r;

        if (e)
                log_notice("polkit did not answer for '%s' (%s: %s): denied.", c->key, e->name, e->message);
        else {
                r = sd_bus_message_enter_container(reply, 'r', "bba{ss}");
                if (r >= 0)
                        r = sd_bus_message_read(reply, "bb", &authorized, &challenge);
                if (r < 0) {
                        log_notice_errno(r, "Cannot parse polkit's answer for '%s': %m; denied.", c->key);
                        authorized = challenge = 0;
                }
        }
        log_debug("polkit: %s -> %s%s", c->key, authorized ? "authorized" : "not authorized",
                  challenge ? " (challenge)" : "");

        remember(a, c->decision_key, authorized, challenge, c->interactive);
        hashmap_remove(a->checks, c->key);
        for (unsigned i = 0; i < c->n_parked; i++)
                redispatch(a, c->parked[i]);
        check_free(c);
        return 0;
}

static unsigned pending_of(Auth *a, const char *sender) {
        unsigned n = 0;
        Check *c;
        HASHMAP_FOREACH(c, a->checks)
                n += streq(c->sender, sender);
        return n;
}

static int check(Auth *a, sd_bus_message *msg, uid_t uid, const char *action, bool interactive, bool *ret_challenge);

int auth_check(Auth *a, sd_bus_message *msg, uid_t uid, const char *action, bool *ret_challenge) {
        return check(a, msg, uid, action, sd_bus_message_get_allow_interactive_authorization(msg) > 0, ret_challenge);
}

int auth_check_quiet(Auth *a, sd_bus_message *msg, uid_t uid, const char *action) {
        return check(a, msg, uid, action, false, NULL);
}

int auth_require(Auth *a, sd_bus_message *msg, uid_t uid, const char *action, const char *what, sd_bus_error *error) {
        bool challenge;
        int r = auth_check(a, msg, uid, action, &challenge);

        if (r > 0 || r == -EINPROGRESS)
                return r;
        if (r == -EUSERS)
                return sd_bus_error_set(error, SD_BUS_ERROR_LIMITS_EXCEEDED,
                                        "Too many authorization checks of this caller are in flight.");
        if (r < 0)
                return r;
        if (challenge && sd_bus_message_get_allow_interactive_authorization(msg) <= 0)
                return sd_bus_error_setf(error, SD_BUS_ERROR_INTERACTIVE_AUTHORIZATION_REQUIRED,
                                         "%s needs authentication for %s.", what, action);
        return sd_bus_error_setf(error, SD_BUS_ERROR_ACCESS_DENIED, "%s needs %s.", what, action);
}

static int check(Auth *a, sd_bus_message *msg, uid_t uid, const char *action, bool interactive, bool *ret_challenge) {
        _cleanup_free_ char *key = NULL;
        const char *sender = sd_bus_message_get_sender(msg);
        Check *c;
        int r;

        if (ret_challenge)
                *ret_challenge = false;
        if (uid == 0)
                return 1;
        if (!sender)
                return 0;
        key = make_key(sender, action);
        if (!key)
                return -ENOMEM;

        Decision *d = lookup(a, key, interactive);
        if (d) {
                if (ret_challenge)
                        *ret_challenge = d->challenge;
                return d->authorized;
        }

        _cleanup_free_ char *check_key = NULL, *plain_key = NULL;
        if (asprintf(&check_key, "%s\n%c", key, interactive ? 'i' : 'n') < 0)
                return -ENOMEM;
        c = hashmap_get(a->checks, check_key);
        if (!c && !interactive) {
                /* A plain call may as well wait for the answer to an interactive question. */
                if (asprintf(&plain_key, "%s\ni", key) < 0)
                        return -ENOMEM;
                c = hashmap_get(a->checks, plain_key);
        }
        if (c) {
                /* The same question is being asked already: wait for its answer. */
                if (c->n_parked >= AUTH_PARKED_PER_CHECK_MAX)
                        return -EUSERS;
        } else {
                if (pending_of(a, sender) >= AUTH_PENDING_PER_CALLER_MAX || hashmap_size(a->checks) >= AUTH_PENDING_MAX)
                        return -EUSERS;
                c = calloc(1, sizeof(Check));
                if (!c)
                        return -ENOMEM;
                c->auth = a;
                c->interactive = interactive;
                c->key = TAKE_PTR(check_key);
                c->decision_key = TAKE_PTR(key);
                c->sender = strdup(sender);
                if (!c->sender) {
                        check_free(c);
                        return -ENOMEM;
                }
                r = sd_bus_call_method_async(
                                sd_bus_message_get_bus(msg), &c->slot,
                                "org.freedesktop.PolicyKit1", "/org/freedesktop/PolicyKit1/Authority",
                                "org.freedesktop.PolicyKit1.Authority", "CheckAuthorization",
                                on_polkit_reply, c,
                                "(sa{sv})sa{ss}us",
                                "system-bus-name", 1, "name", "s", sender,
                                action,
                                0,
                                (uint32_t) (interactive ? 1 : 0),
                                "");
                if (r >= 0)
                        r = hashmap_put(a->checks, c->key, c);
                if (r < 0) {
                        check_free(c);
                        return r;
                }
        }

        sd_bus_message **p = reallocarray(c->parked, c->n_parked + 1, sizeof(*p));
        if (!p)
                return -ENOMEM;
        c->parked = p;
        c->parked[c->n_parked++] = sd_bus_message_ref(msg);
        return -EINPROGRESS;
}

void auth_name_lost(Auth *a, const char *name) {
        size_t n = strlen(name);
        Decision *d;

        /* Its pending checks finish by themselves (their calls cannot be answered any more). */
        HASHMAP_FOREACH(d, a->decisions)
                if (strncmp(d->key, name, n) == 0 && d->key[n] == '\n') {
                        hashmap_remove(a->decisions, d->key);
                        decision_free(d);
                }
}
