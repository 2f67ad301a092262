/* SPDX-License-Identifier: LGPL-2.1-or-later */
#pragma once

/* Authorization: root, or polkit asked asynchronously over the bus.
 *
 * A call that needs a decision polkit has not given yet is parked: CheckAuthorization is sent
 * (subject: the caller's unique bus name), nothing blocks, and when polkit answers the decision
 * is cached for that caller and the parked call is put back into the bus's read queue
 * (sd_bus_enqueue_for_read()), so it is dispatched again and finds the decision. Any polkit
 * failure or absence is a denial. Decisions are kept for AUTH_CACHE_USEC per caller and action
 * and dropped when the caller leaves the bus. */

#include <stdbool.h>
#include <systemd/sd-bus.h>

typedef struct Manager Manager;
typedef struct Auth Auth;

#define AUTH_ACTION_MANAGE_ANY_JOB "org.freedesktop.bits1.manage-any-job"
#define AUTH_ACTION_TAKE_OWNERSHIP "org.freedesktop.bits1.take-ownership"

#define AUTH_PENDING_PER_CALLER_MAX 8U   /* polkit checks in flight per unique name */
#define AUTH_PARKED_PER_CHECK_MAX 64U    /* calls waiting for one check */
#define AUTH_PENDING_MAX 512U            /* checks in flight in all */

int auth_new(Manager *m, Auth **ret);
Auth *auth_free(Auth *a);

/* 1: authorized (root always is); 0: not (*ret_challenge: polkit would ask for authentication);
 * -EINPROGRESS: a check was started and msg parked — the caller must return without replying,
 * msg will be dispatched again; other negative errno on failure (-EUSERS: too many checks of
 * this caller in flight). polkit may interact with the user only if the message allows it. */
int auth_check(Auth *a, sd_bus_message *msg, uid_t uid, const char *action, bool *ret_challenge);
/* For a call that cannot proceed without the authorization: 1 authorized; -EINPROGRESS parked
 * (return without replying); otherwise a negative errno with `error` set for the reply —
 * InteractiveAuthorizationRequired when polkit would ask and the call did not allow it,
 * AccessDenied, or LimitsExceeded. `what` completes "… needs <action>" in the message. */
int auth_require(Auth *a, sd_bus_message *msg, uid_t uid, const char *action, const char *what, sd_bus_error *error);

/* The same, never interactive: for calls that work without the authorization too (they do less). */
int auth_check_quiet(Auth *a, sd_bus_message *msg, uid_t uid, const char *action);

/* Only what is known already, never asks: 1 authorized, 0 not, -ENOENT no fresh decision. */
int auth_cached(Auth *a, sd_bus_message *msg, uid_t uid, const char *action);

/* True once for a message that auth put back into the read queue (it passes the filter). */
bool auth_take_redispatched(Auth *a, sd_bus_message *msg);

void auth_name_lost(Auth *a, const char *name);
