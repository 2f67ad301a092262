/* SPDX-License-Identifier: LGPL-2.1-or-later */
#include <fcntl.h>
#include <stdarg.h>
#include <inttypes.h>
#include <libgen.h>
#include <limits.h>
#include <sys/random.h>
#include <sys/socket.h>
#include <sys/stat.h>

#include "bus-errors.h"
#include "bus-object.h"
#include "log.h"
#include "manager.h"

#define FILES_PER_JOB_HARD_MAX 100000U  /* even for exempt callers */
#define JOBS_HARD_MAX 1000000U

static void job_runtime_free(Job *j);
void manager_schedule(Manager *m);
static void job_start(Manager *m, Job *j);
static void job_transient_error(Manager *m, Job *j, uint32_t retry_after);
static void job_fatal_error(Manager *m, Job *j);

int bus_error_set_errnof(sd_bus_error *error, int r, const char *format, ...) {
        _cleanup_free_ char *msg = NULL;
        const char *name;
        va_list ap;

        r = -abs(r);
        name = r == -EACCES || r == -EPERM ? SD_BUS_ERROR_ACCESS_DENIED
             : r == -ENOMEM ? SD_BUS_ERROR_NO_MEMORY
             : SD_BUS_ERROR_FAILED;
        va_start(ap, format);
        if (vasprintf(&msg, format, ap) < 0)
                msg = NULL;
        va_end(ap);
        (void) sd_bus_error_set(error, name, msg ?: "Out of memory.");
        return r;
}

bool manager_uid_is_exempt(uid_t uid) {
        return uid <= 999;
}

static JobRuntime *job_runtime(Job *j) {
        if (!j->runtime)
                j->runtime = calloc(1, sizeof(JobRuntime));
        return j->runtime;
}

static JobOp *job_op_free(JobOp *op);

static void job_runtime_free(Job *j) {
        JobRuntime *rt = j->runtime;
        if (!rt)
                return;
        job_op_free(rt->op);
        for (unsigned i = 0; i < rt->n_parked; i++)
                sd_bus_message_unref(rt->parked[i].msg);
        free(rt->parked);
        transfer_free(rt->transfer);
        sd_event_source_disable_unref(rt->retry_timer);
        sd_event_source_disable_unref(rt->deadline_timer);
        sd_event_source_disable_unref(rt->expire_timer);
        j->runtime = mfree(rt);
}

static void manager_job_free(Job *j) {
        if (j->manager)
                notify_job_freed(j->manager, j);
        job_runtime_free(j);
        job_free(j);
}

Job *manager_get_job(Manager *m, const char *id) {
        char canonical[37], hex[33];
        if (strlen(id) == 32 && id_from_hex(id, canonical) >= 0)
                return hashmap_get(m->jobs, id);
        if (id_normalize(id, canonical) < 0)
                return NULL;
        id_to_hex(canonical, hex);
        return hashmap_get(m->jobs, hex);
}

/* ---- persistence ---- */

static int job_persist(Manager *m, Job *j, bool with_files) {
        int r = store_begin(m->store);
        if (r < 0)
                return r;
        r = store_save_job(m->store, j);
        for (unsigned i = 0; r >= 0 && with_files && i < j->n_files; i++)
                r = store_save_file(m->store, j->files[i]);
        if (r >= 0)
                r = store_commit(m->store);
        else
                store_rollback(m->store);
        if (r < 0)
                log_error_errno(r, "Job %s: cannot record its state: %s", j->id, store_last_error(m->store));
        return r;
}

int manager_job_save(Manager *m, Job *j) {
        j->modification_time = now(CLOCK_REALTIME);
        int r = job_persist(m, j, false);
        if (r >= 0)
                notify_job_modified(m, j);
        return r;
}

/* ---- state changes ---- */

static int on_deadline(sd_event_source *s, uint64_t usec, void *userdata);

static void job_enter_state(Manager *m, Job *j, JobState s) {
        JobRuntime *rt = job_runtime(j);
        usec_t mono = now(CLOCK_MONOTONIC);
        bool was_active = job_state_is_active(j->state), active = job_state_is_active(s);

        if (j->state == s)
                return;
        log_debug("Job %s: %s -> %s", j->id, job_state_to_string(j->state), job_state_to_string(s));

        if (was_active && !active) {
                j->active_usec += usec_sub(mono, j->active_since);
                j->active_since = 0;
                rt->deadline_timer = sd_event_source_disable_unref(rt->deadline_timer);
                manager_schedule(m); /* a slot is free */
        }
        if (!was_active && active) {
                usec_t limit = (usec_t) j->maximum_download_time * USEC_PER_SEC;
                j->active_since = mono;
                if (sd_event_add_time(m->event, &rt->deadline_timer, CLOCK_MONOTONIC,
                                      usec_add(mono, usec_sub(limit, j->active_usec)), USEC_PER_SEC / 10,
                                      on_deadline, j) >= 0)
                        (void) sd_event_source_set_description(rt->deadline_timer, "max-download-time");
        }
        if (s != JOB_TRANSIENT_ERROR) {
                rt->retry_timer = sd_event_source_disable_unref(rt->retry_timer);
                j->retry_time = 0;
        }
        if (s == JOB_QUEUED) {
                j->queued_seq = ++m->queue_seq;
                manager_schedule(m);
        }
        JobState old = j->state;
        j->state = s;
        j->modification_time = now(CLOCK_REALTIME);
        notify_job_state(m, j, old);
}

/* Stop the job's transfer (if any) keeping every byte received. */
static void job_stop_transfer(Manager *m, Job *j) {
        JobRuntime *rt = j->runtime;
        if (rt && rt->transfer)
                rt->transfer = transfer_free(rt->transfer);
}

static int on_expire(sd_event_source *s, uint64_t usec, void *userdata) {
        Job *j = userdata;
        Manager *m = j->manager;
        log_debug("Job %s: retention over, removing its objects.", j->id);
        hashmap_remove(m->jobs, j->hex);
        manager_job_free(j);
        return 0;
}

/* acknowledged/cancelled: gone from the store and the listings; the objects stay for a while. */
static int job_finalize(Manager *m, Job *j, JobState final) {
        JobRuntime *rt = job_runtime(j);
        int r;

        r = store_begin(m->store);
        if (r >= 0)
                r = store_delete_job(m->store, j->id);
        if (r >= 0)
                r = store_commit(m->store);
        else
                store_rollback(m->store);
        if (r < 0)
                return log_error_errno(r, "Job %s: cannot remove it from the store: %s", j->id, store_last_error(m->store));

        job_enter_state(m, j, final);
        m->n_live_jobs--;
        j->final_time = now(CLOCK_MONOTONIC);
        rt->retry_timer = sd_event_source_disable_unref(rt->retry_timer);
        rt->deadline_timer = sd_event_source_disable_unref(rt->deadline_timer);
        r = sd_event_add_time_relative(m->event, &rt->expire_timer, CLOCK_MONOTONIC,
                                       (usec_t) m->config.final_job_retention_sec * USEC_PER_SEC, USEC_PER_SEC,
                                       on_expire, j);
        if (r < 0)
                log_warning_errno(r, "Job %s: cannot arm its removal, keeping its objects: %m", j->id);
        log_info("Job %s: %s.", j->id, job_state_to_string(final));
        return 0;
}

static int on_retry(sd_event_source *s, uint64_t usec, void *userdata) {
        Job *j = userdata;
        Manager *m = j->manager;
        usec_t t = now(CLOCK_REALTIME);
        usec_t give_up = usec_add(j->no_progress_since, (usec_t) j->no_progress_timeout * USEC_PER_SEC);

        JobRuntime *rt = job_runtime(j);
        rt->retry_timer = sd_event_source_disable_unref(rt->retry_timer);
        if (j->state != JOB_TRANSIENT_ERROR)
                return 0;
        if (j->no_progress_since != 0 && t >= give_up) {
                log_info("Job %s: no progress for %" PRIu32 " s, giving up.", j->id, j->no_progress_timeout);
                job_enter_state(m, j, JOB_ERROR);
                (void) job_persist(m, j, false);
                return 0;
        }
        job_enter_state(m, j, JOB_QUEUED);
        (void) job_persist(m, j, false);
        return 0;
}

static void job_arm_retry(Manager *m, Job *j) {
        JobRuntime *rt = job_runtime(j);
        usec_t t = now(CLOCK_REALTIME);
        usec_t give_up = usec_add(j->no_progress_since, (usec_t) j->no_progress_timeout * USEC_PER_SEC);
        usec_t when = MIN(j->retry_time, give_up);

        rt->retry_timer = sd_event_source_disable_unref(rt->retry_timer);
        /* Persisted in wall-clock time; waited for on the monotonic clock. */
        if (sd_event_add_time_relative(m->event, &rt->retry_timer, CLOCK_MONOTONIC, usec_sub(when, t),
                                       USEC_PER_SEC / 10, on_retry, j) >= 0)
                (void) sd_event_source_set_description(rt->retry_timer, "retry");
}

static void job_transient_error(Manager *m, Job *j, uint32_t retry_after) {
        bool fatal;
        usec_t retry_at, give_up;

        job_stop_transfer(m, j);
        j->error_count++;
        job_retry_plan(now(CLOCK_REALTIME), &j->no_progress_since, j->minimum_retry_delay, j->no_progress_timeout,
                       retry_after, &fatal, &retry_at, &give_up);
        if (fatal) {
                log_info("Job %s: %s (%s); no more retries.", j->id, strempty(j->error.message), strempty(j->error.code));
                job_enter_state(m, j, JOB_ERROR);
        } else {
                log_info("Job %s: %s (%s); retrying in %" PRIu64 " s.", j->id, strempty(j->error.message),
                         strempty(j->error.code), usec_sub(retry_at, now(CLOCK_REALTIME)) / USEC_PER_SEC);
                job_enter_state(m, j, JOB_TRANSIENT_ERROR);
                j->retry_time = retry_at;
                job_arm_retry(m, j);
        }
        (void) job_persist(m, j, true);
}

static void job_fatal_error(Manager *m, Job *j) {
        job_stop_transfer(m, j);
        j->error_count++;
        log_info("Job %s: %s (%s).", j->id, strempty(j->error.message), strempty(j->error.code));
        job_enter_state(m, j, JOB_ERROR);
        (void) job_persist(m, j, true);
}

static int on_deadline(sd_event_source *s, uint64_t usec, void *userdata) {
        Job *j = userdata;
        Manager *m = j->manager;
        JobRuntime *rt = job_runtime(j);

        rt->deadline_timer = sd_event_source_disable_unref(rt->deadline_timer);
        if (!job_state_is_active(j->state))
                return 0;
        BitsFile *f = job_next_pending_file(j);
        (void) job_set_error(j, ERROR_CONTEXT_QUEUE_MANAGER, "bits:MaxDownloadTimeout", f ? remote_protocol(f->remote_name) : "",
                             f ? (int) f->index : -1, "The job was active for longer than MaximumDownloadTime (%" PRIu32 " s)",
                             j->maximum_download_time);
        job_fatal_error(m, j);
        return 0;
}

/* ---- the transfer engine's callbacks ---- */

static void on_transfer_connected(Transfer *t, Job *j, void *userdata) {
        Manager *m = userdata;
        if (j->state == JOB_CONNECTING) {
                /* As in BITS, the error of a previous attempt stays visible until data flows again. */
                job_error_info_clear(&j->error);
                job_enter_state(m, j, JOB_TRANSFERRING);
                (void) job_persist(m, j, false);
        }
}

static void on_transfer_progress(Transfer *t, Job *j, void *userdata) {
        notify_job_progress(userdata, j);
}

static void on_transfer_checkpoint(Transfer *t, Job *j, BitsFile *f, void *userdata) {
        Manager *m = userdata;
        int r;

        j->no_progress_since = 0; /* progress: the no-progress clock starts over */
        j->modification_time = now(CLOCK_REALTIME);
        r = store_begin_progress(m->store);
        if (r >= 0)
                r = store_save_file(m->store, f);
        if (r >= 0)
                r = store_save_job(m->store, j);
        if (r >= 0)
                r = store_commit_progress(m->store);
        else
                store_rollback(m->store);
        if (r < 0)
                log_warning_errno(r, "Job %s: cannot record progress: %s", j->id, store_last_error(m->store));
}

static void on_transfer_finished(Transfer *t, Job *j, BitsFile *f, TransferOutcome o, uint32_t retry_after, void *userdata) {
        Manager *m = userdata;
        JobRuntime *rt = job_runtime(j);

        if (rt->transfer == t)
                rt->transfer = NULL;
        transfer_free(t);

        switch (o) {
        case TRANSFER_DONE:
                log_debug("Job %s: file %u done (%" PRIu64 " bytes).", j->id, f->index, f->bytes_total);
                notify_file_transferred(m, j, f);
                if (job_next_pending_file(j)) {
                        job_start(m, j);
                        return;
                }
                job_error_info_clear(&j->error);
                job_enter_state(m, j, JOB_TRANSFERRED);
                j->transfer_completion_time = now(CLOCK_REALTIME);
                log_info("Job %s: transferred (%u files, %" PRIu64 " bytes).", j->id, j->n_files, job_bytes_total(j));
                (void) job_persist(m, j, true);
                return;
        case TRANSFER_TRANSIENT:
                job_transient_error(m, j, retry_after);
                return;
        case TRANSFER_FATAL:
                job_fatal_error(m, j);
                return;
        }
}

/* ---- scheduling ---- */

static int identity_for_job(Job *j, Identity *ret) {
        int r = identity_from_uid(j->owner, ret);
        /* A UID without a passwd entry still has its own permissions; just no groups. */
        return r == -ESRCH ? 0 : r;
}

/* The identity for the job's work selected by a HelperTokenFlags bit: the helper token's when
 * the bit is set (-ENOKEY when no token is set), the owner's otherwise. */
static int job_identity(Job *j, uint32_t flag, Identity *ret) {
        JobRuntime *rt = j->runtime;
        if (!(j->helper_token_flags & flag))
                return identity_for_job(j, ret);
        if (!rt || !rt->has_token)
                return -ENOKEY;
        *ret = rt->token;
        return 0;
}

uint32_t manager_job_helper_token_uid(Job *j) {
        JobRuntime *rt = j->runtime;
        return rt && rt->has_token ? (uint32_t) rt->token.uid : UINT32_MAX;
}

static void job_start(Manager *m, Job *j) {
        JobRuntime *rt = job_runtime(j);
        BitsFile *f = job_next_pending_file(j);
        Identity id;
        bool transient = false;
        int r;

        if (!f) {
                job_enter_state(m, j, JOB_TRANSFERRED);
                j->transfer_completion_time = now(CLOCK_REALTIME);
                (void) job_persist(m, j, false);
                return;
        }
        if (j->state == JOB_QUEUED)
                job_enter_state(m, j, JOB_CONNECTING);

        Identity source_id;
        r = job_identity(j, HELPER_TOKEN_LOCAL_FILE, &id);
        if (r >= 0)
                r = job_identity(j, HELPER_TOKEN_NETWORK, &source_id);
        if (r == -ENOKEY) {
                /* Helper tokens are never stored: after a restart the application must set it again. */
                (void) job_set_error(j, ERROR_CONTEXT_QUEUE_MANAGER, "bits:TokenRequired", "", (int) f->index,
                                     "HelperTokenFlags is 0x%x but no helper token is set (SetHelperToken)",
                                     j->helper_token_flags);
                job_fatal_error(m, j);
                return;
        }
        if (r < 0) {
                (void) job_set_error(j, ERROR_CONTEXT_QUEUE_MANAGER, "errno:EINVAL", "", (int) f->index,
                                     "Cannot look up the groups of uid %u", (unsigned) j->owner);
                job_transient_error(m, j, 0);
                return;
        }
        r = transfer_start(m->engine, j, f, &id, &source_id, &rt->transfer, &transient);
        if (r < 0) {
                rt->transfer = NULL;
                if (transient)
                        job_transient_error(m, j, 0);
                else
                        job_fatal_error(m, j);
                return;
        }
        (void) job_persist(m, j, false);
}

/* BITS runs a user's jobs only while the user is logged on. Root and system users always run. */
static bool owner_may_transfer(Manager *m, uid_t uid) {
        _cleanup_free_ char *state = NULL;

        if (!m->track_sessions || manager_uid_is_exempt(uid))
                return true;
        if (sd_uid_get_state(uid, &state) < 0)
                return false;
        return streq(state, "active") || streq(state, "online") || streq(state, "lingering");
}

/* A session ended or began: running jobs of users who left go back to queued, the scheduler
 * starts what may run now. */
static int on_login_change(sd_event_source *s, int fd, uint32_t revents, void *userdata) {
        Manager *m = userdata;
        Job *j;

        (void) sd_login_monitor_flush(m->login_monitor);
        HASHMAP_FOREACH(j, m->jobs) {
                if (!job_state_is_active(j->state) || owner_may_transfer(m, j->owner))
                        continue;
                log_info("Job %s: uid %u has no session any more, waiting for the next one.", j->id, (unsigned) j->owner);
                job_stop_transfer(m, j);
                job_enter_state(m, j, JOB_QUEUED);
                (void) job_persist(m, j, true);
        }
        manager_schedule(m);
        return 0;
}

static int setup_session_tracking(Manager *m) {
        int r;

        if (!m->config.require_owner_session)
                return 0;
        /* Without logind nobody would ever have a session: say so and run every job. */
        if (access("/run/systemd/users", F_OK) < 0) {
                log_notice("logind's user records are not available: jobs run regardless of sessions.");
                return 0;
        }
        r = sd_login_monitor_new("uid", &m->login_monitor);
        if (r < 0)
                return log_error_errno(r, "Cannot watch logind sessions: %m");
        r = sd_event_add_io(m->event, &m->login_source, sd_login_monitor_get_fd(m->login_monitor),
                            (uint32_t) sd_login_monitor_get_events(m->login_monitor), on_login_change, m);
        if (r < 0)
                return r;
        (void) sd_event_source_set_description(m->login_source, "logind");
        m->track_sessions = true;
        return 0;
}

static int cmp_queued(const void *a, const void *b) {
        const Job *x = *(Job *const *) a, *y = *(Job *const *) b;
        if (x->priority != y->priority)
                return x->priority < y->priority ? -1 : 1;
        return x->queued_seq < y->queued_seq ? -1 : x->queued_seq > y->queued_seq;
}

/* BITS: every foreground job runs; of the background jobs, the most urgent ones (up to
 * MaxBackgroundJobs) run, and a more urgent job preempts a less urgent one. */
static int on_schedule(sd_event_source *s, void *userdata) {
        Manager *m = userdata;
        _cleanup_free_ Job **queued = NULL, **running = NULL;
        size_t n_queued = 0, n_running = 0, n_alloc = hashmap_size(m->jobs);
        Job *j;

        if (n_alloc == 0)
                return 0;
        queued = calloc(n_alloc, sizeof(Job *));
        running = calloc(n_alloc, sizeof(Job *));
        if (!queued || !running)
                return log_oom();

        /* A job being completed or cancelled was moved out of queued/active first (job_stop_for_op()). */
        HASHMAP_FOREACH(j, m->jobs) {
                if (j->state == JOB_QUEUED && owner_may_transfer(m, j->owner))
                        queued[n_queued++] = j;
                else if (job_state_is_active(j->state) && j->priority != JOB_PRIORITY_FOREGROUND)
                        running[n_running++] = j;
        }
        qsort(queued, n_queued, sizeof(Job *), cmp_queued);

        for (size_t i = 0; i < n_queued; i++) {
                j = queued[i];
                if (j->priority == JOB_PRIORITY_FOREGROUND) {
                        job_start(m, j);
                        continue;
                }
                if (n_running < m->config.max_background_jobs) {
                        running[n_running++] = j;
                        job_start(m, j);
                        continue;
                }
                /* Preempt the least urgent running job if this one is more urgent. */
                size_t worst = 0;
                for (size_t k = 1; k < n_running; k++)
                        if (running[k]->priority > running[worst]->priority)
                                worst = k;
                if (n_running > 0 && running[worst]->priority > j->priority) {
                        Job *victim = running[worst];
                        log_debug("Job %s preempts job %s.", j->id, victim->id);
                        job_stop_transfer(m, victim);
                        job_enter_state(m, victim, JOB_QUEUED);
                        (void) job_persist(m, victim, true);
                        running[worst] = j;
                        job_start(m, j);
                }
        }
        return 0;
}

void manager_schedule(Manager *m) {
        if (m->schedule_source)
                (void) sd_event_source_set_enabled(m->schedule_source, SD_EVENT_ONESHOT);
}

/* ---- operations ---- */

int manager_create_job(Manager *m, uid_t owner, const char *name, const char *type, Job **ret, sd_bus_error *error) {
        _cleanup_free_ char *msg = NULL;
        char id[37];
        JobType t;
        Job *j;
        int r;

        t = job_type_from_string(type);
        if (t < 0) {
                char q[96];
                return sd_bus_error_setf(error, SD_BUS_ERROR_INVALID_ARGS,
                                         "Unknown job type '%s' (download, upload, upload-reply).",
                                         value_for_message(type, q, sizeof(q)));
        }
        if (t != JOB_DOWNLOAD)
                return sd_bus_error_setf(error, BITS_ERROR_NOT_SUPPORTED, "Job type '%s' is not supported yet.", type);
        if (validate_display_name(name, JOB_DISPLAY_NAME_MAX, &msg) < 0)
                return sd_bus_error_setf(error, BITS_ERROR_STRING_TOO_LONG, "Display name %s.", strempty(msg));

        if (m->n_live_jobs >= JOBS_HARD_MAX)
                return sd_bus_error_setf(error, BITS_ERROR_TOO_MANY_JOBS_PER_MACHINE,
                                         "There are %u jobs, the most this machine keeps.", m->n_live_jobs);
        if (!manager_uid_is_exempt(owner)) {
                unsigned mine = 0;
                if (m->n_live_jobs >= m->config.max_jobs_per_machine)
                        return sd_bus_error_setf(error, BITS_ERROR_TOO_MANY_JOBS_PER_MACHINE,
                                                 "There are %u jobs, MaxJobsPerMachine is %u.", m->n_live_jobs,
                                                 m->config.max_jobs_per_machine);
                HASHMAP_FOREACH(j, m->jobs)
                        mine += j->owner == owner && !job_state_is_final(j->state);
                if (mine >= m->config.max_jobs_per_user)
                        return sd_bus_error_setf(error, BITS_ERROR_TOO_MANY_JOBS_PER_USER,
                                                 "User %u has %u jobs, MaxJobsPerUser is %u.", (unsigned) owner, mine,
                                                 m->config.max_jobs_per_user);
        }

        do {
                r = id_generate(id);
                if (r < 0)
                        return r;
        } while (manager_get_job(m, id));

        _cleanup_(job_freep) Job *nj = job_new(id, t, owner, now(CLOCK_REALTIME));
        if (!nj || free_and_strdup(&nj->display_name, name) < 0)
                return -ENOMEM;
        nj->manager = m;

        r = job_persist(m, nj, false);
        if (r < 0)
                return bus_error_set_errnof(error, -r, "Cannot record the new job: %s", store_last_error(m->store));
        r = hashmap_put(m->jobs, nj->hex, nj);
        if (r < 0)
                return r;
        m->n_live_jobs++;
        log_info("Job %s created by uid %u: '%s'.", nj->id, (unsigned) owner, nj->display_name);
        *ret = TAKE_PTR(nj);
        return 0;
}

static bool job_has_local_name(Job *j, const char *path) {
        for (unsigned i = 0; i < j->n_files; i++)
                if (streq(j->files[i]->local_name, path) || streq(j->files[i]->temp_name, path))
                        return true;
        return false;
}

static int make_temp_name(Job *j, const char *local, char **ret) {
        _cleanup_free_ char *copy = strdup(local);
        if (!copy)
                return -ENOMEM;
        const char *dir = dirname(copy);
        for (unsigned attempt = 0; attempt < 16; attempt++) {
                uint32_t x;
                char *p;
                if (getrandom(&x, sizeof(x), 0) != sizeof(x))
                        return -EIO;
                if (asprintf(&p, "%s/.BIT%08" PRIX32 ".TMP", streq(dir, "/") ? "" : dir, x) < 0)
                        return -ENOMEM;
                if (!job_has_local_name(j, p)) {
                        *ret = p;
                        return 0;
                }
                free(p);
        }
        return -EEXIST;
}

static int map_validation_error(sd_bus_error *error, int r, const char *msg) {
        if (r == -E2BIG)
                return sd_bus_error_setf(error, BITS_ERROR_STRING_TOO_LONG, "%s.", strempty(msg));
        return sd_bus_error_setf(error, SD_BUS_ERROR_INVALID_ARGS, "%s.", strempty(msg));
}

/* ---- calls on a job, and the file work they need ---- */

typedef enum JobOpKind {
        JOB_OP_ADD_FILES,
        JOB_OP_COMPLETE,
        JOB_OP_CANCEL,
        JOB_OP_TAKE_OWNERSHIP,
} JobOpKind;

/* Steps of an operation's file work, each one request to the owner's worker. */
typedef enum JobOpStep {
        STEP_CHECK_DIR,
        STEP_CHECK_TARGET,
        STEP_RENAME,
        STEP_UNLINK,
} JobOpStep;

struct JobOp {
        Manager *manager;
        Job *job;
        JobOpKind kind;
        sd_bus_message *msg;   /* answered when the operation ends */
        Identity id;
        FileOpsRequest *request;
        JobOpStep step;
        unsigned i;            /* the file (or the new entry) being worked on */

        /* AddFile/AddFileSet: the entries, pointing into msg */
        char **remote, **local;
        unsigned n;

        /* Complete */
        bool partial;
        unsigned undeleted;

        /* TakeOwnership: the new owner (op->id is the old one's while its files are removed) */
        Identity new_id;
};

static JobOp *job_op_free(JobOp *op) {
        if (!op)
                return NULL;
        file_ops_request_cancel(op->request);
        sd_bus_message_unref(op->msg);
        free(op->remote);
        free(op->local);
        return mfree(op);
}

static void job_run_parked(Manager *m, Job *j);

/* Ends the job's operation with a reply (NULL: `error` is the reply), then answers the calls
 * that waited for it. */
static void job_op_end(JobOp *op, sd_bus_message *reply, const sd_bus_error *error) {
        Manager *m = op->manager;
        Job *j = op->job;
        JobRuntime *rt = j->runtime;
        int r;

        if (reply)
                r = sd_bus_send(NULL, reply, NULL);
        else
                r = sd_bus_reply_method_error(op->msg, error);
        if (r < 0)
                log_debug_errno(r, "Job %s: cannot send the reply: %m", j->id);
        rt->op = job_op_free(rt->op);
        job_run_parked(m, j);
        manager_schedule(m);
}

static void job_op_fail(JobOp *op, sd_bus_error *error) {
        job_op_end(op, NULL, error);
}

static void job_op_failf(JobOp *op, const char *name, const char *format, ...) _printf_(3, 4);
static void job_op_failf(JobOp *op, const char *name, const char *format, ...) {
        _cleanup_(sd_bus_error_free) sd_bus_error error = SD_BUS_ERROR_NULL;
        _cleanup_free_ char *msg = NULL;
        va_list ap;

        va_start(ap, format);
        if (vasprintf(&msg, format, ap) < 0)
                msg = NULL;
        va_end(ap);
        (void) sd_bus_error_set(&error, name, msg ?: "Out of memory.");
        job_op_fail(op, &error);
}

static void job_op_fail_errno(JobOp *op, int r, const char *what) {
        _cleanup_(sd_bus_error_free) sd_bus_error error = SD_BUS_ERROR_NULL;
        bus_error_set_errnof(&error, r, "%s: %s.", what, strerror(abs(r)));
        job_op_fail(op, &error);
}

static int run_call(Manager *m, Job *j, sd_bus_message *msg, JobCallHandler handler) {
        _cleanup_(sd_bus_error_free) sd_bus_error error = SD_BUS_ERROR_NULL;
        int r = handler(m, j, msg, &error);
        if (r == -ENOKEY && !sd_bus_error_is_set(&error))
                sd_bus_error_setf(&error, SD_BUS_ERROR_ACCESS_DENIED,
                                  "Job %s needs a helper token for its local files (HelperTokenFlags 0x%x) "
                                  "and has none: call SetHelperToken or clear the flags.", j->id, j->helper_token_flags);
        if (r < 0) {
                if (!sd_bus_error_is_set(&error))
                        bus_error_set_errnof(&error, r, "Job %s: %s", j->id, strerror(-r));
                return sd_bus_reply_method_error(msg, &error);
        }
        return r;
}

static void job_run_parked(Manager *m, Job *j) {
        JobRuntime *rt = j->runtime;
        while (rt && !rt->op && rt->n_parked > 0) {
                ParkedCall c = rt->parked[0];
                memmove(rt->parked, rt->parked + 1, (rt->n_parked - 1) * sizeof(ParkedCall));
                rt->n_parked--;
                (void) run_call(m, j, c.msg, c.handler);
                sd_bus_message_unref(c.msg);
        }
}

int manager_job_call(Manager *m, Job *j, sd_bus_message *msg, JobCallHandler handler) {
        JobRuntime *rt = job_runtime(j);

        if (!rt)
                return -ENOMEM;
        if (!rt->op && rt->n_parked == 0)
                return run_call(m, j, msg, handler) < 0 ? -EIO : 1;

        /* File work of an earlier call is in flight: keep the order, but bounded. */
        if (rt->n_parked >= JOB_PARKED_CALLS_MAX)
                return sd_bus_reply_method_errorf(msg, SD_BUS_ERROR_LIMITS_EXCEEDED,
                                                  "Job %s has %u calls waiting already.", j->id, rt->n_parked);
        ParkedCall *p = reallocarray(rt->parked, rt->n_parked + 1, sizeof(ParkedCall));
        if (!p)
                return -ENOMEM;
        rt->parked = p;
        rt->parked[rt->n_parked++] = (ParkedCall) { .msg = sd_bus_message_ref(msg), .handler = handler };
        return 1;
}

static int job_op_new(Manager *m, Job *j, JobOpKind kind, sd_bus_message *msg, JobOp **ret) {
        JobRuntime *rt = job_runtime(j);
        JobOp *op;
        int r;

        if (!rt)
                return -ENOMEM;
        op = calloc(1, sizeof(JobOp));
        if (!op)
                return -ENOMEM;
        *op = (JobOp) { .manager = m, .job = j, .kind = kind, .msg = sd_bus_message_ref(msg) };
        r = job_identity(j, HELPER_TOKEN_LOCAL_FILE, &op->id);
        if (r == -ENOKEY && kind == JOB_OP_CANCEL)
                r = identity_for_job(j, &op->id); /* cancelling must always be possible: as the owner then */
        if (r < 0) {
                job_op_free(op);
                return r;
        }
        rt->op = op;
        *ret = op;
        return 0;
}

static void job_op_continue(JobOp *op);

static void on_job_op_file_done(FileOpsRequest *req, int result, void *userdata);

static void job_op_submit(JobOp *op, FileOp fop, const char *path, const char *path2) {
        int r = file_ops_submit(op->manager->file_ops, &op->id, fop, path, path2, on_job_op_file_done, op, &op->request);
        if (r < 0)
                job_op_fail_errno(op, r, "Cannot start file work as the job owner");
}

/* -- AddFile / AddFileSet -- */

static void add_files_commit(JobOp *op) {
        _cleanup_(sd_bus_message_unrefp) sd_bus_message *reply = NULL;
        Manager *m = op->manager;
        Job *j = op->job;
        BitsFile **files;
        unsigned made;
        int r;

        files = calloc(op->n, sizeof(BitsFile *));
        if (!files)
                return job_op_fail_errno(op, -ENOMEM, "Cannot add the files");
        for (made = 0; made < op->n; made++) {
                _cleanup_free_ char *temp = NULL;
                r = make_temp_name(j, op->local[made], &temp);
                if (r < 0)
                        goto fail;
                files[made] = bits_file_new(op->remote[made], op->local[made], temp);
                if (!files[made]) {
                        r = -ENOMEM;
                        goto fail;
                }
                files[made]->job = j;
                files[made]->index = j->n_files + made;
        }

        j->modification_time = now(CLOCK_REALTIME);
        r = store_begin(m->store);
        for (unsigned i = 0; r >= 0 && i < op->n; i++)
                r = store_save_file(m->store, files[i]);
        if (r >= 0)
                r = store_save_job(m->store, j);
        if (r >= 0)
                r = store_commit(m->store);
        else
                store_rollback(m->store);
        if (r >= 0)
                r = job_append_files(j, files, op->n);
        if (r >= 0)
                r = sd_bus_message_new_method_return(op->msg, &reply);
        if (r < 0)
                goto fail;
        free(files);
        log_debug("Job %s: %u file(s) added, %u in all.", j->id, op->n, j->n_files);
        notify_job_modified(m, j);
        job_op_end(op, reply, NULL);
        return;
fail:
        for (unsigned i = 0; i < made; i++)
                bits_file_free(files[i]);
        free(files);
        job_op_fail_errno(op, r, "Cannot record the files");
}

static void add_files_continue(JobOp *op, int result) {
        _cleanup_free_ char *copy = NULL;
        const char *local = op->local[op->i];

        switch (op->step) {
        case STEP_CHECK_DIR:
                copy = strdup(local);
                if (!copy)
                        return job_op_fail_errno(op, -ENOMEM, "Cannot check the directory");
                if (result == -EACCES || result == -EPERM)
                        return job_op_failf(op, SD_BUS_ERROR_ACCESS_DENIED, "Directory '%s' is not writable by uid %u.",
                                            dirname(copy), (unsigned) op->id.uid);
                if (result < 0)
                        return job_op_failf(op, SD_BUS_ERROR_INVALID_ARGS, "Directory '%s' of '%s' is not usable: %s.",
                                            dirname(copy), local, strerror(-result));
                op->step = STEP_CHECK_TARGET;
                return job_op_submit(op, FILE_OP_CHECK_TARGET, local, NULL);
        case STEP_CHECK_TARGET:
                if (result == -EACCES || result == -EPERM)
                        return job_op_failf(op, SD_BUS_ERROR_ACCESS_DENIED, "Existing file '%s' is not writable by uid %u.",
                                            local, (unsigned) op->id.uid);
                if (result < 0)
                        return job_op_failf(op, SD_BUS_ERROR_INVALID_ARGS, "Local name '%s' is not usable: %s.",
                                            local, strerror(-result));
                if (++op->i == op->n)
                        return add_files_commit(op);
                op->step = STEP_CHECK_DIR;
                copy = strdup(op->local[op->i]);
                if (!copy)
                        return job_op_fail_errno(op, -ENOMEM, "Cannot check the directory");
                return job_op_submit(op, FILE_OP_CHECK_DIR, dirname(copy), NULL);
        default:
                assert_not_reached();
        }
}

/* Checks everything that needs no file system, then checks the directories and targets as the
 * owner (asynchronously) and only then records the files. */
static int add_files_start(Manager *m, Job *j, sd_bus_message *msg, char **remote, char **local, unsigned n,
                           sd_bus_error *error) {
        _cleanup_free_ char *copy = NULL;
        JobOp *op;
        int r;

        if (job_state_is_final(j->state))
                return sd_bus_error_setf(error, BITS_ERROR_INVALID_STATE, "Job %s is %s.", j->id, job_state_to_string(j->state));
        if (n == 0)
                return sd_bus_error_set(error, SD_BUS_ERROR_INVALID_ARGS, "No files given.");
        if (j->type != JOB_DOWNLOAD && j->n_files + n > 1)
                return sd_bus_error_setf(error, BITS_ERROR_TOO_MANY_FILES, "An upload job takes exactly one file.");
        unsigned limit = manager_uid_is_exempt(j->owner) ? FILES_PER_JOB_HARD_MAX : m->config.max_files_per_job;
        if (n > limit || j->n_files + n > limit)
                return sd_bus_error_setf(error, BITS_ERROR_TOO_MANY_FILES_IN_JOB,
                                         "Job %s has %u files, %u more would exceed the limit of %u.", j->id,
                                         j->n_files, n, limit);

        for (unsigned i = 0; i < n; i++) {
                _cleanup_free_ char *msg_text = NULL;
                r = validate_remote_name(remote[i], &msg_text);
                if (r < 0)
                        return map_validation_error(error, r, msg_text);
                r = validate_local_path(local[i], &msg_text);
                if (r < 0)
                        return map_validation_error(error, r, msg_text);
                if (job_has_local_name(j, local[i]))
                        return sd_bus_error_setf(error, SD_BUS_ERROR_INVALID_ARGS,
                                                 "Local name '%s' is already used by a file of job %s.", local[i], j->id);
                for (unsigned k = 0; k < i; k++)
                        if (streq(local[k], local[i]))
                                return sd_bus_error_setf(error, SD_BUS_ERROR_INVALID_ARGS,
                                                         "Local name '%s' is given twice.", local[i]);
        }

        r = job_op_new(m, j, JOB_OP_ADD_FILES, msg, &op);
        if (r < 0)
                return r;
        op->remote = calloc(n, sizeof(char *));
        op->local = calloc(n, sizeof(char *));
        if (!op->remote || !op->local) {
                job_runtime(j)->op = job_op_free(op);
                return -ENOMEM;
        }
        memcpy(op->remote, remote, n * sizeof(char *));
        memcpy(op->local, local, n * sizeof(char *));
        op->n = n;
        op->step = STEP_CHECK_DIR;
        copy = strdup(local[0]);
        if (!copy) {
                job_runtime(j)->op = job_op_free(op);
                return -ENOMEM;
        }
        r = file_ops_submit(m->file_ops, &op->id, FILE_OP_CHECK_DIR, dirname(copy), NULL, on_job_op_file_done, op,
                            &op->request);
        if (r < 0) {
                job_runtime(j)->op = job_op_free(op);
                return bus_error_set_errnof(error, r, "Cannot start file work as uid %u: %s.", (unsigned) j->owner,
                                            strerror(-r));
        }
        return 1;
}

int manager_call_add_file(Manager *m, Job *j, sd_bus_message *msg, sd_bus_error *error) {
        const char *remote, *local;
        int r = sd_bus_message_read(msg, "ss", &remote, &local);
        if (r < 0)
                return r;
        return add_files_start(m, j, msg, (char **) &remote, (char **) &local, 1, error);
}

#define ADD_FILE_SET_MAX 100000U /* bound before any allocation; the job's own limit is checked later */

int manager_call_add_file_set(Manager *m, Job *j, sd_bus_message *msg, sd_bus_error *error) {
        _cleanup_free_ char **remote = NULL, **local = NULL;
        size_t n = 0, a = 0;
        const char *rn, *ln;
        int r;

        r = sd_bus_message_enter_container(msg, 'a', "(ss)");
        if (r < 0)
                return r;
        while ((r = sd_bus_message_read(msg, "(ss)", &rn, &ln)) > 0) {
                if (n >= ADD_FILE_SET_MAX)
                        return sd_bus_error_setf(error, BITS_ERROR_TOO_MANY_FILES_IN_JOB,
                                                 "More than %u files in one AddFileSet call.", ADD_FILE_SET_MAX);
                if (n == a) {
                        a = a ? a * 2 : 16;
                        char **x = reallocarray(remote, a, sizeof(char *)), **y;
                        if (!x)
                                return -ENOMEM;
                        remote = x;
                        y = reallocarray(local, a, sizeof(char *));
                        if (!y)
                                return -ENOMEM;
                        local = y;
                }
                /* The strings live in the message, which the operation keeps until it replies. */
                remote[n] = (char *) rn;
                local[n] = (char *) ln;
                n++;
        }
        if (r < 0)
                return r;
        r = sd_bus_message_exit_container(msg);
        if (r < 0)
                return r;
        return add_files_start(m, j, msg, remote, local, (unsigned) n, error);
}

/* -- Complete / Cancel -- */

static void finalize_and_reply(JobOp *op, JobState final) {
        _cleanup_(sd_bus_message_unrefp) sd_bus_message *reply = NULL;
        Job *j = op->job;
        int r;

        r = job_finalize(op->manager, j, final);
        if (r < 0)
                return job_op_fail_errno(op, r, "Cannot record the state");
        if (final == JOB_ACKNOWLEDGED)
                r = sd_bus_message_new_method_return(op->msg, &reply) < 0 ? -ENOMEM
                    : sd_bus_message_append(reply, "s", op->undeleted > 0 ? "unable-to-delete-files"
                                                        : op->partial ? "partial" : "complete");
        else
                r = sd_bus_message_new_method_return(op->msg, &reply);
        if (r < 0)
                return job_op_fail_errno(op, r, "Cannot reply");
        job_op_end(op, reply, NULL);
}

/* Removes temporary files as the owner, one request at a time, then finalizes. */
static void remove_temps_continue(JobOp *op) {
        Job *j = op->job;
        for (; op->i < j->n_files; op->i++) {
                BitsFile *f = j->files[op->i];
                if (f->completed || !f->temp_created)
                        continue;
                op->step = STEP_UNLINK;
                return job_op_submit(op, FILE_OP_UNLINK, f->temp_name, NULL);
        }
        finalize_and_reply(op, op->kind == JOB_OP_COMPLETE ? JOB_ACKNOWLEDGED : JOB_CANCELLED);
}

/* Renames each transferred file into place as the owner: check the final name, then rename. */
static void complete_continue(JobOp *op) {
        Job *j = op->job;
        for (; op->i < j->n_files; op->i++) {
                BitsFile *f = j->files[op->i];
                if (f->completed || !bits_file_is_transferred(f))
                        continue;
                op->step = STEP_CHECK_TARGET;
                return job_op_submit(op, FILE_OP_CHECK_TARGET, f->local_name, NULL);
        }
        op->i = 0;
        remove_temps_continue(op);
}

static void job_op_continue(JobOp *op) {
        if (op->kind == JOB_OP_COMPLETE)
                complete_continue(op);
        else
                remove_temps_continue(op);
}

static void take_ownership_continue(JobOp *op, int result);

static void on_job_op_file_done(FileOpsRequest *req, int result, void *userdata) {
        JobOp *op = userdata;
        Manager *m = op->manager;
        Job *j = op->job;
        BitsFile *f = op->i < j->n_files ? j->files[op->i] : NULL;

        op->request = NULL;
        if (op->kind == JOB_OP_ADD_FILES)
                return add_files_continue(op, result);
        if (op->kind == JOB_OP_TAKE_OWNERSHIP)
                return take_ownership_continue(op, result);

        switch (op->step) {
        case STEP_CHECK_TARGET:
                if (result >= 0) {
                        op->step = STEP_RENAME;
                        return job_op_submit(op, FILE_OP_RENAME, f->temp_name, f->local_name);
                }
                _fallthrough_;
        case STEP_RENAME:
                if (result < 0) {
                        /* The files renamed so far stay available; the job waits for another Complete or a Cancel. */
                        (void) job_persist(m, j, true);
                        _cleanup_(sd_bus_error_free) sd_bus_error error = SD_BUS_ERROR_NULL;
                        bus_error_set_errnof(&error, result, "Cannot rename '%s' to '%s' as uid %u: %s.", f->temp_name,
                                             f->local_name, (unsigned) op->id.uid, strerror(-result));
                        return job_op_fail(op, &error);
                }
                f->completed = true;
                f->temp_created = false;
                (void) job_persist(m, j, true);
                op->i++;
                return job_op_continue(op);
        case STEP_UNLINK:
                if (result < 0 && result != -ENOENT) {
                        log_warning_errno(result, "Job %s: cannot remove '%s' as uid %u: %m", j->id, f->temp_name,
                                          (unsigned) op->id.uid);
                        op->undeleted++;
                } else
                        f->temp_created = false;
                op->i++;
                return remove_temps_continue(op);
        default:
                assert_not_reached();
        }
}

/* Complete and Cancel stop the transfer at once, and take the job out of the scheduler's view
 * (queued, active, waiting to retry) while its files are dealt with. */
static int job_stop_for_op(Manager *m, Job *j) {
        job_stop_transfer(m, j);
        if (j->state != JOB_SUSPENDED && j->state != JOB_TRANSFERRED && j->state != JOB_ERROR)
                job_enter_state(m, j, JOB_SUSPENDED);
        return job_persist(m, j, true);
}

int manager_call_cancel(Manager *m, Job *j, sd_bus_message *msg, sd_bus_error *error) {
        JobOp *op;
        int r;

        if (job_state_next(j->state, JOB_EVENT_CANCEL, false) < 0)
                return sd_bus_error_setf(error, BITS_ERROR_INVALID_STATE, "Job %s is %s.", j->id, job_state_to_string(j->state));
        r = job_op_new(m, j, JOB_OP_CANCEL, msg, &op);
        if (r < 0)
                return r;
        (void) job_stop_for_op(m, j);
        remove_temps_continue(op);
        return 1;
}

int manager_call_complete(Manager *m, Job *j, sd_bus_message *msg, sd_bus_error *error) {
        JobOp *op;
        int r;

        if (job_state_next(j->state, JOB_EVENT_COMPLETE, false) < 0)
                return sd_bus_error_setf(error, BITS_ERROR_INVALID_STATE, "Job %s is %s.", j->id, job_state_to_string(j->state));
        r = job_op_new(m, j, JOB_OP_COMPLETE, msg, &op);
        if (r < 0)
                return r;
        (void) job_stop_for_op(m, j);
        for (unsigned i = 0; i < j->n_files; i++)
                op->partial = op->partial || !bits_file_is_transferred(j->files[i]);
        complete_continue(op);
        return 1;
}

/* -- TakeOwnership -- */

/* Paths that mean something else to another user: the old owner's runtime directory, and file
 * systems the old owner mounted with FUSE (others see them differently or not at all). */
static const char *job_path_private_to(Job *j, uid_t uid) {
        _cleanup_free_ char *mountinfo = NULL;
        _cleanup_fclose_ FILE *mi = fopen("/proc/self/mountinfo", "re");
        char prefix[64];
        size_t n = 0;

        if (mi) {
                /* Bounded: a table larger than this is cut, never a reason to fail. */
                mountinfo = calloc(1, 4 << 20);
                if (mountinfo)
                        n = fread(mountinfo, 1, (4 << 20) - 1, mi);
                if (mountinfo)
                        mountinfo[n] = '\0';
        }
        snprintf(prefix, sizeof(prefix), "/run/user/%u/", (unsigned) uid);
        for (unsigned i = 0; i < j->n_files; i++) {
                BitsFile *f = j->files[i];
                _cleanup_free_ char *source = NULL, *mp = NULL;
                if (f->completed)
                        continue;
                if (remote_is_local_file(f->remote_name))
                        (void) remote_local_path(f->remote_name, &source);
                const char *paths[] = { f->local_name, source };
                for (size_t k = 0; k < ELEMENTSOF(paths); k++) {
                        if (!paths[k])
                                continue;
                        if (strncmp(paths[k], prefix, strlen(prefix)) == 0)
                                return k == 0 ? f->local_name : f->remote_name;
                        if (mountinfo && mountinfo_fuse_of_user(mountinfo, paths[k], uid, &mp) > 0)
                                return k == 0 ? f->local_name : f->remote_name;
                }
        }
        return NULL;
}

static void take_ownership_commit(JobOp *op) {
        _cleanup_(sd_bus_message_unrefp) sd_bus_message *reply = NULL;
        Manager *m = op->manager;
        Job *j = op->job;
        uid_t old = j->owner;
        int r;

        /* Partial files start again as the new owner, under new names (temporary files are
         * only ever reopened when they belong to the job's owner). */
        for (unsigned i = 0; i < j->n_files; i++) {
                BitsFile *f = j->files[i];
                _cleanup_free_ char *temp = NULL;
                if (f->completed || bits_file_is_transferred(f) || (!f->temp_created && f->bytes_checkpoint == 0))
                        continue;
                r = make_temp_name(j, f->local_name, &temp);
                if (r < 0)
                        return job_op_fail_errno(op, r, "Cannot name the temporary file");
                free_and_replace(f->temp_name, temp);
                f->bytes_transferred = f->bytes_checkpoint = 0;
                f->bytes_total = BYTES_UNKNOWN;
                f->temp_created = false;
                f->validator = mfree(f->validator);
        }
        j->owner = op->new_id.uid;
        /* BITS: TakeOwnership removes what acted with the old owner's rights. */
        notify_job_clear_cmdline(m, j);
        j->modification_time = now(CLOCK_REALTIME);
        r = job_persist(m, j, true);
        if (r < 0) {
                j->owner = old;
                return job_op_fail_errno(op, r, "Cannot record the new owner");
        }
        log_info("Job %s: uid %u took ownership from uid %u.", j->id, (unsigned) j->owner, (unsigned) old);
        notify_job_modified(m, j);
        r = sd_bus_message_new_method_return(op->msg, &reply);
        if (r < 0)
                return job_op_fail_errno(op, r, "Cannot reply");
        job_op_end(op, reply, NULL);
}

/* Step 1: as the new owner, every destination directory must take new files (STEP_CHECK_DIR)
 * and every existing temporary file must be writable (STEP_CHECK_TARGET).
 * Step 2: as the old owner, partial temporary files are removed (STEP_UNLINK). */
static void take_ownership_next(JobOp *op) {
        Job *j = op->job;

        while (op->step != STEP_UNLINK && op->i < j->n_files) {
                BitsFile *f = j->files[op->i];
                _cleanup_free_ char *copy = NULL;
                const char *path;
                FileOp fop;

                if (f->completed || (op->step == STEP_CHECK_TARGET && !f->temp_created)) {
                        op->i++;
                        continue;
                }
                if (op->step == STEP_CHECK_DIR) {
                        copy = strdup(f->local_name);
                        if (!copy)
                                return job_op_fail_errno(op, -ENOMEM, "Cannot check the directory");
                        path = dirname(copy);
                        fop = FILE_OP_CHECK_DIR;
                } else {
                        path = f->temp_name;
                        fop = FILE_OP_CHECK_TARGET;
                }
                int r = file_ops_submit(op->manager->file_ops, &op->new_id, fop, path, NULL, on_job_op_file_done, op,
                                        &op->request);
                if (r < 0)
                        return job_op_fail_errno(op, r, "Cannot start file work as the new owner");
                return;
        }
        if (op->step == STEP_CHECK_DIR) {
                op->step = STEP_CHECK_TARGET;
                op->i = 0;
                return take_ownership_next(op);
        }
        if (op->step == STEP_CHECK_TARGET) {
                op->step = STEP_UNLINK;
                op->i = 0;
        }
        for (; op->i < j->n_files; op->i++) {
                BitsFile *f = j->files[op->i];
                if (f->completed || bits_file_is_transferred(f) || !f->temp_created)
                        continue;
                return job_op_submit(op, FILE_OP_UNLINK, f->temp_name, NULL);
        }
        take_ownership_commit(op);
}

static void take_ownership_continue(JobOp *op, int result) {
        Job *j = op->job;
        BitsFile *f = j->files[op->i];

        if (op->step == STEP_CHECK_DIR && result < 0) {
                _cleanup_free_ char *copy = strdup(f->local_name);
                return job_op_failf(op, BITS_ERROR_NEW_OWNER_NO_FILE_ACCESS,
                                    "uid %u cannot create files in '%s': %s.", (unsigned) op->new_id.uid,
                                    copy ? dirname(copy) : f->local_name, strerror(-result));
        }
        if (op->step == STEP_CHECK_TARGET && result < 0 && result != -ENOENT)
                return job_op_failf(op, BITS_ERROR_NEW_OWNER_NO_FILE_ACCESS,
                                    "uid %u cannot write the temporary file '%s': %s.", (unsigned) op->new_id.uid,
                                    f->temp_name, strerror(-result));
        if (op->step == STEP_UNLINK && result < 0 && result != -ENOENT)
                log_warning_errno(result, "Job %s: cannot remove '%s' as uid %u: %m", j->id, f->temp_name,
                                  (unsigned) op->id.uid);
        op->i++;
        take_ownership_next(op);
}

int manager_call_take_ownership(Manager *m, Job *j, sd_bus_message *msg, sd_bus_error *error) {
        const char *private;
        uid_t uid;
        JobOp *op;
        int r;

        if (job_state_is_final(j->state))
                return sd_bus_error_setf(error, BITS_ERROR_INVALID_STATE, "Job %s is %s.", j->id, job_state_to_string(j->state));
        r = bus_caller_uid(m, msg, &uid);
        if (r < 0)
                return r;
        if (uid == j->owner) /* nothing to take */
                return sd_bus_reply_method_return(msg, NULL) < 0 ? -EIO : 0;
        char what[80];
        snprintf(what, sizeof(what), "Taking ownership of job %s", j->id);
        r = auth_require(m->auth, msg, uid, AUTH_ACTION_TAKE_OWNERSHIP, what, error);
        if (r == -EINPROGRESS)
                return 1; /* dispatched again once polkit answered */
        if (r < 0)
                return r;
        private = job_path_private_to(j, j->owner);
        if (private)
                return sd_bus_error_setf(error, BITS_ERROR_NEW_OWNER_DIFF_MAPPING,
                                         "'%s' lies in a directory private to uid %u.", private, (unsigned) j->owner);

        r = job_op_new(m, j, JOB_OP_TAKE_OWNERSHIP, msg, &op);
        if (r < 0)
                return r;
        r = identity_from_uid(uid, &op->new_id);
        if (r < 0 && r != -ESRCH) {
                job_runtime(j)->op = job_op_free(op);
                return bus_error_set_errnof(error, r, "Cannot look up the groups of uid %u.", (unsigned) uid);
        }
        /* Stop it while its files change hands; it goes on as the new owner afterwards. */
        JobState before = j->state;
        job_stop_transfer(m, j);
        if (job_state_is_active(before))
                job_enter_state(m, j, JOB_QUEUED);
        op->step = STEP_CHECK_DIR;
        op->i = 0;
        take_ownership_next(op);
        return 1;
}

/* -- helper tokens -- */

/* The identity at the other end of a connected AF_UNIX socket: who had to connect to it. */
static int identity_from_socket(int fd, Identity *ret) {
        struct ucred cred;
        socklen_t len = sizeof(cred);
        int domain = 0, type = 0;
        socklen_t dl = sizeof(domain), tl = sizeof(type);
        gid_t groups[IDENTITY_GROUPS_MAX];
        socklen_t gl = sizeof(groups);

        if (getsockopt(fd, SOL_SOCKET, SO_DOMAIN, &domain, &dl) < 0 || getsockopt(fd, SOL_SOCKET, SO_TYPE, &type, &tl) < 0)
                return -ENOTSOCK;
        if (domain != AF_UNIX)
                return -EAFNOSUPPORT;
        /* A listening socket reports its own listener as the peer: nobody had to connect. */
        int listening = 0;
        socklen_t ll = sizeof(listening);
        if (getsockopt(fd, SOL_SOCKET, SO_ACCEPTCONN, &listening, &ll) < 0 || listening)
                return -ENOTCONN;
        if (getsockopt(fd, SOL_SOCKET, SO_PEERCRED, &cred, &len) < 0)
                return -errno;
        if (cred.pid <= 0 || cred.uid == (uid_t) -1)
                return -ENOTCONN;
        if (getsockopt(fd, SOL_SOCKET, SO_PEERGROUPS, groups, &gl) < 0)
                return errno == ERANGE ? -E2BIG : -errno;
        *ret = (Identity) { .uid = cred.uid, .gid = cred.gid, .n_groups = gl / sizeof(gid_t) };
        memcpy(ret->groups, groups, gl);
        return 0;
}

int manager_call_set_helper_token(Manager *m, Job *j, sd_bus_message *msg, sd_bus_error *error) {
        Identity id;
        uid_t uid;
        int fd, r;

        if (job_state_is_final(j->state))
                return sd_bus_error_setf(error, BITS_ERROR_INVALID_STATE, "Job %s is %s.", j->id, job_state_to_string(j->state));
        r = sd_bus_message_read(msg, "h", &fd);
        if (r < 0)
                return r;
        r = identity_from_socket(fd, &id);
        if (r < 0)
                return sd_bus_error_setf(error, SD_BUS_ERROR_INVALID_ARGS,
                                         "The helper token must be a connected AF_UNIX socket: %s.", strerror(-r));
        r = bus_caller_uid(m, msg, &uid);
        if (r < 0)
                return r;
        if (id.uid == 0 && uid != 0) {
                /* BITS: a non-administrator cannot set an administrator's token. */
                r = auth_check_quiet(m->auth, msg, uid, AUTH_ACTION_MANAGE_ANY_JOB);
                if (r == -EINPROGRESS)
                        return 1;
                if (r <= 0)
                        return sd_bus_error_setf(error, SD_BUS_ERROR_ACCESS_DENIED,
                                                 "A helper token of root needs root or %s.", AUTH_ACTION_MANAGE_ANY_JOB);
        }
        JobRuntime *rt = job_runtime(j);
        if (!rt)
                return -ENOMEM;
        rt->has_token = true;
        rt->token = id;
        log_info("Job %s: helper token of uid %u set by uid %u.", j->id, (unsigned) id.uid, (unsigned) uid);
        return sd_bus_reply_method_return(msg, NULL) < 0 ? -EIO : 0;
}

int manager_call_clear_helper_token(Manager *m, Job *j, sd_bus_message *msg, sd_bus_error *error) {
        JobRuntime *rt = j->runtime;
        if (job_state_is_final(j->state))
                return sd_bus_error_setf(error, BITS_ERROR_INVALID_STATE, "Job %s is %s.", j->id, job_state_to_string(j->state));
        if (rt) {
                rt->has_token = false;
                rt->token = (Identity) {};
        }
        return sd_bus_reply_method_return(msg, NULL) < 0 ? -EIO : 0;
}

/* -- Resume / Suspend: no file work -- */

int manager_call_resume(Manager *m, Job *j, sd_bus_message *msg, sd_bus_error *error) {
        int next, r;

        if (job_state_is_final(j->state))
                return sd_bus_error_setf(error, BITS_ERROR_INVALID_STATE, "Job %s is %s.", j->id, job_state_to_string(j->state));
        if (j->n_files == 0)
                return sd_bus_error_setf(error, BITS_ERROR_EMPTY, "Job %s has no files.", j->id);
        next = job_state_next(j->state, JOB_EVENT_RESUME, job_next_pending_file(j) != NULL);
        if (next < 0)
                return sd_bus_error_setf(error, BITS_ERROR_INVALID_STATE, "Job %s is %s.", j->id, job_state_to_string(j->state));

        if (j->state == JOB_ERROR || j->state == JOB_TRANSIENT_ERROR || j->state == JOB_SUSPENDED) {
                job_error_info_clear(&j->error);
                j->no_progress_since = 0;
                j->active_usec = 0; /* Resume starts MaximumDownloadTime over */
        }
        if ((JobState) next != j->state) {
                JobState old = j->state;
                job_enter_state(m, j, (JobState) next);
                if (next == JOB_TRANSFERRED)
                        j->transfer_completion_time = now(CLOCK_REALTIME);
                r = job_persist(m, j, false);
                if (r < 0) {
                        job_enter_state(m, j, old);
                        return bus_error_set_errnof(error, r, "Cannot record the state: %s", store_last_error(m->store));
                }
        }
        return sd_bus_reply_method_return(msg, NULL) < 0 ? -EIO : 0;
}

int manager_call_suspend(Manager *m, Job *j, sd_bus_message *msg, sd_bus_error *error) {
        if (job_state_next(j->state, JOB_EVENT_SUSPEND, false) < 0)
                return sd_bus_error_setf(error, BITS_ERROR_INVALID_STATE, "Job %s is %s.", j->id, job_state_to_string(j->state));
        if (j->state != JOB_SUSPENDED) {
                /* Stopped before we answer, so BytesTransferred no longer moves once Suspend returned. */
                job_stop_transfer(m, j);
                job_enter_state(m, j, JOB_SUSPENDED);
                int r = job_persist(m, j, true);
                if (r < 0)
                        return bus_error_set_errnof(error, r, "Cannot record the state: %s", store_last_error(m->store));
        }
        return sd_bus_reply_method_return(msg, NULL) < 0 ? -EIO : 0;
}

/* ---- startup ---- */

static int load_job(Job *j, void *userdata) {
        Manager *m = userdata;
        int r;

        j->manager = m;
        if (job_state_is_final(j->state)) {
                /* Finalized jobs are deleted in the same transaction; this one was not. */
                log_warning("Job %s is %s in the store, dropping it.", j->id, job_state_to_string(j->state));
                job_free(j);
                return 0;
        }
        r = hashmap_put(m->jobs, j->hex, j);
        if (r < 0) {
                job_free(j);
                return r;
        }
        m->n_live_jobs++;

        /* A job that was running when the daemon stopped continues from its last checkpoint. */
        if (job_state_is_active(j->state))
                j->state = JOB_QUEUED;
        if (j->state == JOB_QUEUED)
                j->queued_seq = ++m->queue_seq;
        if (j->state == JOB_TRANSIENT_ERROR)
                job_arm_retry(m, j);
        return 0;
}

static int move_aside(const char *path) {
        char aside[PATH_MAX], from[PATH_MAX + 8], to[PATH_MAX + 8];
        uint64_t t = (uint64_t) time(NULL);

        snprintf(aside, sizeof(aside), "%s.corrupt-%" PRIu64, path, t);
        if (rename(path, aside) < 0)
                return -errno;
        /* The write-ahead log belongs to the damaged file: it must never be applied to a new one. */
        for (size_t i = 0; i < 2; i++) {
                const char *suffix = i == 0 ? "-wal" : "-shm";
                snprintf(from, sizeof(from), "%s%s", path, suffix);
                snprintf(to, sizeof(to), "%s%s", aside, suffix);
                if (rename(from, to) < 0 && errno != ENOENT)
                        return -errno;
        }
        log_error("Database '%s' is damaged; moved it aside to '%s' and starting with an empty one.", path, aside);
        return 0;
}

static int open_store(Manager *m) {
        _cleanup_free_ char *path = NULL;
        int r;

        if (mkdir(m->state_dir, 0700) < 0 && errno != EEXIST)
                return log_error_errno(errno, "Cannot create state directory '%s': %m", m->state_dir);
        if (asprintf(&path, "%s/bitsd.db", m->state_dir) < 0)
                return log_oom();

        r = store_open(path, &m->store);
        if (r == -EBADMSG) {
                r = move_aside(path);
                if (r < 0)
                        return log_error_errno(r, "Database '%s' is damaged and cannot be moved aside: %m", path);
                r = store_open(path, &m->store);
        }
        if (r < 0)
                return log_error_errno(r, "Cannot use database '%s': %m", path);
        (void) chmod(path, 0600);

        r = store_load(m->store, load_job, m);
        if (r < 0)
                return log_error_errno(r, "Cannot load jobs from '%s': %m", path);
        log_info("Loaded %d job(s) from '%s'.", r, path);
        return 0;
}

static int on_gc(sd_event_source *s, uint64_t usec, void *userdata) {
        Manager *m = userdata;
        file_ops_gc(m->file_ops);
        (void) sd_event_source_set_time_relative(s, 10 * USEC_PER_SEC);
        return 0;
}

static int on_sighup(sd_event_source *s, const struct signalfd_siginfo *si, void *userdata) {
        log_notice("Received SIGHUP: configuration changes take effect when bitsd is restarted.");
        return 0;
}

static int on_sigterm(sd_event_source *s, const struct signalfd_siginfo *si, void *userdata) {
        Manager *m = userdata;
        log_info("Received %s, stopping.", si->ssi_signo == SIGTERM ? "SIGTERM" : "SIGINT");
        return sd_event_exit(m->event, 0);
}

int manager_new(Manager **ret) {
        _cleanup_(manager_freep) Manager *m = calloc(1, sizeof(Manager));
        int r;

        if (!m)
                return -ENOMEM;
        config_init(&m->config);
        m->jobs = hashmap_new();
        m->callers = hashmap_new();
        if (!m->jobs || !m->callers)
                return -ENOMEM;
        r = sd_event_default(&m->event);
        if (r < 0)
                return r;
        *ret = TAKE_PTR(m);
        return 0;
}

Manager *manager_free(Manager *m) {
        Job *j;

        if (!m)
                return NULL;
        if (m->jobs) {
                HASHMAP_FOREACH(j, m->jobs) {
                        /* Stopping a transfer flushes its data; record the checkpoint it reached. */
                        JobRuntime *rt = j->runtime;
                        if (rt && rt->transfer && m->store) {
                                rt->transfer = transfer_free(rt->transfer);
                                (void) job_persist(m, j, true);
                        }
                        manager_job_free(j);
                }
                hashmap_free(m->jobs);
        }
        bus_callers_free(m);
        notifier_free(m->notifier);
        auth_free(m->auth);
        hashmap_free(m->callers);
        sd_event_source_disable_unref(m->schedule_source);
        sd_event_source_disable_unref(m->login_source);
        sd_login_monitor_unref(m->login_monitor);
        sd_event_source_disable_unref(m->gc_timer);
        transfer_engine_free(m->engine);
        file_ops_free(m->file_ops);
        store_free(m->store);
        sd_bus_flush_close_unref(m->bus);
        sd_event_unref(m->event);
        free(m->bus_address);
        free(m->state_dir);
        free(m->config_path);
        return mfree(m);
}

int manager_startup(Manager *m) {
        static const TransferCallbacks callbacks = {
                .connected = on_transfer_connected,
                .checkpoint = on_transfer_checkpoint,
                .progress = on_transfer_progress,
                .finished = on_transfer_finished,
        };
        int r;

        r = config_load(&m->config, m->config_path ?: BITSD_CONFIG_FILE, !m->config_path);
        if (r < 0)
                return r;

        r = file_ops_new(&m->file_ops, 0, 0, 0);
        if (r >= 0)
                r = file_ops_attach_event(m->file_ops, m->event);
        if (r < 0)
                return log_error_errno(r, "Cannot set up file workers: %m");
        r = transfer_engine_new(m->event, &m->config, m->file_ops, &callbacks, m, &m->engine);
        if (r < 0)
                return log_error_errno(r, "Cannot set up the transfer engine: %m");
        r = auth_new(m, &m->auth);
        if (r < 0)
                return log_oom();
        r = notifier_new(m, &m->notifier);
        if (r < 0)
                return log_error_errno(r, "Cannot set up notifications: %m");

        r = sd_event_add_defer(m->event, &m->schedule_source, on_schedule, m);
        if (r < 0)
                return r;
        (void) sd_event_source_set_enabled(m->schedule_source, SD_EVENT_OFF);
        (void) sd_event_source_set_priority(m->schedule_source, SD_EVENT_PRIORITY_NORMAL + 10);
        (void) sd_event_source_set_description(m->schedule_source, "schedule");

        r = sd_event_add_time_relative(m->event, &m->gc_timer, CLOCK_MONOTONIC, 10 * USEC_PER_SEC, USEC_PER_SEC, on_gc, m);
        if (r < 0)
                return r;
        (void) sd_event_source_set_enabled(m->gc_timer, SD_EVENT_ON);

        sigset_t ss;
        sigemptyset(&ss);
        sigaddset(&ss, SIGTERM);
        sigaddset(&ss, SIGINT);
        sigaddset(&ss, SIGPIPE);
        sigaddset(&ss, SIGHUP);
        if (sigprocmask(SIG_BLOCK, &ss, NULL) < 0)
                return -errno;
        r = sd_event_add_signal(m->event, NULL, SIGTERM, on_sigterm, m);
        if (r >= 0)
                r = sd_event_add_signal(m->event, NULL, SIGINT, on_sigterm, m);
        if (r >= 0)
                r = sd_event_add_signal(m->event, NULL, SIGHUP, on_sighup, m);
        if (r < 0)
                return r;

        r = setup_session_tracking(m);
        if (r < 0)
                return r;

        r = open_store(m);
        if (r < 0)
                return r;

        r = bus_setup(m);
        if (r < 0)
                return r;

        manager_schedule(m);
        return 0;
}

int manager_run(Manager *m) {
        return sd_event_loop(m->event);
}
