/* SPDX-License-Identifier: LGPL-2.1-or-later */
/* Telling clients what happened to their jobs (see notify.h).
 *
 * Per job, a JobNotify record (created on demand, dropped with the job) holds the subscriber, the
 * pending coalesced notifications and the command-line state. Every signal is unicast: it carries
 * the subscriber's or a watcher's unique name as destination, so dbus-daemon delivers it to
 * nobody else. Signals are queued with sd_bus_send() and never waited for. */
#include <fcntl.h>
#include <grp.h>
#include <inttypes.h>
#include <limits.h>
#include <signal.h>
#include <sys/epoll.h>
#include <sys/prctl.h>
#include <sys/syscall.h>
#include <sys/wait.h>
#include <unistd.h>

#include "bus-errors.h"
#include "bus-object.h"
#include "log.h"
#include "manager.h"
#include "notify.h"

#ifndef P_PIDFD
#define P_PIDFD 3
#endif

#define NOTIFY_TRANSFERRED 0x1U
#define NOTIFY_ERROR 0x2U
#define NOTIFY_DISABLE 0x4U
#define NOTIFY_MODIFICATION 0x8U
#define NOTIFY_FILE_TRANSFERRED 0x10U

/* Coalescing floor for an interval of 0 ms: one batch per 10 ms at most. */
#define NOTIFY_INTERVAL_MIN_USEC (10 * USEC_PER_MSEC)
/* Droppable signals (Modification, JobChanged) are not queued while this many messages wait. */
#define NOTIFY_QUEUE_MAX 4096U

#define WATCHERS_PER_UID_MAX 16U
#define WATCHERS_MAX 1024U

#define CMDLINE_ARGV_MAX 256U
#define CMDLINE_ARGV_BYTES_MAX 4000U
#define CMDLINE_OUTPUT_MAX (64U * 1024U)
#define CMDLINE_LINE_MAX 1024U
#define CMDLINE_RUNS_PER_UID_MAX 4U
#define CMDLINE_RUNS_MAX 64U
#define CMDLINE_BUSY_RETRY_USEC (1 * USEC_PER_SEC)
#define CMDLINE_PATH "PATH=/usr/local/bin:/usr/bin:/bin"

typedef struct CmdRun CmdRun;

typedef struct JobNotify {
        Notifier *notifier;
        Job *job;
        char *subscriber;                /* unique bus name, or NULL */
        bool mod_pending;                /* Modification owed to the subscriber */
        bool changed_pending;            /* JobChanged owed to the watchers */
        usec_t last_flush;               /* CLOCK_MONOTONIC */
        sd_event_source *flush_timer;
        sd_event_source *cmd_timer;      /* the command line is due (now, after a failure, or when a slot frees) */
        CmdRun *run;                     /* the command line running now */
        bool cmd_again;                  /* an event arrived while it ran: run it again afterwards */
} JobNotify;

struct CmdRun {
        Notifier *notifier;
        JobNotify *jn;                   /* NULL once the job is gone */
        char job_id[37];
        uid_t uid;
        pid_t pid;
        int pidfd;
        int out_fd;
        sd_event_source *exit_source;
        sd_event_source *out_source;
        sd_event_source *timeout_source;
        size_t output_bytes;
        bool output_truncated;
        size_t line_len;
        char line[CMDLINE_LINE_MAX];
        CmdRun *next, *prev;
};

typedef struct Watcher {
        char *name;
        uid_t uid;
        bool all;   /* authorized for manage-any-job when it started watching */
} Watcher;

static bool watcher_sees(Watcher *w, Job *j) {
        return w->all || bus_job_visible(j, w->uid);
}

struct Notifier {
        Manager *manager;
        Hashmap *jobs;                   /* job hex -> JobNotify */
        Hashmap *watchers;               /* unique name -> Watcher */
        CmdRun *runs;
        unsigned n_runs;
        sd_event_source *startup;
};

static void cmd_run_free(CmdRun *run, bool kill_it);
static void cmd_schedule(JobNotify *jn, usec_t delay);

/* ---- lifetime ---- */

static int on_startup(sd_event_source *s, void *userdata);

int notifier_new(Manager *m, Notifier **ret) {
        Notifier *n = calloc(1, sizeof(Notifier));
        int r;

        if (!n)
                return -ENOMEM;
        n->manager = m;
        n->jobs = hashmap_new();
        n->watchers = hashmap_new();
        if (!n->jobs || !n->watchers) {
                notifier_free(n);
                return -ENOMEM;
        }
        /* Runs on the first loop iteration, when the jobs are loaded. */
        r = sd_event_add_defer(m->event, &n->startup, on_startup, n);
        if (r < 0) {
                notifier_free(n);
                return r;
        }
        (void) sd_event_source_set_enabled(n->startup, SD_EVENT_ONESHOT);
        (void) sd_event_source_set_description(n->startup, "notify-startup");
        *ret = n;
        return 0;
}

static void job_notify_free(JobNotify *jn) {
        if (!jn)
                return;
        if (jn->run)
                jn->run->jn = NULL; /* it finishes on its own, without a retry */
        sd_event_source_disable_unref(jn->flush_timer);
        sd_event_source_disable_unref(jn->cmd_timer);
        free(jn->subscriber);
        free(jn);
}

Notifier *notifier_free(Notifier *n) {
        JobNotify *jn;
        Watcher *w;

        if (!n)
                return NULL;
        while (n->runs)
                cmd_run_free(n->runs, true);
        if (n->jobs) {
                HASHMAP_FOREACH(jn, n->jobs) {
                        hashmap_remove(n->jobs, jn->job->hex);
                        job_notify_free(jn);
                }
                hashmap_free(n->jobs);
        }
        if (n->watchers) {
                HASHMAP_FOREACH(w, n->watchers) {
                        hashmap_remove(n->watchers, w->name);
                        free(w->name);
                        free(w);
                }
                hashmap_free(n->watchers);
        }
        sd_event_source_disable_unref(n->startup);
        return mfree(n);
}

static JobNotify *job_notify_get(Notifier *n, Job *j) {
        JobNotify *jn = hashmap_get(n->jobs, j->hex);
        if (jn)
                return jn;
        jn = calloc(1, sizeof(JobNotify));
        if (!jn)
                return NULL;
        jn->notifier = n;
        jn->job = j;
        if (hashmap_put(n->jobs, j->hex, jn) < 0)
                return mfree(jn);
        return jn;
}

/* ---- sending ---- */

static bool flags_allow(const Job *j, uint32_t flag) {
        return !(j->notify_flags & NOTIFY_DISABLE) && (j->notify_flags & flag);
}

static bool queue_is_full(Notifier *n) {
        uint64_t q = 0;
        return sd_bus_get_n_queued_write(n->manager->bus, &q) >= 0 && q >= NOTIFY_QUEUE_MAX;
}

static int send_signal(Notifier *n, const char *destination, const char *path, const char *interface,
                       const char *member, const char *types, ...) {
        _cleanup_(sd_bus_message_unrefp) sd_bus_message *msg = NULL;
        sd_bus *bus = n->manager->bus;
        va_list ap;
        int r;

        if (!bus)
                return 0;
        r = sd_bus_message_new_signal(bus, &msg, path, interface, member);
        if (r >= 0)
                r = sd_bus_message_set_destination(msg, destination);
        if (r >= 0 && types) {
                va_start(ap, types);
                r = sd_bus_message_appendv(msg, types, ap);
                va_end(ap);
        }
        if (r >= 0)
                r = sd_bus_send(bus, msg, NULL);
        if (r < 0)
                log_warning_errno(r, "Cannot send %s to %s: %m", member, destination);
        return r;
}

static void send_transferred(Notifier *n, Job *j, const char *dest) {
        (void) send_signal(n, dest, j->object_path, BITS_JOB_INTERFACE, "Transferred", NULL);
}

static void send_error(Notifier *n, Job *j, const char *dest) {
        (void) send_signal(n, dest, j->object_path, BITS_JOB_INTERFACE, "Error", "sss",
                           error_context_to_string(j->error.context), strempty(j->error.code),
                           strempty(j->error.message));
}

static void send_job_changed(Notifier *n, Job *j) {
        Watcher *w;
        HASHMAP_FOREACH(w, n->watchers)
                if (watcher_sees(w, j) && !queue_is_full(n))
                        (void) send_signal(n, w->name, BITS_MANAGER_PATH, BITS_MANAGER_INTERFACE, "JobChanged", "ostt",
                                           j->object_path, job_state_to_string(j->state),
                                           job_bytes_transferred(j), job_bytes_total(j));
}

static void send_job_removed(Notifier *n, Job *j) {
        Watcher *w;
        HASHMAP_FOREACH(w, n->watchers)
                if (watcher_sees(w, j))
                        (void) send_signal(n, w->name, BITS_MANAGER_PATH, BITS_MANAGER_INTERFACE, "JobRemoved", "os",
                                           j->object_path, job_state_to_string(j->state));
}

/* ---- coalesced notifications: Modification and JobChanged ---- */

static usec_t job_interval(const Job *j) {
        return MAX((usec_t) j->minimum_notification_interval_msec * USEC_PER_MSEC, NOTIFY_INTERVAL_MIN_USEC);
}

static int on_flush(sd_event_source *s, uint64_t usec, void *userdata) {
        JobNotify *jn = userdata;
        Notifier *n = jn->notifier;
        Job *j = jn->job;

        jn->last_flush = now(CLOCK_MONOTONIC);
        if (jn->mod_pending && jn->subscriber && flags_allow(j, NOTIFY_MODIFICATION)) {
                if (queue_is_full(n))
                        log_debug("Job %s: bus queue full, dropping Modification.", j->id);
                else
                        (void) send_signal(n, jn->subscriber, j->object_path, BITS_JOB_INTERFACE, "Modification", NULL);
        }
        if (jn->changed_pending && !job_state_is_final(j->state))
                send_job_changed(n, j);
        jn->mod_pending = jn->changed_pending = false;
        return 0;
}

/* O(1): called for every chunk written. The first change after a quiet interval goes out on the
 * next loop iteration; later ones are folded into one at the end of the interval. */
static void mark_changed(Notifier *n, Job *j, bool modification) {
        JobNotify *jn = hashmap_get(n->jobs, j->hex);
        bool want_mod, want_changed = hashmap_size(n->watchers) > 0;

        if (!jn && !want_changed)
                return;
        if (jn && (jn->mod_pending || jn->changed_pending)) {
                jn->mod_pending = jn->mod_pending || modification;
                jn->changed_pending = jn->changed_pending || want_changed;
                return;
        }
        want_mod = modification && jn && jn->subscriber && flags_allow(j, NOTIFY_MODIFICATION);
        if (!want_mod && !want_changed)
                return;
        if (!jn && !(jn = job_notify_get(n, j)))
                return (void) log_oom();

        usec_t when = MAX(now(CLOCK_MONOTONIC), usec_add(jn->last_flush, job_interval(j)));
        int r;
        if (jn->flush_timer) {
                r = sd_event_source_set_time(jn->flush_timer, when);
                if (r >= 0)
                        r = sd_event_source_set_enabled(jn->flush_timer, SD_EVENT_ONESHOT);
        } else {
                r = sd_event_add_time(n->manager->event, &jn->flush_timer, CLOCK_MONOTONIC, when, USEC_PER_MSEC,
                                      on_flush, jn);
                if (r >= 0)
                        (void) sd_event_source_set_description(jn->flush_timer, "notify-flush");
        }
        if (r < 0)
                return (void) log_warning_errno(r, "Job %s: cannot arm the notification timer: %m", j->id);
        jn->mod_pending = want_mod;
        jn->changed_pending = want_changed;
}

/* ---- hooks ---- */

static bool cmd_wanted(JobNotify *jn) {
        Job *j = jn->job;
        if (isempty(j->notify_program) || jn->subscriber)
                return false;
        return (j->state == JOB_TRANSFERRED && flags_allow(j, NOTIFY_TRANSFERRED)) ||
               (j->state == JOB_ERROR && flags_allow(j, NOTIFY_ERROR));
}

void notify_job_state(Manager *m, Job *j, JobState old) {
        Notifier *n = m->notifier;
        JobNotify *jn;

        if (!n)
                return;
        jn = hashmap_get(n->jobs, j->hex);

        if (jn && j->state != JOB_TRANSFERRED && j->state != JOB_ERROR && jn->cmd_timer)
                (void) sd_event_source_set_enabled(jn->cmd_timer, SD_EVENT_OFF); /* no retry any more */

        if (job_state_is_final(j->state)) {
                send_job_removed(n, j);
                if (jn)
                        jn->changed_pending = false;
                mark_changed(n, j, true); /* the subscriber learns of acknowledged/cancelled */
                return;
        }
        if (j->state == JOB_TRANSFERRED || j->state == JOB_ERROR) {
                if (jn && jn->subscriber) {
                        if (j->state == JOB_TRANSFERRED && flags_allow(j, NOTIFY_TRANSFERRED))
                                send_transferred(n, j, jn->subscriber);
                        else if (j->state == JOB_ERROR && flags_allow(j, NOTIFY_ERROR))
                                send_error(n, j, jn->subscriber);
                } else if (!isempty(j->notify_program)) {
                        jn = jn ?: job_notify_get(n, j);
                        if (jn && cmd_wanted(jn))
                                cmd_schedule(jn, 0); /* after the state is recorded */
                }
                mark_changed(n, j, false); /* watchers only: these moves have their own signals */
                return;
        }
        mark_changed(n, j, true);
}

void notify_job_progress(Manager *m, Job *j) {
        if (m->notifier)
                mark_changed(m->notifier, j, true);
}

void notify_job_modified(Manager *m, Job *j) {
        if (m->notifier)
                mark_changed(m->notifier, j, true);
}

void notify_file_transferred(Manager *m, Job *j, BitsFile *f) {
        Notifier *n = m->notifier;
        JobNotify *jn = n ? hashmap_get(n->jobs, j->hex) : NULL;
        char path[256];

        if (!jn || !jn->subscriber || !flags_allow(j, NOTIFY_FILE_TRANSFERRED))
                return;
        snprintf(path, sizeof(path), "%s/file/%u", j->object_path, f->index);
        (void) send_signal(n, jn->subscriber, j->object_path, BITS_JOB_INTERFACE, "FileTransferred", "o", path);
}

void notify_job_freed(Manager *m, Job *j) {
        Notifier *n = m->notifier;
        if (n)
                job_notify_free(hashmap_remove(n->jobs, j->hex));
}

void notify_name_lost(Manager *m, const char *name) {
        Notifier *n = m->notifier;
        JobNotify *jn;
        Watcher *w;

        if (!n)
                return;
        HASHMAP_FOREACH(jn, n->jobs)
                if (streq_ptr(jn->subscriber, name)) {
                        log_debug("Job %s: subscriber %s left the bus.", jn->job->id, name);
                        jn->subscriber = mfree(jn->subscriber);
                }
        w = hashmap_remove(n->watchers, name);
        if (w) {
                free(w->name);
                free(w);
        }
}

static int on_startup(sd_event_source *s, void *userdata) {
        Notifier *n = userdata;
        Job *j;

        /* Command lines of jobs that reached transferred/error before a restart: run them (again),
         * since nothing tells whether a run before the restart succeeded. */
        HASHMAP_FOREACH(j, n->manager->jobs) {
                if (isempty(j->notify_program) || (j->state != JOB_TRANSFERRED && j->state != JOB_ERROR))
                        continue;
                JobNotify *jn = job_notify_get(n, j);
                if (jn && cmd_wanted(jn))
                        cmd_schedule(jn, 0);
        }
        return 0;
}

/* ---- the command line ---- */

static const char *cmd_program(CmdRun *run) {
        return run->jn ? run->jn->job->notify_program : "(job gone)";
}

static void cmd_log_line(CmdRun *run) {
        for (size_t i = 0; i < run->line_len; i++)
                if ((unsigned char) run->line[i] < ' ' || run->line[i] == 0x7f)
                        run->line[i] = '?';
        log_info("Job %s: notify command line: %.*s", run->job_id, (int) run->line_len, run->line);
        run->line_len = 0;
}

static void cmd_consume(CmdRun *run, const char *p, size_t len) {
        if (run->output_bytes >= CMDLINE_OUTPUT_MAX) {
                if (!run->output_truncated)
                        log_info("Job %s: notify command line: more than %u bytes of output, dropping the rest.",
                                 run->job_id, CMDLINE_OUTPUT_MAX);
                run->output_truncated = true;
                return;
        }
        len = MIN(len, CMDLINE_OUTPUT_MAX - run->output_bytes);
        run->output_bytes += len;
        for (size_t i = 0; i < len; i++) {
                if (p[i] == '\n') {
                        cmd_log_line(run);
                        continue;
                }
                if (run->line_len == sizeof(run->line))
                        cmd_log_line(run);
                run->line[run->line_len++] = p[i];
        }
}

/* Reads what is there; returns false at EOF or error. */
static bool cmd_read_output(CmdRun *run) {
        char buf[4096];
        for (;;) {
                ssize_t k = read(run->out_fd, buf, sizeof(buf));
                if (k > 0) {
                        cmd_consume(run, buf, (size_t) k);
                        continue;
                }
                if (k < 0 && errno == EINTR)
                        continue;
                return k < 0 && errno == EAGAIN;
        }
}

static void cmd_close_output(CmdRun *run) {
        if (run->line_len > 0)
                cmd_log_line(run);
        run->out_source = sd_event_source_disable_unref(run->out_source);
        run->out_fd = safe_close(run->out_fd);
}

static int on_cmd_output(sd_event_source *s, int fd, uint32_t revents, void *userdata) {
        CmdRun *run = userdata;
        if (!cmd_read_output(run))
                cmd_close_output(run); /* EOF: the program (and anything it started) closed it */
        return 0;
}

static void cmd_run_free(CmdRun *run, bool kill_it) {
        Notifier *n = run->notifier;

        if (kill_it && run->pid > 0) {
                (void) kill(-run->pid, SIGKILL);
                (void) syscall(SYS_pidfd_send_signal, run->pidfd, SIGKILL, NULL, 0);
                (void) waitid(P_PIDFD, run->pidfd, &(siginfo_t) {}, WEXITED);
        }
        if (run->jn)
                run->jn->run = NULL;
        sd_event_source_disable_unref(run->exit_source);
        sd_event_source_disable_unref(run->out_source);
        sd_event_source_disable_unref(run->timeout_source);
        safe_close(run->pidfd);
        safe_close(run->out_fd);
        if (run->prev)
                run->prev->next = run->next;
        else
                n->runs = run->next;
        if (run->next)
                run->next->prev = run->prev;
        n->n_runs--;
        free(run);
}

static int on_cmd_exit(sd_event_source *s, int fd, uint32_t revents, void *userdata) {
        CmdRun *run = userdata;
        JobNotify *jn = run->jn;
        siginfo_t si = {};
        bool ok;

        if (waitid(P_PIDFD, run->pidfd, &si, WEXITED | WNOHANG) < 0 || si.si_pid == 0)
                return 0; /* not yet */
        run->pid = 0;
        if (run->out_fd >= 0) {
                (void) cmd_read_output(run); /* what it wrote before exiting */
                cmd_close_output(run);       /* a leftover child holding the pipe is not waited for */
        }
        ok = si.si_code == CLD_EXITED && si.si_status == 0;
        if (si.si_code == CLD_EXITED)
                (void) log_full_errno(ok ? LOG_INFO : LOG_WARNING, 0, "Job %s: notify command line '%s' exited with status %d.",
                               run->job_id, cmd_program(run), si.si_status);
        else
                log_warning("Job %s: notify command line '%s' was killed by signal %s.", run->job_id,
                            cmd_program(run), strsignal(si.si_status));

        cmd_run_free(run, false);
        if (!jn)
                return 0;
        if (jn->cmd_again && cmd_wanted(jn))
                cmd_schedule(jn, 0);
        else if (!ok && cmd_wanted(jn)) {
                /* Like BITS: re-run while the job is neither completed nor cancelled. */
                log_info("Job %s: running the notify command line again in %" PRIu32 " s.", jn->job->id,
                         jn->job->minimum_retry_delay);
                cmd_schedule(jn, (usec_t) jn->job->minimum_retry_delay * USEC_PER_SEC);
        }
        jn->cmd_again = false;
        return 0;
}

static int on_cmd_timeout(sd_event_source *s, uint64_t usec, void *userdata) {
        CmdRun *run = userdata;
        log_warning("Job %s: notify command line '%s' still running after %" PRIu32 " s, killing it.", run->job_id,
                    cmd_program(run), run->notifier->manager->config.notify_cmdline_timeout_sec);
        (void) kill(-run->pid, SIGKILL);
        (void) syscall(SYS_pidfd_send_signal, run->pidfd, SIGKILL, NULL, 0);
        return 0;
}

/* Between fork and exec: async-signal-safe calls only. Never returns. */
static _Noreturn void cmd_child(const Identity *id, int null_fd, int out_fd, const char *program, char **argv,
                                char **envp) {
        static const char msg[] = "bitsd: cannot set up the notify command line\n";
        struct sigaction sa = { .sa_handler = SIG_DFL };
        sigset_t ss;
        uid_t ruid, euid, suid;
        gid_t rgid, egid, sgid;

        for (int sig = 1; sig < _NSIG; sig++)
                (void) sigaction(sig, &sa, NULL);
        sigemptyset(&ss);
        if (sigprocmask(SIG_SETMASK, &ss, NULL) < 0 || setsid() < 0)
                goto fail;
        if (dup2(null_fd, STDIN_FILENO) < 0 || dup2(out_fd, STDOUT_FILENO) < 0 || dup2(out_fd, STDERR_FILENO) < 0)
                goto fail;
        /* Only the daemon's end of the pipe is non-blocking: the program writes as usual. */
        if (fcntl(STDOUT_FILENO, F_SETFL, 0) < 0)
                goto fail;
        if (syscall(SYS_close_range, 3U, ~0U, 0U) < 0)
                for (int fd = 3; fd < 65536; fd++)
                        (void) close(fd);
        if (chdir("/") < 0)
                goto fail;
        if (setgroups(id->n_groups, id->groups) < 0 || setresgid(id->gid, id->gid, id->gid) < 0 ||
            setresuid(id->uid, id->uid, id->uid) < 0)
                goto fail;
        if (getresuid(&ruid, &euid, &suid) < 0 || getresgid(&rgid, &egid, &sgid) < 0 ||
            ruid != id->uid || euid != id->uid || suid != id->uid || rgid != id->gid || egid != id->gid || sgid != id->gid)
                goto fail;
        if (id->uid != 0 && (setresuid(0, 0, 0) >= 0 || setresgid(0, 0, 0) >= 0))
                goto fail;
        execve(program, argv, envp);
fail:
        (void) !write(STDERR_FILENO, msg, sizeof(msg) - 1);
        _exit(127);
}

static int cmd_start(JobNotify *jn) {
        Notifier *n = jn->notifier;
        Manager *m = n->manager;
        Job *j = jn->job;
        _cleanup_close_ int null_fd = -EBADF, pidfd = -EBADF;
        _cleanup_free_ char *env_id = NULL, *env_state = NULL, *env_path = NULL;
        int pipefd[2], r;
        Identity id;
        unsigned same_uid = 0;
        /* Root's command line on a user's job runs as that user. */
        uid_t uid = j->notify_uid == 0 && j->owner != 0 ? j->owner : j->notify_uid;

        if (uid == 0 && j->owner != 0)
                return log_error_errno(-EPERM, "Job %s: refusing to run the notify command line as root.", j->id);
        for (CmdRun *o = n->runs; o; o = o->next)
                same_uid += o->uid == uid;
        if (n->n_runs >= CMDLINE_RUNS_MAX || same_uid >= CMDLINE_RUNS_PER_UID_MAX)
                return -EBUSY;

        r = identity_from_uid(uid, &id);
        if (r == -ESRCH)
                id = (Identity) { .uid = uid, .gid = uid };
        else if (r < 0)
                return log_warning_errno(r, "Job %s: cannot look up the groups of uid %u: %m", j->id, (unsigned) uid);
        if (id.uid != uid || (id.uid == 0 && j->owner != 0))
                return -EPERM;

        if (asprintf(&env_id, "BITS_JOB_ID=%s", j->id) < 0 ||
            asprintf(&env_state, "BITS_JOB_STATE=%s", job_state_to_string(j->state)) < 0 ||
            asprintf(&env_path, "BITS_JOB_PATH=%s", j->object_path) < 0)
                return log_oom();
        char *envp[] = { (char *) CMDLINE_PATH, env_id, env_state, env_path, NULL };

        null_fd = open("/dev/null", O_RDONLY | O_CLOEXEC);
        if (null_fd < 0)
                return log_warning_errno(-errno, "Job %s: cannot open /dev/null: %m", j->id);
        if (pipe2(pipefd, O_CLOEXEC | O_NONBLOCK) < 0)
                return log_warning_errno(-errno, "Job %s: cannot create a pipe: %m", j->id);
        CmdRun *run = calloc(1, sizeof(CmdRun));
        if (!run) {
                safe_close(pipefd[0]);
                safe_close(pipefd[1]);
                return log_oom();
        }
        run->notifier = n;
        run->jn = jn;
        run->uid = uid;
        run->pidfd = -EBADF;
        run->out_fd = pipefd[0];
        memcpy(run->job_id, j->id, sizeof(run->job_id));
        run->next = n->runs;
        if (n->runs)
                n->runs->prev = run;
        n->runs = run;
        n->n_runs++;
        jn->run = run;

        /* The write end must not be non-blocking for the program. */
        (void) fcntl(pipefd[1], F_SETFL, 0);
        pid_t pid = fork();
        if (pid < 0) {
                r = log_warning_errno(-errno, "Job %s: cannot fork: %m", j->id);
                safe_close(pipefd[1]);
                cmd_run_free(run, false);
                return r;
        }
        if (pid == 0)
                cmd_child(&id, null_fd, pipefd[1], j->notify_program, j->notify_argv, envp);
        safe_close(pipefd[1]);
        run->pid = pid;

        run->pidfd = (int) syscall(SYS_pidfd_open, pid, 0);
        if (run->pidfd < 0) {
                r = log_warning_errno(-errno, "Job %s: cannot watch the notify command line: %m", j->id);
                (void) kill(pid, SIGKILL);
                (void) waitpid(pid, NULL, 0);
                run->pid = 0;
                cmd_run_free(run, false);
                return r;
        }
        r = sd_event_add_io(m->event, &run->exit_source, run->pidfd, EPOLLIN, on_cmd_exit, run);
        if (r >= 0)
                r = sd_event_add_io(m->event, &run->out_source, run->out_fd, EPOLLIN, on_cmd_output, run);
        if (r >= 0)
                r = sd_event_add_time_relative(m->event, &run->timeout_source, CLOCK_MONOTONIC,
                                               (usec_t) m->config.notify_cmdline_timeout_sec * USEC_PER_SEC,
                                               USEC_PER_SEC / 10, on_cmd_timeout, run);
        if (r < 0) {
                log_warning_errno(r, "Job %s: cannot watch the notify command line: %m", j->id);
                cmd_run_free(run, true);
                return r;
        }
        log_info("Job %s: running the notify command line '%s' as uid %u (pid %d).", j->id, j->notify_program,
                 (unsigned) uid, (int) pid);
        return 0;
}

static int on_cmd_due(sd_event_source *s, uint64_t usec, void *userdata) {
        JobNotify *jn = userdata;
        int r;

        if (jn->run) {
                jn->cmd_again = true;
                return 0;
        }
        if (!cmd_wanted(jn))
                return 0;
        r = cmd_start(jn);
        if (r == -EBUSY)
                cmd_schedule(jn, CMDLINE_BUSY_RETRY_USEC);
        else if (r < 0 && r != -EPERM)
                cmd_schedule(jn, (usec_t) jn->job->minimum_retry_delay * USEC_PER_SEC);
        return 0;
}

static void cmd_schedule(JobNotify *jn, usec_t delay) {
        Manager *m = jn->notifier->manager;
        int r;

        if (jn->run) {
                jn->cmd_again = true;
                return;
        }
        usec_t when = usec_add(now(CLOCK_MONOTONIC), delay);
        if (jn->cmd_timer) {
                r = sd_event_source_set_time(jn->cmd_timer, when);
                if (r >= 0)
                        r = sd_event_source_set_enabled(jn->cmd_timer, SD_EVENT_ONESHOT);
        } else {
                r = sd_event_add_time(m->event, &jn->cmd_timer, CLOCK_MONOTONIC, when, USEC_PER_SEC / 10, on_cmd_due, jn);
                if (r >= 0)
                        (void) sd_event_source_set_description(jn->cmd_timer, "notify-cmdline");
        }
        if (r < 0)
                log_warning_errno(r, "Job %s: cannot schedule the notify command line: %m", jn->job->id);
}

void notify_job_clear_cmdline(Manager *m, Job *j) {
        j->notify_program = mfree(j->notify_program);
        j->notify_argv = strv_free(j->notify_argv);
        j->notify_uid = 0;
        JobNotify *jn = m->notifier ? hashmap_get(m->notifier->jobs, j->hex) : NULL;
        if (jn && jn->cmd_timer)
                (void) sd_event_source_set_enabled(jn->cmd_timer, SD_EVENT_OFF);
}

/* ---- bus methods ---- */

static int check_job_access(Manager *m, Job *j, sd_bus_message *msg, uid_t *ret_uid, sd_bus_error *error) {
        uid_t uid;
        int r = bus_caller_uid(m, msg, &uid);
        if (r < 0)
                return r;
        if (!bus_job_visible_to(m, msg, j, uid))
                return sd_bus_error_setf(error, SD_BUS_ERROR_ACCESS_DENIED, "Not allowed on job %s.", j->id);
        if (job_state_is_final(j->state))
                return sd_bus_error_setf(error, BITS_ERROR_INVALID_STATE, "Job %s is %s.", j->id, job_state_to_string(j->state));
        if (ret_uid)
                *ret_uid = uid;
        return 0;
}

int bus_job_subscribe(sd_bus_message *msg, void *userdata, sd_bus_error *error) {
        Job *j = userdata;
        Manager *m = j->manager;
        Notifier *n = m->notifier;
        const char *sender = sd_bus_message_get_sender(msg);
        JobNotify *jn;
        int r;

        r = check_job_access(m, j, msg, NULL, error);
        if (r < 0)
                return r;
        if (!sender)
                return sd_bus_error_set(error, SD_BUS_ERROR_ACCESS_DENIED, "Subscribing needs a bus name.");
        jn = job_notify_get(n, j);
        if (!jn)
                return -ENOMEM;
        if (!streq_ptr(jn->subscriber, sender)) {
                r = free_and_strdup(&jn->subscriber, sender);
                if (r < 0)
                        return r;
                log_debug("Job %s: %s subscribed.", j->id, sender);
        }
        r = sd_bus_reply_method_return(msg, NULL);
        if (r < 0)
                return r;
        /* Late registration: what already happened is delivered now. */
        if (j->state == JOB_TRANSFERRED && flags_allow(j, NOTIFY_TRANSFERRED))
                send_transferred(n, j, sender);
        else if (j->state == JOB_ERROR && flags_allow(j, NOTIFY_ERROR))
                send_error(n, j, sender);
        return 1;
}

int bus_job_unsubscribe(sd_bus_message *msg, void *userdata, sd_bus_error *error) {
        Job *j = userdata;
        Manager *m = j->manager;
        int r;

        r = check_job_access(m, j, msg, NULL, error);
        if (r < 0)
                return r;
        JobNotify *jn = hashmap_get(m->notifier->jobs, j->hex);
        if (jn && jn->subscriber) {
                log_debug("Job %s: %s unsubscribed.", j->id, jn->subscriber);
                jn->subscriber = mfree(jn->subscriber);
                jn->mod_pending = false;
        }
        return sd_bus_reply_method_return(msg, NULL);
}

int bus_job_set_notify_cmdline(sd_bus_message *msg, void *userdata, sd_bus_error *error) {
        Job *j = userdata;
        Manager *m = j->manager;
        _cleanup_strv_free_ char **argv = NULL;
        const char *program, *a;
        size_t n_argv = 0, argv_bytes = 0;
        char buf[128];
        uid_t uid;
        int r;

        r = check_job_access(m, j, msg, &uid, error);
        if (r < 0)
                return r;
        r = sd_bus_message_read(msg, "s", &program);
        if (r < 0)
                return r;
        r = sd_bus_message_enter_container(msg, 'a', "s");
        if (r < 0)
                return r;
        argv = calloc(CMDLINE_ARGV_MAX + 1, sizeof(char *));
        if (!argv)
                return -ENOMEM;
        while ((r = sd_bus_message_read(msg, "s", &a)) > 0) {
                argv_bytes += strlen(a) + 1;
                if (n_argv >= CMDLINE_ARGV_MAX)
                        return sd_bus_error_setf(error, SD_BUS_ERROR_INVALID_ARGS,
                                                 "Too many arguments for the notify command line (at most %u).",
                                                 CMDLINE_ARGV_MAX);
                if (argv_bytes > CMDLINE_ARGV_BYTES_MAX)
                        return sd_bus_error_setf(error, BITS_ERROR_STRING_TOO_LONG,
                                                 "The arguments of the notify command line are longer than %u bytes in all.",
                                                 CMDLINE_ARGV_BYTES_MAX);
                if (!(argv[n_argv++] = strdup(a)))
                        return -ENOMEM;
        }
        if (r < 0)
                return r;
        r = sd_bus_message_exit_container(msg);
        if (r < 0)
                return r;

        if (strlen(program) >= PATH_MAX)
                return sd_bus_error_setf(error, BITS_ERROR_STRING_TOO_LONG,
                                         "The program path is longer than %u bytes.", PATH_MAX - 1);
        if (isempty(program) && n_argv > 0)
                return sd_bus_error_set(error, SD_BUS_ERROR_INVALID_ARGS,
                                        "Arguments given without a program; use (\"\", []) to clear the notify command line.");
        if (!isempty(program) && program[0] != '/')
                return sd_bus_error_setf(error, SD_BUS_ERROR_INVALID_ARGS, "The program '%s' is not an absolute path.",
                                         value_for_message(program, buf, sizeof(buf)));
        if (!isempty(program) && n_argv == 0)
                return sd_bus_error_setf(error, SD_BUS_ERROR_INVALID_ARGS,
                                         "No argv[0] given for the program '%s'.", value_for_message(program, buf, sizeof(buf)));

        char *old_program = j->notify_program, **old_argv = j->notify_argv;
        uid_t old_uid = j->notify_uid;
        if (isempty(program)) {
                j->notify_program = NULL;
                j->notify_argv = NULL;
                j->notify_uid = 0;
        } else {
                j->notify_program = strdup(program);
                if (!j->notify_program) {
                        j->notify_program = old_program;
                        return -ENOMEM;
                }
                j->notify_argv = TAKE_PTR(argv);
                j->notify_uid = uid;
        }
        r = manager_job_save(m, j);
        if (r < 0) {
                free(j->notify_program);
                strv_free(j->notify_argv);
                j->notify_program = old_program;
                j->notify_argv = old_argv;
                j->notify_uid = old_uid;
                return bus_error_set_errnof(error, r, "Cannot record the change.");
        }
        free(old_program);
        strv_free(old_argv);
        if (isempty(program))
                log_info("Job %s: notify command line cleared.", j->id);
        else
                log_info("Job %s: notify command line set to '%s' by uid %u.", j->id, program, (unsigned) uid);

        /* Set after the event: it still runs. */
        JobNotify *jn = j->notify_program ? job_notify_get(m->notifier, j) : hashmap_get(m->notifier->jobs, j->hex);
        if (jn && cmd_wanted(jn))
                cmd_schedule(jn, 0);
        else if (jn && jn->cmd_timer && !j->notify_program)
                (void) sd_event_source_set_enabled(jn->cmd_timer, SD_EVENT_OFF);
        return sd_bus_reply_method_return(msg, NULL);
}

int bus_job_property_get_notify_cmdline(sd_bus *bus, const char *path, const char *interface, const char *property,
                                        sd_bus_message *reply, void *userdata, sd_bus_error *error) {
        Job *j = userdata;
        int r;

        r = sd_bus_message_open_container(reply, 'r', "sas");
        if (r >= 0)
                r = sd_bus_message_append(reply, "s", strempty(j->notify_program));
        if (r >= 0)
                r = sd_bus_message_append_strv(reply, j->notify_program ? j->notify_argv : NULL);
        if (r >= 0)
                r = sd_bus_message_close_container(reply);
        return r;
}

int bus_manager_watch_jobs(sd_bus_message *msg, void *userdata, sd_bus_error *error) {
        Manager *m = userdata;
        Notifier *n = m->notifier;
        const char *sender = sd_bus_message_get_sender(msg);
        unsigned same_uid = 0;
        Watcher *w;
        uid_t uid;
        int r;

        r = bus_caller_uid(m, msg, &uid);
        if (r < 0)
                return r;
        if (!sender)
                return sd_bus_error_set(error, SD_BUS_ERROR_ACCESS_DENIED, "Watching needs a bus name.");
        if (hashmap_get(n->watchers, sender))
                return sd_bus_reply_method_return(msg, NULL);
        HASHMAP_FOREACH(w, n->watchers)
                same_uid += w->uid == uid;
        if (same_uid >= WATCHERS_PER_UID_MAX)
                return sd_bus_error_setf(error, SD_BUS_ERROR_LIMITS_EXCEEDED,
                                         "Too many job watchers for uid %u (limit %u per user).", (unsigned) uid,
                                         WATCHERS_PER_UID_MAX);
        if (hashmap_size(n->watchers) >= WATCHERS_MAX)
                return sd_bus_error_setf(error, SD_BUS_ERROR_LIMITS_EXCEEDED,
                                         "Too many job watchers (limit %u in all).", WATCHERS_MAX);
        /* Everybody may watch their own jobs; all jobs with manage-any-job (asked without
         * prompting: watching works either way). */
        r = auth_check_quiet(m->auth, msg, uid, AUTH_ACTION_MANAGE_ANY_JOB);
        if (r == -EINPROGRESS)
                return 1; /* dispatched again once polkit answered */
        bool all = r > 0;
        w = calloc(1, sizeof(Watcher));
        if (!w || !(w->name = strdup(sender))) {
                free(w);
                return -ENOMEM;
        }
        w->uid = uid;
        w->all = all;
        r = hashmap_put(n->watchers, w->name, w);
        if (r < 0) {
                free(w->name);
                free(w);
                return r;
        }
        log_debug("%s (uid %u) watches jobs.", sender, (unsigned) uid);
        return sd_bus_reply_method_return(msg, NULL);
}

int bus_manager_unwatch_jobs(sd_bus_message *msg, void *userdata, sd_bus_error *error) {
        Manager *m = userdata;
        const char *sender = sd_bus_message_get_sender(msg);
        Watcher *w = sender ? hashmap_remove(m->notifier->watchers, sender) : NULL;

        if (w) {
                free(w->name);
                free(w);
        }
        return sd_bus_reply_method_return(msg, NULL);
}
