/* SPDX-License-Identifier: LGPL-2.1-or-later */
#include <fcntl.h>
#include <grp.h>
#include <limits.h>
#include <linux/capability.h>
#include <poll.h>
#include <pwd.h>
#include <signal.h>
#include <sys/prctl.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/syscall.h>
#include <sys/wait.h>

#include "file-ops.h"
#include "log.h"
#include "macro.h"
#include "time-util.h"

/* The worker's end of the socketpair always sits here, so that everything above it can be closed
 * in one go. */
#define WORKER_FD 3

#define DEFAULT_TIMEOUT_USEC (30 * USEC_PER_SEC)
#define DEFAULT_WORKERS_MAX 64U
/* Each worker is a process: a configured maximum beyond this is a typo, not a policy. */
#define WORKERS_MAX_LIMIT 4096U
/* A passwd entry larger than this is not an entry, it is an attack on our memory. */
#define PASSWD_BUFFER_MAX (1024U * 1024U)
/* A killed worker that has not died within this (stuck in uninterruptible sleep on a hung file
 * system) is left for file_ops_gc() to reap rather than stalling the event loop. */
#define REAP_WAIT_MSEC 1000
/* A new worker only drops its privileges before it reports in, it touches no file system the user
 * controls: if that takes longer than this, waiting longer will not help. */
#define SPAWN_TIMEOUT_USEC (2 * USEC_PER_SEC)
/* sd-event's default slack (250 ms) would be as long as a short request timeout. */
#define TIMER_ACCURACY_USEC USEC_PER_MSEC

/* One SOCK_SEQPACKET message: this header, then len[0] bytes of the first path and len[1] bytes of
 * the second (rename only), without terminating NULs. The answer is one int32_t (0, a positive
 * value or -errno), carrying exactly one fd in SCM_RIGHTS when an fd-returning op succeeded. The
 * very first message of a worker is an answer without a question: how its switch to the identity
 * went. */
typedef struct Request {
        uint32_t op;
        uint32_t len[2];
} Request;

#define REQUEST_SIZE_MAX (sizeof(Request) + 2 * (PATH_MAX - 1))

typedef struct Worker Worker;

struct FileOpsRequest {
        Worker *worker;                 /* NULL once out of the FIFO, i.e. while its callback runs */
        FileOpsRequest *prev, *next;    /* the worker's FIFO */
        FileOp op;
        FileOpsCallback callback;       /* NULL: withdrawn after it was sent, the answer is discarded */
        void *userdata;
        uint8_t *message;               /* the encoded request, until it is sent */
        size_t size;
        bool sent;
};

/* Synchronous calls and asynchronous requests never share a worker: a synchronous call cannot
 * wait behind the FIFO of an asynchronous one (it would have to run their callbacks, or hold their
 * answers back from the event loop), so each identity may have one worker of either kind. */
struct Worker {
        FileOps *file_ops;
        Identity id;
        pid_t pid;
        int fd;
        usec_t last_used;

        bool async;
        /* The rest is for asynchronous workers only. */
        bool ready;                     /* it reported a successful switch to the identity */
        bool broken;                    /* a send failed, it was killed: its EOF fails the FIFO */
        bool failing;                   /* out of the table, failing its FIFO */
        sd_event_source *io, *timer;
        /* Sent requests first (the worker answers them in order), then the unsent ones. */
        FileOpsRequest *head, *tail, *unsent;
        unsigned n_queued;
        /* By when the worker must have answered the head of the FIFO (or reported in). */
        usec_t deadline;
};

/* A killed worker whose death the event loop waits for on its pidfd, to reap it. */
typedef struct Reaper Reaper;
struct Reaper {
        FileOps *file_ops;
        pid_t pid;
        int pidfd;
        sd_event_source *source;
        Reaper *prev, *next;
};

struct FileOps {
        usec_t idle_timeout;
        usec_t request_timeout;
        unsigned workers_max;

        Worker **workers;
        size_t n_workers;

        /* Killed workers that did not die in time: reaped by file_ops_gc(). */
        pid_t *dying;
        size_t n_dying;

        sd_event *event;
        Reaper *reapers;
        /* In file_ops_free(): no event loop any more to wait for deaths with. */
        bool freeing;
};

static bool op_returns_fd(FileOp op) {
        return op == FILE_OP_CREATE || op == FILE_OP_OPEN_WRITE || op == FILE_OP_OPEN_READ;
}

/* ---------------------------------------------------------------------------------------------- */
/* Identities */

static int gid_compare(const void *a, const void *b) {
        gid_t x = *(const gid_t *) a, y = *(const gid_t *) b;
        return x < y ? -1 : x > y;
}

int identity_from_uid(uid_t uid, Identity *ret) {
        _cleanup_free_ char *buf = NULL;
        struct passwd pw, *result = NULL;
        size_t bufsize;
        Identity id = { .uid = uid };
        int ngroups, r;
        long l;

        if (!ret || uid == (uid_t) -1)
                return -EINVAL;

        l = sysconf(_SC_GETPW_R_SIZE_MAX);
        bufsize = l > 0 ? (size_t) l : 1024;

        for (;;) {
                free(buf);
                buf = malloc(bufsize);
                if (!buf)
                        return -ENOMEM;

                r = getpwuid_r(uid, &pw, buf, bufsize, &result);
                if (r != ERANGE)
                        break;
                if (bufsize >= PASSWD_BUFFER_MAX)
                        return -E2BIG;
                bufsize = MIN(bufsize * 2, (size_t) PASSWD_BUFFER_MAX);
        }
        /* Some NSS modules report "no such entry" as an error rather than as a NULL result. */
        if ((r == 0 && !result) || r == ENOENT || r == ESRCH) {
                *ret = (Identity) { .uid = uid, .gid = (gid_t) uid };
                return -ESRCH;
        }
        if (r != 0)
                return -r;
        if (pw.pw_gid == (gid_t) -1)
                return -EINVAL;

        id.gid = pw.pw_gid;

        ngroups = IDENTITY_GROUPS_MAX;
        if (getgrouplist(pw.pw_name, pw.pw_gid, id.groups, &ngroups) < 0)
                /* glibc returns -1 only when the array is too small, ngroups then says how many are needed. */
                return ngroups > IDENTITY_GROUPS_MAX ? -E2BIG : -EIO;
        if (ngroups < 0 || ngroups > IDENTITY_GROUPS_MAX)
                return -EIO;

        /* Sorted and unique, so that identity_equal() finds the worker of the same user whatever
         * order NSS produced this time. */
        qsort(id.groups, ngroups, sizeof(gid_t), gid_compare);
        for (int i = 0; i < ngroups; i++)
                if (id.n_groups == 0 || id.groups[id.n_groups - 1] != id.groups[i])
                        id.groups[id.n_groups++] = id.groups[i];

        *ret = id;
        return 0;
}

bool identity_equal(const Identity *a, const Identity *b) {
        if (a == b)
                return true;
        if (!a || !b)
                return false;
        return a->uid == b->uid &&
                a->gid == b->gid &&
                a->n_groups == b->n_groups &&
                a->n_groups <= IDENTITY_GROUPS_MAX &&
                memcmp(a->groups, b->groups, a->n_groups * sizeof(gid_t)) == 0;
}

static bool identity_is_valid(const Identity *id) {
        /* (uid_t) -1 means "leave unchanged" to setresuid(): the worker would stay root. */
        if (!id || id->uid == (uid_t) -1 || id->gid == (gid_t) -1)
                return false;
        if (id->n_groups > IDENTITY_GROUPS_MAX)
                return false;
        for (size_t i = 0; i < id->n_groups; i++)
                if (id->groups[i] == (gid_t) -1)
                        return false;
        return true;
}

/* ---------------------------------------------------------------------------------------------- */
/* The worker process */

static int fd_clear_nonblock(int fd) {
        int flags = fcntl(fd, F_GETFL);
        if (flags < 0)
                return -errno;
        if (fcntl(fd, F_SETFL, flags & ~O_NONBLOCK) < 0)
                return -errno;
        return 0;
}

static int parent_dir_exists(const char *path) {
        char parent[PATH_MAX];
        const char *slash = strrchr(path, '/');
        size_t n = slash == path ? 1 : (size_t) (slash - path);
        _cleanup_close_ int fd = -EBADF;

        memcpy(parent, path, n);
        parent[n] = '\0';
        fd = open(parent, O_PATH | O_DIRECTORY | O_CLOEXEC);
        return fd < 0 ? -errno : 0;
}

static int do_check_dir(const char *dir) {
        _cleanup_close_ int fd = -EBADF;

        /* O_PATH: a directory the user may write into but not list (mode 0300) is still fine. */
        fd = open(dir, O_PATH | O_DIRECTORY | O_CLOEXEC);
        if (fd < 0)
                return -errno;
        /* The real UID is the user's, so access() semantics are exactly the user's; "." checks the
         * directory we opened, not whatever the path points to by now. */
        if (faccessat(fd, ".", W_OK | X_OK, 0) < 0)
                return -errno;
        return 0;
}

static int do_check_target(const char *path) {
        _cleanup_close_ int fd = -EBADF;
        struct stat st;

        fd = open(path, O_PATH | O_NOFOLLOW | O_CLOEXEC);
        if (fd < 0) {
                if (errno == ENOENT)
                        /* Free, but only if there is a directory to put it in. */
                        return parent_dir_exists(path);
                return -errno;
        }
        if (fstat(fd, &st) < 0)
                return -errno;
        if (S_ISDIR(st.st_mode))
                return -EISDIR;
        if (S_ISLNK(st.st_mode))
                return -ELOOP;
        if (!S_ISREG(st.st_mode))
                return -EINVAL;
        /* access() rather than open(O_WRONLY): opening for writing is visible (inotify
         * IN_CLOSE_WRITE, leases) and this must not change anything. */
        if (access(path, W_OK) < 0)
                return -errno;
        return 0;
}

static int do_create(const char *path) {
        int fd;

        fd = open(path, O_RDWR | O_CREAT | O_EXCL | O_NOFOLLOW | O_CLOEXEC | O_NOCTTY, 0666);
        return fd < 0 ? -errno : fd;
}


/* Opens path with flags (plus CLOEXEC, NOCTTY, and O_NONBLOCK until we know what it is: opening a
 * device or FIFO must not hang) and refuses anything but a regular file (-EINVAL). */
static int open_regular(const char *path, int flags, struct stat *ret_st) {
        _cleanup_close_ int fd = open(path, flags | O_CLOEXEC | O_NOCTTY | O_NONBLOCK);
        if (fd < 0)
                return -errno;
        if (fstat(fd, ret_st) < 0)
                return -errno;
        if (!S_ISREG(ret_st->st_mode))
                return -EINVAL;
        return TAKE_FD(fd);
}

static int do_open_write(const char *path) {
        _cleanup_close_ int fd = -EBADF;
        struct stat st;
        int r;

        fd = open_regular(path, O_RDWR | O_NOFOLLOW, &st);
        if (fd < 0)
                return fd;
        if (st.st_uid != getuid())
                return -EPERM;
        /* A second name may be in a place the user could not write to themselves. */
        if (st.st_nlink != 1)
                return -EMLINK;
        r = fd_clear_nonblock(fd);
        if (r < 0)
                return r;
        return TAKE_FD(fd);
}

static int do_open_read(const char *path) {
        _cleanup_close_ int fd = -EBADF;
        struct stat st;
        int r;

        fd = open_regular(path, O_RDONLY, &st);
        if (fd < 0)
                return fd;
        r = fd_clear_nonblock(fd);
        if (r < 0)
                return r;
        return TAKE_FD(fd);
}

static int worker_send_result(int result, int fd) {
        union {
                struct cmsghdr header;
                uint8_t buf[CMSG_SPACE(sizeof(int))];
        } control = {};
        int32_t value = result;
        struct iovec iov = { .iov_base = &value, .iov_len = sizeof(value) };
        struct msghdr mh = { .msg_iov = &iov, .msg_iovlen = 1 };

        if (fd >= 0) {
                struct cmsghdr *cmsg;

                mh.msg_control = &control;
                mh.msg_controllen = sizeof(control.buf);
                cmsg = CMSG_FIRSTHDR(&mh);
                cmsg->cmsg_level = SOL_SOCKET;
                cmsg->cmsg_type = SCM_RIGHTS;
                cmsg->cmsg_len = CMSG_LEN(sizeof(int));
                memcpy(CMSG_DATA(cmsg), &fd, sizeof(int));
        }

        for (;;) {
                if (sendmsg(WORKER_FD, &mh, MSG_NOSIGNAL) >= 0)
                        return 0;
                if (errno != EINTR)
                        return -errno;
        }
}

static int worker_validate_path(const char *p, uint32_t len, char out[static PATH_MAX]) {
        if (len == 0)
                return -EINVAL;
        if (len > PATH_MAX - 1)
                return -ENAMETOOLONG;
        if (memchr(p, 0, len))
                return -EINVAL;
        if (p[0] != '/')
                return -EINVAL;
        memcpy(out, p, len);
        out[len] = '\0';
        return 0;
}

/* Returns the result to send back; *ret_fd gets an fd to pass along, if any. */
static int worker_handle(const uint8_t *buf, size_t n, int *ret_fd) {
        static char path[2][PATH_MAX];
        Request req;
        size_t expected;
        int r;

        *ret_fd = -EBADF;

        if (n < sizeof(req))
                return -EBADMSG;
        memcpy(&req, buf, sizeof(req));
        if (req.len[0] > PATH_MAX - 1 || req.len[1] > PATH_MAX - 1)
                return -ENAMETOOLONG;
        expected = sizeof(req) + (size_t) req.len[0] + (size_t) req.len[1];
        if (n != expected)
                return -EBADMSG;

        r = worker_validate_path((const char *) buf + sizeof(req), req.len[0], path[0]);
        if (r < 0)
                return r;
        if (req.op == FILE_OP_RENAME) {
                r = worker_validate_path((const char *) buf + sizeof(req) + req.len[0], req.len[1], path[1]);
                if (r < 0)
                        return r;
        } else if (req.len[1] != 0)
                return -EBADMSG;

        switch (req.op) {
        case FILE_OP_CHECK_DIR:
                return do_check_dir(path[0]);
        case FILE_OP_CHECK_TARGET:
                return do_check_target(path[0]);
        case FILE_OP_CREATE:
        case FILE_OP_OPEN_WRITE:
        case FILE_OP_OPEN_READ:
                r = req.op == FILE_OP_CREATE ? do_create(path[0]) :
                    req.op == FILE_OP_OPEN_WRITE ? do_open_write(path[0]) : do_open_read(path[0]);
                if (r < 0)
                        return r;
                *ret_fd = r;
                return 0;
        case FILE_OP_RENAME:
                return rename(path[0], path[1]) < 0 ? -errno : 0;
        case FILE_OP_UNLINK:
                return unlink(path[0]) < 0 ? -errno : 0;
        default:
                return -EOPNOTSUPP;
        }
}

static int worker_drop_capabilities(void) {
        struct __user_cap_header_struct header = { .version = _LINUX_CAPABILITY_VERSION_3 };
        struct __user_cap_data_struct data[_LINUX_CAPABILITY_U32S_3] = {};

        /* setresuid() away from 0 already cleared them, unless the daemon was started with
         * SECBIT_KEEP_CAPS or ambient capabilities; dropping is always allowed, so make sure. */
        (void) prctl(PR_CAP_AMBIENT, PR_CAP_AMBIENT_CLEAR_ALL, 0, 0, 0);
        if (syscall(SYS_capset, &header, data) < 0)
                return -errno;
        if (syscall(SYS_capget, &header, data) < 0)
                return -errno;
        for (size_t i = 0; i < ELEMENTSOF(data); i++)
                if (data[i].effective || data[i].permitted || data[i].inheritable)
                        return -EPERM;
        return 0;
}

static int worker_become(const Identity *id, pid_t parent) {
        uid_t ruid, euid, suid;
        gid_t rgid, egid, sgid;
        int r;

        if (setgroups(id->n_groups, id->groups) < 0)
                return -errno;
        if (setresgid(id->gid, id->gid, id->gid) < 0)
                return -errno;
        if (setresuid(id->uid, id->uid, id->uid) < 0)
                return -errno;

        /* Trust, but verify: a half-applied switch must never serve a request. */
        if (getresuid(&ruid, &euid, &suid) < 0 || getresgid(&rgid, &egid, &sgid) < 0)
                return -errno;
        if (ruid != id->uid || euid != id->uid || suid != id->uid ||
            rgid != id->gid || egid != id->gid || sgid != id->gid)
                return -EPERM;
        if (id->uid != 0) {
                if (setresuid(0, 0, 0) >= 0 || setresgid(0, 0, 0) >= 0)
                        return -EPERM;
                r = worker_drop_capabilities();
                if (r < 0)
                        return r;
        }

        /* The credential change cleared both the parent-death signal and (depending on
         * fs.suid_dumpable) the dumpable flag: set them again, now that they stick. */
        if (prctl(PR_SET_PDEATHSIG, SIGKILL, 0, 0, 0) < 0)
                return -errno;
        if (getppid() != parent)
                return -ESRCH;
        /* The user owns this process now; they must not ptrace it and read the daemon's memory it
         * inherited. */
        if (prctl(PR_SET_DUMPABLE, 0, 0, 0, 0) < 0)
                return -errno;
        if (prctl(PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0) < 0)
                return -errno;
        return 0;
}

static void worker_close_fds(int sock) {
        if (sock != WORKER_FD) {
                if (dup2(sock, WORKER_FD) < 0)
                        _exit(EXIT_FAILURE);
                (void) close(sock);
        }
        if (close_range(WORKER_FD + 1, ~0U, 0) < 0) {
                /* Kernel < 5.9: close them one by one. */
                long max = sysconf(_SC_OPEN_MAX);
                for (long fd = WORKER_FD + 1; fd < (max > 0 ? max : 65536); fd++)
                        (void) close((int) fd);
        }
}

static void worker_reset_signals(void) {
        struct sigaction sa = { .sa_handler = SIG_DFL };
        sigset_t ss;

        /* The daemon blocks signals for its signalfds and may have handlers whose state we do not
         * share any more; a worker wants the plain defaults. */
        for (int sig = 1; sig < _NSIG; sig++)
                if (sig != SIGKILL && sig != SIGSTOP)
                        (void) sigaction(sig, &sa, NULL);
        sigemptyset(&ss);
        (void) sigprocmask(SIG_SETMASK, &ss, NULL);
}

_Noreturn static void worker_run(int sock, const Identity *id, pid_t parent, usec_t idle_timeout) {
        static uint8_t buf[REQUEST_SIZE_MAX + 1];
        int idle_msec, r;

        /* Before anything else: nothing of the daemon but our socket may stay reachable. */
        worker_close_fds(sock);

        /* Set early to cover the window until the identity switch, which clears it again. */
        if (prctl(PR_SET_PDEATHSIG, SIGKILL, 0, 0, 0) < 0 || getppid() != parent)
                _exit(EXIT_FAILURE);

        worker_reset_signals();
        umask(022);
        if (chdir("/") < 0)
                _exit(EXIT_FAILURE);

        r = worker_become(id, parent);
        (void) worker_send_result(r, -EBADF);
        if (r < 0)
                _exit(EXIT_FAILURE);

        /* The daemon's gc is the primary way an idle worker goes; this is the fallback for a daemon
         * that never calls it. Twice the timeout, so the two rarely race. */
        idle_msec = (int) MIN(usec_add(idle_timeout, idle_timeout) / USEC_PER_MSEC + 1, (usec_t) INT_MAX);

        for (;;) {
                struct pollfd pfd = { .fd = WORKER_FD, .events = POLLIN };
                struct iovec iov = { .iov_base = buf, .iov_len = sizeof(buf) };
                struct msghdr mh = { .msg_iov = &iov, .msg_iovlen = 1 };
                _cleanup_close_ int fd = -EBADF;
                ssize_t n;

                r = poll(&pfd, 1, idle_msec);
                if (r == 0)
                        _exit(EXIT_SUCCESS);
                if (r < 0) {
                        if (errno == EINTR)
                                continue;
                        _exit(EXIT_FAILURE);
                }

                n = recvmsg(WORKER_FD, &mh, MSG_DONTWAIT | MSG_CMSG_CLOEXEC);
                if (n == 0)
                        _exit(EXIT_SUCCESS); /* The daemon let go of us. */
                if (n < 0) {
                        if (errno == EINTR || errno == EAGAIN)
                                continue;
                        _exit(EXIT_FAILURE);
                }

                if (mh.msg_flags & (MSG_TRUNC | MSG_CTRUNC))
                        r = -EBADMSG;
                else
                        r = worker_handle(buf, (size_t) n, &fd);

                if (worker_send_result(r, fd) < 0)
                        _exit(EXIT_FAILURE);
        }
}

/* ---------------------------------------------------------------------------------------------- */
/* The daemon side: reaping */

static int pidfd_open_wrapper(pid_t pid) {
        int fd = (int) syscall(SYS_pidfd_open, pid, 0);
        return fd < 0 ? -errno : fd;
}

static int file_ops_remember_dying(FileOps *f, pid_t pid) {
        pid_t *p = realloc(f->dying, (f->n_dying + 1) * sizeof(pid_t));
        if (!p)
                return -ENOMEM;
        f->dying = p;
        f->dying[f->n_dying++] = pid;
        return 0;
}

/* Waits for the death of a killed worker only for a bounded time: a process stuck in a hung file
 * system may take forever to die. Takes the pidfd (or -errno if there is none). */
static void reap_bounded(FileOps *f, pid_t pid, int pidfd) {
        pid_t r;

        if (pidfd >= 0) {
                struct pollfd pfd = { .fd = pidfd, .events = POLLIN };
                usec_t deadline = usec_add(now(CLOCK_MONOTONIC), REAP_WAIT_MSEC * USEC_PER_MSEC);

                for (;;) {
                        usec_t n = now(CLOCK_MONOTONIC);
                        if (n >= deadline || poll(&pfd, 1, (int) ((deadline - n + USEC_PER_MSEC - 1) / USEC_PER_MSEC)) >= 0 || errno != EINTR)
                                break;
                }
                safe_close(pidfd);
                do
                        r = waitpid(pid, NULL, WNOHANG);
                while (r < 0 && errno == EINTR);
        } else
                /* No pidfds (kernel < 5.3): the plain blocking wait. */
                do
                        r = waitpid(pid, NULL, 0);
                while (r < 0 && errno == EINTR);

        if (r == 0 && file_ops_remember_dying(f, pid) < 0)
                log_warning("Failed to remember worker %i, it will stay a zombie.", (int) pid);
}

/* SIGKILL and reap, waiting a bounded time: for the synchronous API, which waits anyway, and for
 * file_ops_free(). */
static void kill_and_reap(FileOps *f, pid_t pid) {
        int pidfd;

        if (pid <= 0)
                return;

        /* Not reaped yet, so the PID cannot have been reused. */
        pidfd = pidfd_open_wrapper(pid);
        (void) kill(pid, SIGKILL);
        reap_bounded(f, pid, pidfd);
}

static Reaper *reaper_free(Reaper *rp) {
        if (!rp)
                return NULL;

        if (rp->prev)
                rp->prev->next = rp->next;
        else
                rp->file_ops->reapers = rp->next;
        if (rp->next)
                rp->next->prev = rp->prev;

        sd_event_source_disable_unref(rp->source);
        safe_close(rp->pidfd);
        return mfree(rp);
}

static int reaper_on_exit(sd_event_source *s, int fd, uint32_t revents, void *userdata) {
        Reaper *rp = userdata;
        pid_t r;

        do
                r = waitpid(rp->pid, NULL, WNOHANG);
        while (r < 0 && errno == EINTR);
        /* A readable pidfd means it exited; should it not be reapable yet after all, let gc retry
         * rather than have a level-triggered source spin. */
        if (r == 0 && file_ops_remember_dying(rp->file_ops, rp->pid) < 0)
                log_warning("Failed to remember worker %i, it will stay a zombie.", (int) rp->pid);
        reaper_free(rp);
        return 0;
}

/* SIGKILL, and reap once it died, without waiting: the event loop watches the pidfd. */
static void kill_async(FileOps *f, pid_t pid) {
        _cleanup_close_ int pidfd = -EBADF;
        Reaper *rp;
        pid_t r;

        if (pid <= 0)
                return;
        if (!f->event || f->freeing) {
                kill_and_reap(f, pid);
                return;
        }

        pidfd = pidfd_open_wrapper(pid);
        (void) kill(pid, SIGKILL);
        do
                r = waitpid(pid, NULL, WNOHANG);
        while (r < 0 && errno == EINTR);
        if (r != 0)
                return; /* Dead and reaped already (or, ECHILD, not ours to reap). */

        if (pidfd >= 0) {
                rp = malloc(sizeof(Reaper));
                if (rp) {
                        *rp = (Reaper) {
                                .file_ops = f,
                                .pid = pid,
                                .pidfd = -EBADF,
                        };
                        if (sd_event_add_io(f->event, &rp->source, pidfd, EPOLLIN, reaper_on_exit, rp) >= 0) {
                                (void) sd_event_source_set_description(rp->source, "file-worker-reaper");
                                rp->pidfd = TAKE_FD(pidfd);
                                rp->next = f->reapers;
                                if (rp->next)
                                        rp->next->prev = rp;
                                f->reapers = rp;
                                return;
                        }
                        free(rp);
                }
        }

        /* No pidfd (kernel < 5.3, valgrind) or no memory: file_ops_gc() reaps it. */
        if (file_ops_remember_dying(f, pid) < 0)
                log_warning("Failed to remember worker %i, it will stay a zombie.", (int) pid);
}

/* ---------------------------------------------------------------------------------------------- */
/* The daemon side: workers */

static FileOpsRequest *request_free(FileOpsRequest *r) {
        if (!r)
                return NULL;
        free(r->message);
        return mfree(r);
}
DEFINE_TRIVIAL_CLEANUP_FUNC(FileOpsRequest *, request_free);

static void queue_append(Worker *w, FileOpsRequest *r) {
        r->worker = w;
        r->prev = w->tail;
        r->next = NULL;
        if (w->tail)
                w->tail->next = r;
        else
                w->head = r;
        w->tail = r;
        if (!w->unsent && !r->sent)
                w->unsent = r;
        w->n_queued++;
}

static void queue_remove(Worker *w, FileOpsRequest *r) {
        if (w->unsent == r)
                w->unsent = r->next;
        if (r->prev)
                r->prev->next = r->next;
        else
                w->head = r->next;
        if (r->next)
                r->next->prev = r->prev;
        else
                w->tail = r->prev;
        r->prev = r->next = NULL;
        r->worker = NULL;
        w->n_queued--;
}

static void worker_free(FileOps *f, Worker *w) {
        if (!w)
                return;

        /* Only file_ops_free() gets here with requests queued (gc and eviction leave busy workers
         * alone): they are withdrawn without a word, as promised. */
        while (w->head) {
                FileOpsRequest *r = w->head;

                queue_remove(w, r);
                request_free(r);
        }

        sd_event_source_disable_unref(w->io);
        sd_event_source_disable_unref(w->timer);
        safe_close(w->fd);
        kill_async(f, w->pid);
        free(w);
}

static void file_ops_unlink_worker(FileOps *f, size_t i) {
        memmove(f->workers + i, f->workers + i + 1, (f->n_workers - i - 1) * sizeof(Worker *));
        f->n_workers--;
}

static void file_ops_remove_worker(FileOps *f, size_t i) {
        Worker *w = f->workers[i];

        file_ops_unlink_worker(f, i);
        log_debug("Stopping file worker %i of UID %u.", (int) w->pid, (unsigned) w->id.uid);
        worker_free(f, w);
}

int file_ops_new(FileOps **ret, uint64_t idle_timeout_usec, uint64_t request_timeout_usec, unsigned workers_max) {
        FileOps *f;

        if (!ret)
                return -EINVAL;
        if (workers_max > WORKERS_MAX_LIMIT)
                return -ERANGE;

        f = malloc(sizeof(FileOps));
        if (!f)
                return -ENOMEM;

        *f = (FileOps) {
                .idle_timeout = idle_timeout_usec ?: DEFAULT_TIMEOUT_USEC,
                .request_timeout = request_timeout_usec ?: DEFAULT_TIMEOUT_USEC,
                .workers_max = workers_max ?: DEFAULT_WORKERS_MAX,
        };

        *ret = f;
        return 0;
}

int file_ops_attach_event(FileOps *f, sd_event *event) {
        if (!f || !event)
                return -EINVAL;
        if (f->event)
                return f->event == event ? 0 : -EBUSY;
        f->event = sd_event_ref(event);
        return 0;
}

FileOps *file_ops_free(FileOps *f) {
        if (!f)
                return NULL;

        /* Shutting down: a bounded wait for each death is fine now, and leaves no zombie. */
        f->freeing = true;

        while (f->n_workers > 0)
                file_ops_remove_worker(f, f->n_workers - 1);
        free(f->workers);

        while (f->reapers) {
                Reaper *rp = f->reapers;

                reap_bounded(f, rp->pid, TAKE_FD(rp->pidfd));
                reaper_free(rp);
        }

        /* Last chance for the stragglers; what is still stuck is init's business after we exit. */
        for (size_t i = 0; i < f->n_dying; i++)
                (void) waitpid(f->dying[i], NULL, WNOHANG);
        free(f->dying);

        sd_event_unref(f->event);
        return mfree(f);
}

void file_ops_gc(FileOps *f) {
        usec_t n;

        if (!f)
                return;

        n = now(CLOCK_MONOTONIC);

        for (size_t i = f->n_workers; i > 0; i--) {
                Worker *w = f->workers[i - 1];
                pid_t r;

                /* Busy: its requests are answered, time out, or fail on its death, and each of
                 * these takes care of the worker. */
                if (w->n_queued > 0 || (w->async && !w->ready))
                        continue;

                r = waitpid(w->pid, NULL, WNOHANG);
                if (r == w->pid || (r < 0 && errno == ECHILD)) {
                        /* Exited on its own (idle): already reaped, nothing to kill. */
                        w->pid = 0;
                        file_ops_remove_worker(f, i - 1);
                } else if (usec_sub(n, w->last_used) >= f->idle_timeout)
                        file_ops_remove_worker(f, i - 1);
        }

        for (size_t i = f->n_dying; i > 0; i--) {
                pid_t r = waitpid(f->dying[i - 1], NULL, WNOHANG);

                if (r > 0 || (r < 0 && errno == ECHILD)) {
                        f->dying[i - 1] = f->dying[f->n_dying - 1];
                        f->n_dying--;
                }
        }
}

unsigned file_ops_worker_count(const FileOps *f) {
        return f ? (unsigned) f->n_workers : 0;
}

static Worker *file_ops_find_worker(const FileOps *f, const Identity *id, bool async) {
        for (size_t i = 0; i < f->n_workers; i++)
                if (f->workers[i]->async == async && identity_equal(&f->workers[i]->id, id))
                        return f->workers[i];
        return NULL;
}

pid_t file_ops_worker_pid(const FileOps *f, const Identity *id) {
        Worker *w = f ? file_ops_find_worker(f, id, false) : NULL;
        return w ? w->pid : 0;
}

pid_t file_ops_worker_pid_async(const FileOps *f, const Identity *id) {
        Worker *w = f ? file_ops_find_worker(f, id, true) : NULL;
        return w ? w->pid : 0;
}

/* Receives one answer if there is one (-EAGAIN if not) and stores the worker's result in
 * *ret_result (and the fd it passed in *ret_fd). Returns < 0 if the exchange itself failed: then
 * the worker is of no use any more; *ret_dead tells whether it is simply gone (EOF, reset). */
static int worker_receive_one(int sock, bool want_fd, int *ret_result, int *ret_fd, bool *ret_dead) {
        union {
                struct cmsghdr header;
                /* Room for more than one fd, so that extra ones arrive here and get closed rather
                 * than being dropped by a truncation we could not tell from other garbage. */
                uint8_t buf[CMSG_SPACE(sizeof(int) * 8)];
        } control;
        int32_t value;
        struct iovec iov = { .iov_base = &value, .iov_len = sizeof(value) };
        struct msghdr mh = {
                .msg_iov = &iov,
                .msg_iovlen = 1,
                .msg_control = &control,
                .msg_controllen = sizeof(control.buf),
        };
        int fds[8], n_fds = 0, r;
        bool bad_cmsg = false;
        ssize_t n;

        *ret_result = 0;
        *ret_fd = -EBADF;
        *ret_dead = false;

        do
                n = recvmsg(sock, &mh, MSG_DONTWAIT | MSG_CMSG_CLOEXEC);
        while (n < 0 && errno == EINTR);
        if (n < 0) {
                if (errno == ECONNRESET)
                        *ret_dead = true;
                return -errno;
        }

        /* Collect every fd that came along before judging, so that none leaks on an error path. */
        for (struct cmsghdr *cmsg = CMSG_FIRSTHDR(&mh); cmsg; cmsg = CMSG_NXTHDR(&mh, cmsg)) {
                size_t k;

                if (cmsg->cmsg_level != SOL_SOCKET || cmsg->cmsg_type != SCM_RIGHTS ||
                    cmsg->cmsg_len < CMSG_LEN(0)) {
                        bad_cmsg = true;
                        continue;
                }

                k = (cmsg->cmsg_len - CMSG_LEN(0)) / sizeof(int);
                for (size_t j = 0; j < k; j++) {
                        int fd;

                        memcpy(&fd, CMSG_DATA(cmsg) + j * sizeof(int), sizeof(int));
                        if ((size_t) n_fds < ELEMENTSOF(fds))
                                fds[n_fds++] = fd;
                        else
                                safe_close(fd);
                }
        }

        if (n == 0 && n_fds == 0 && !bad_cmsg) {
                *ret_dead = true;
                r = -ECONNRESET;
        } else if (bad_cmsg || (mh.msg_flags & (MSG_TRUNC | MSG_CTRUNC)) || (size_t) n != sizeof(value))
                r = -EBADMSG;
        else if (value > 0 || value < -4095)
                r = -EBADMSG;
        else if (n_fds != (want_fd && value == 0 ? 1 : 0))
                r = -EBADMSG;
        else
                r = 0;

        if (r < 0) {
                for (int i = 0; i < n_fds; i++)
                        safe_close(fds[i]);
                return r;
        }

        *ret_result = value;
        if (n_fds == 1)
                *ret_fd = fds[0];
        return 0;
}

/* The same, waiting for the answer until the deadline: the synchronous API. */
static int worker_receive(int sock, usec_t deadline, bool want_fd, int *ret_result, int *ret_fd, bool *ret_dead) {
        for (;;) {
                struct pollfd pfd = { .fd = sock, .events = POLLIN };
                usec_t t = now(CLOCK_MONOTONIC);
                int k, r;

                *ret_dead = false;
                if (t >= deadline)
                        return -ETIMEDOUT;

                k = poll(&pfd, 1, (int) MIN((deadline - t + USEC_PER_MSEC - 1) / USEC_PER_MSEC, (usec_t) INT_MAX));
                if (k < 0) {
                        if (errno == EINTR)
                                continue;
                        return -errno;
                }
                if (k == 0)
                        return -ETIMEDOUT;

                r = worker_receive_one(sock, want_fd, ret_result, ret_fd, ret_dead);
                if (r != -EAGAIN)
                        return r;
        }
}

/* The worker is the user, so what it sends is only as trustworthy as the user. Make sure a
 * compromised worker cannot hand us a socket, a device or a read-only fd where we expect a file to
 * write to. */
static int verify_fd(FileOp op, int fd, const Identity *id) {
        struct stat st;
        int flags;

        if (fstat(fd, &st) < 0)
                return -errno;
        if (!S_ISREG(st.st_mode))
                return -EBADMSG;
        flags = fcntl(fd, F_GETFL);
        if (flags < 0)
                return -errno;
        if ((flags & O_ACCMODE) != (op == FILE_OP_OPEN_READ ? O_RDONLY : O_RDWR))
                return -EBADMSG;
        if (op != FILE_OP_OPEN_READ && st.st_uid != id->uid)
                return -EBADMSG;
        return 0;
}

/* Forks the worker; it has not necessarily reported in yet. */
static int worker_fork(FileOps *f, const Identity *id, bool async, Worker **ret) {
        _cleanup_close_ int fd_daemon = -EBADF;
        _cleanup_free_ Worker *w = NULL;
        int pair[2], r;
        pid_t parent, pid;

        w = malloc(sizeof(Worker));
        if (!w)
                return -ENOMEM;

        if (socketpair(AF_UNIX, SOCK_SEQPACKET | SOCK_CLOEXEC, 0, pair) < 0)
                return -errno;
        fd_daemon = pair[0];

        /* Only our end: the event loop must never block in a send to a worker that stopped reading,
         * while the worker may well block in a send to us. */
        if (async) {
                int flags = fcntl(fd_daemon, F_GETFL);
                if (flags < 0 || fcntl(fd_daemon, F_SETFL, flags | O_NONBLOCK) < 0) {
                        r = -errno;
                        safe_close(pair[1]);
                        return r;
                }
        }

        parent = getpid();
        pid = fork();
        if (pid < 0) {
                r = -errno;
                safe_close(pair[1]);
                return r;
        }
        if (pid == 0) {
                /* The daemon's copy is not ours to keep (and memcheck would call it a leak). */
                w = mfree(w);
                safe_close(pair[0]);
                worker_run(pair[1], id, parent, f->idle_timeout);
        }
        safe_close(pair[1]);

        *w = (Worker) {
                .file_ops = f,
                .id = *id,
                .pid = pid,
                .fd = TAKE_FD(fd_daemon),
                .async = async,
                .last_used = now(CLOCK_MONOTONIC),
        };

        *ret = TAKE_PTR(w);
        return 0;
}

static int worker_spawn_sync(FileOps *f, const Identity *id, Worker **ret) {
        Worker *w;
        int fd, result, r;
        bool dead;

        r = worker_fork(f, id, false, &w);
        if (r < 0)
                return r;

        /* The worker reports how its switch to the identity went before it takes requests. */
        r = worker_receive(w->fd, usec_add(now(CLOCK_MONOTONIC), SPAWN_TIMEOUT_USEC), false, &result, &fd, &dead);
        if (r >= 0)
                r = result;
        if (r < 0) {
                if (dead)
                        r = -EPROTO; /* Died before it could even tell us why. */
                log_debug_errno(r, "File worker for UID %u failed to start: %m", (unsigned) id->uid);
                worker_free(f, w);
                return r;
        }

        log_debug("Started file worker %i for UID %u.", (int) w->pid, (unsigned) id->uid);
        *ret = w;
        return 0;
}

static int worker_on_io(sd_event_source *s, int fd, uint32_t revents, void *userdata);
static int worker_on_timer(sd_event_source *s, uint64_t usec, void *userdata);

/* Does not wait for the worker to report in: its report arrives like the answer to a request
 * that heads the FIFO, under the same kind of deadline. */
static int worker_spawn_async(FileOps *f, const Identity *id, Worker **ret) {
        Worker *w;
        int r;

        r = worker_fork(f, id, true, &w);
        if (r < 0)
                return r;

        w->deadline = usec_add(now(CLOCK_MONOTONIC), MIN(SPAWN_TIMEOUT_USEC, f->request_timeout));
        r = sd_event_add_io(f->event, &w->io, w->fd, EPOLLIN, worker_on_io, w);
        if (r >= 0)
                r = sd_event_add_time(f->event, &w->timer, CLOCK_MONOTONIC, w->deadline, TIMER_ACCURACY_USEC,
                                      worker_on_timer, w);
        if (r < 0) {
                worker_free(f, w);
                return r;
        }
        (void) sd_event_source_set_description(w->io, "file-worker");
        (void) sd_event_source_set_description(w->timer, "file-worker-timeout");

        log_debug("Started file worker %i for UID %u.", (int) w->pid, (unsigned) id->uid);
        *ret = w;
        return 0;
}

static int file_ops_get_worker(FileOps *f, const Identity *id, bool async, Worker **ret) {
        Worker **a, *w;
        int r;

        w = file_ops_find_worker(f, id, async);
        if (w) {
                *ret = w;
                return 0;
        }

        if (f->n_workers >= f->workers_max) {
                size_t lru = SIZE_MAX;

                /* A worker with requests in flight is not idle, it is slow: stopping it would fail
                 * them. If every worker is busy, this identity waits its turn. */
                for (size_t i = 0; i < f->n_workers; i++)
                        if (f->workers[i]->n_queued == 0 && (!f->workers[i]->async || f->workers[i]->ready) &&
                            (lru == SIZE_MAX || f->workers[i]->last_used < f->workers[lru]->last_used))
                                lru = i;
                if (lru == SIZE_MAX)
                        return -EAGAIN;
                file_ops_remove_worker(f, lru);
        }

        a = realloc(f->workers, (f->n_workers + 1) * sizeof(Worker *));
        if (!a)
                return -ENOMEM;
        f->workers = a;

        r = async ? worker_spawn_async(f, id, &w) : worker_spawn_sync(f, id, &w);
        if (r < 0)
                return r;

        f->workers[f->n_workers++] = w;
        *ret = w;
        return 0;
}

static void file_ops_stop_worker(FileOps *f, Worker *w) {
        for (size_t i = 0; i < f->n_workers; i++)
                if (f->workers[i] == w) {
                        file_ops_remove_worker(f, i);
                        return;
                }
}

static int validate_path(const char *p) {
        size_t l;

        if (!p || p[0] != '/')
                return -EINVAL;
        l = strnlen(p, PATH_MAX);
        if (l >= PATH_MAX)
                return -ENAMETOOLONG;
        return 0;
}

/* Both APIs send the same bytes. */
static int request_encode(FileOp op, const char *p0, const char *p1, uint8_t buf[static REQUEST_SIZE_MAX], size_t *ret_size) {
        Request req = { .op = op };
        int r;

        if (op < 0 || op >= _FILE_OP_MAX)
                return -EINVAL;
        r = validate_path(p0);
        if (r < 0)
                return r;
        req.len[0] = strlen(p0);
        if (op == FILE_OP_RENAME) {
                r = validate_path(p1);
                if (r < 0)
                        return r;
                req.len[1] = strlen(p1);
        }

        memcpy(buf, &req, sizeof(req));
        memcpy(buf + sizeof(req), p0, req.len[0]);
        if (req.len[1] > 0)
                memcpy(buf + sizeof(req) + req.len[0], p1, req.len[1]);
        *ret_size = sizeof(req) + req.len[0] + req.len[1];
        return 0;
}

/* ---------------------------------------------------------------------------------------------- */
/* The synchronous API */

static int file_ops_call(FileOps *f, const Identity *id, FileOp op, const char *p0, const char *p1) {
        uint8_t buf[REQUEST_SIZE_MAX];
        size_t len;
        int r;

        if (!f || !identity_is_valid(id))
                return -EINVAL;
        r = request_encode(op, p0, p1, buf, &len);
        if (r < 0)
                return r;

        /* A worker that exited (idle, killed by the user it runs as, OOM) is replaced once. */
        for (unsigned attempt = 0;; attempt++) {
                _cleanup_close_ int fd = -EBADF;
                bool dead = false;
                Worker *w;
                int result;

                r = file_ops_get_worker(f, id, false, &w);
                if (r < 0)
                        return r;

                if (send(w->fd, buf, len, MSG_NOSIGNAL) < 0) {
                        r = -errno;
                        dead = r == -EPIPE || r == -ECONNRESET;
                } else
                        r = worker_receive(w->fd, usec_add(now(CLOCK_MONOTONIC), f->request_timeout),
                                           op_returns_fd(op), &result, &fd, &dead);
                if (r < 0) {
                        if (r == -ETIMEDOUT)
                                log_warning("File worker %i of UID %u did not answer in time, killing it.",
                                            (int) w->pid, (unsigned) id->uid);
                        else
                                log_debug_errno(r, "File worker %i of UID %u is gone or out of sync, stopping it: %m",
                                                (int) w->pid, (unsigned) id->uid);
                        file_ops_stop_worker(f, w);
                        if (dead && attempt == 0)
                                continue;
                        return r;
                }

                w->last_used = now(CLOCK_MONOTONIC);
                if (result < 0)
                        return result;
                if (fd < 0)
                        return 0;

                r = verify_fd(op, fd, id);
                if (r < 0) {
                        log_error_errno(r, "File worker %i of UID %u passed an unexpected fd, stopping it: %m",
                                        (int) w->pid, (unsigned) id->uid);
                        file_ops_stop_worker(f, w);
                        return r;
                }
                return TAKE_FD(fd);
        }
}

int file_ops_check_dir(FileOps *f, const Identity *id, const char *dir) {
        return file_ops_call(f, id, FILE_OP_CHECK_DIR, dir, NULL);
}

int file_ops_check_target(FileOps *f, const Identity *id, const char *path) {
        return file_ops_call(f, id, FILE_OP_CHECK_TARGET, path, NULL);
}

int file_ops_create(FileOps *f, const Identity *id, const char *path) {
        return file_ops_call(f, id, FILE_OP_CREATE, path, NULL);
}

int file_ops_open_write(FileOps *f, const Identity *id, const char *path) {
        return file_ops_call(f, id, FILE_OP_OPEN_WRITE, path, NULL);
}

int file_ops_open_read(FileOps *f, const Identity *id, const char *path) {
        return file_ops_call(f, id, FILE_OP_OPEN_READ, path, NULL);
}

int file_ops_rename(FileOps *f, const Identity *id, const char *from, const char *to) {
        if (!to)
                return -EINVAL;
        return file_ops_call(f, id, FILE_OP_RENAME, from, to);
}

int file_ops_unlink(FileOps *f, const Identity *id, const char *path) {
        return file_ops_call(f, id, FILE_OP_UNLINK, path, NULL);
}

/* ---------------------------------------------------------------------------------------------- */
/* The asynchronous API */

/* Sends nothing any more and makes sure the worker dies: its EOF (or, should it hang in the kernel,
 * the deadline) then fails the FIFO from the event loop, never from within the caller. */
static void worker_break(Worker *w, int error) {
        if (w->broken)
                return;
        log_debug_errno(error, "File worker %i of UID %u is unusable, killing it: %m", (int) w->pid, (unsigned) w->id.uid);
        w->broken = true;
        if (w->pid > 0)
                (void) kill(w->pid, SIGKILL);
}

static void worker_update_sources(Worker *w) {
        int r;

        if (w->failing)
                return;

        r = sd_event_source_set_io_events(w->io, EPOLLIN | (w->unsent && !w->broken ? EPOLLOUT : 0));
        if (r < 0) {
                worker_break(w, r);
                return;
        }

        /* The deadline covers the head of the FIFO, i.e. what the worker is busy with right now; a
         * stuck head stalls everything behind it, so one timer per worker is enough. */
        if (!w->head && w->ready) {
                r = sd_event_source_set_enabled(w->timer, SD_EVENT_OFF);
                if (r < 0)
                        worker_break(w, r);
                return;
        }
        r = sd_event_source_set_time(w->timer, w->deadline);
        if (r >= 0)
                r = sd_event_source_set_enabled(w->timer, SD_EVENT_ONESHOT);
        if (r < 0)
                worker_break(w, r);
}

static void worker_flush(Worker *w) {
        while (w->unsent && !w->broken) {
                FileOpsRequest *r = w->unsent;

                if (send(w->fd, r->message, r->size, MSG_NOSIGNAL | MSG_DONTWAIT) < 0) {
                        if (errno == EINTR)
                                continue;
                        if (errno == EAGAIN)
                                break; /* The worker is behind: EPOLLOUT tells when there is room. */
                        worker_break(w, -errno);
                        break;
                }
                r->sent = true;
                r->message = mfree(r->message);
                w->unsent = r->next;
        }
        worker_update_sources(w);
}

/* The request must be out of the FIFO already. */
static void request_dispatch(FileOpsRequest *r, int result) {
        if (r->callback)
                r->callback(r, result, r->userdata);
        else if (op_returns_fd(r->op) && result >= 0)
                safe_close(result); /* withdrawn: nobody wants the fd */
        request_free(r);
}

/* Fails every request of the worker with error and frees it. Only from the event loop. */
static void worker_fail(Worker *w, int error) {
        FileOps *f = w->file_ops;

        /* Out of the table first, so that a callback that submits for the same identity gets a
         * fresh worker and one that cancels a request of this worker finds it still queued. */
        for (size_t i = 0; i < f->n_workers; i++)
                if (f->workers[i] == w) {
                        file_ops_unlink_worker(f, i);
                        break;
                }
        w->failing = true;
        w->io = sd_event_source_disable_unref(w->io);
        w->timer = sd_event_source_disable_unref(w->timer);
        w->fd = safe_close(w->fd);
        kill_async(f, w->pid);
        w->pid = 0;

        /* One at a time from the head: each callback may cancel any of the others. */
        while (w->head) {
                FileOpsRequest *r = w->head;

                queue_remove(w, r);
                request_dispatch(r, error);
        }
        free(w);
}

static int worker_on_timer(sd_event_source *s, uint64_t usec, void *userdata) {
        Worker *w = userdata;

        log_warning("File worker %i of UID %u did not %s in time, killing it.",
                    (int) w->pid, (unsigned) w->id.uid, w->ready ? "answer" : "start");
        worker_fail(w, -ETIMEDOUT);
        return 0;
}

static int worker_on_io(sd_event_source *s, int fd, uint32_t revents, void *userdata) {
        _cleanup_close_ int passed_fd = -EBADF;
        Worker *w = userdata;
        FileOpsRequest *r;
        int result, k;
        bool dead;
        usec_t n;

        if (revents & EPOLLOUT)
                worker_flush(w);
        if (!(revents & (EPOLLIN | EPOLLHUP | EPOLLERR)))
                return 0;

        /* One answer per iteration: the callback may free this worker, and the source is level
         * triggered, so the next answer comes with the next iteration. */
        r = w->ready && w->head && w->head->sent ? w->head : NULL;
        k = worker_receive_one(w->fd, r && op_returns_fd(r->op), &result, &passed_fd, &dead);
        if (k == -EAGAIN)
                return 0;
        if (k < 0) {
                if (dead)
                        k = w->ready ? -ECONNRESET : -EPROTO; /* -EPROTO: died before it could tell why. */
                log_debug_errno(k, "File worker %i of UID %u is gone or out of sync, stopping it: %m",
                                (int) w->pid, (unsigned) w->id.uid);
                worker_fail(w, k);
                return 0;
        }

        n = now(CLOCK_MONOTONIC);

        if (!w->ready) {
                if (result < 0) {
                        log_debug_errno(result, "File worker for UID %u failed to start: %m", (unsigned) w->id.uid);
                        worker_fail(w, result);
                        return 0;
                }
                w->ready = true;
                w->last_used = n;
                w->deadline = usec_add(n, w->file_ops->request_timeout);
                worker_update_sources(w);
                return 0;
        }

        if (!r) {
                log_debug("File worker %i of UID %u answered a question nobody asked, stopping it.",
                          (int) w->pid, (unsigned) w->id.uid);
                worker_fail(w, -EBADMSG);
                return 0;
        }

        if (passed_fd >= 0) {
                k = verify_fd(r->op, passed_fd, &w->id);
                if (k < 0) {
                        log_error_errno(k, "File worker %i of UID %u passed an unexpected fd, stopping it: %m",
                                        (int) w->pid, (unsigned) w->id.uid);
                        worker_fail(w, k);
                        return 0;
                }
                result = TAKE_FD(passed_fd);
        }

        /* Everything about the worker is settled before the callback: it may free the worker
         * (evicted as idle now, say), so it must not be touched afterwards. */
        queue_remove(w, r);
        w->last_used = n;
        w->deadline = usec_add(n, w->file_ops->request_timeout);
        worker_update_sources(w);

        request_dispatch(r, result);
        return 0;
}

int file_ops_submit(FileOps *f, const Identity *id, FileOp op, const char *path, const char *path2,
                    FileOpsCallback cb, void *userdata, FileOpsRequest **ret) {
        _cleanup_(request_freep) FileOpsRequest *req = NULL;
        uint8_t buf[REQUEST_SIZE_MAX];
        size_t size;
        Worker *w;
        usec_t n;
        int r;

        if (!f || !cb || !identity_is_valid(id))
                return -EINVAL;
        if (!f->event)
                return -ENXIO;
        r = request_encode(op, path, path2, buf, &size);
        if (r < 0)
                return r;

        req = malloc(sizeof(FileOpsRequest));
        if (!req)
                return -ENOMEM;
        *req = (FileOpsRequest) {
                .op = op,
                .callback = cb,
                .userdata = userdata,
                .size = size,
        };
        req->message = malloc(size);
        if (!req->message)
                return -ENOMEM;
        memcpy(req->message, buf, size);

        n = now(CLOCK_MONOTONIC);
        w = file_ops_find_worker(f, id, true);
        if (w && w->n_queued >= FILE_OPS_PENDING_MAX)
                return -EAGAIN;
        /* Idle for long, it may be exiting on its own right now (and would fail our request with
         * -ECONNRESET); a broken one is dying anyway. Either way a fresh one is cheaper. */
        if (w && !w->head && w->ready && (w->broken || usec_sub(n, w->last_used) >= f->idle_timeout)) {
                file_ops_stop_worker(f, w);
                w = NULL;
        }
        if (!w) {
                r = file_ops_get_worker(f, id, true, &w);
                if (r < 0)
                        return r;
        }

        if (!w->head && w->ready)
                w->deadline = usec_add(n, f->request_timeout);
        queue_append(w, req);
        if (ret)
                *ret = req;
        TAKE_PTR(req);

        worker_flush(w);
        return 0;
}

FileOpsRequest *file_ops_request_cancel(FileOpsRequest *r) {
        Worker *w;

        if (!r)
                return NULL;

        w = r->worker;
        if (!w)
                return NULL; /* Its callback is running right now; it is freed when that returns. */

        if (r->sent && !w->failing) {
                /* The worker will answer it: it keeps its place in the FIFO so that the answer is
                 * matched to it (and any fd closed), not to the request after it. */
                r->callback = NULL;
                r->userdata = NULL;
                return NULL;
        }

        queue_remove(w, r);
        request_free(r);
        worker_update_sources(w);
        return NULL;
}
