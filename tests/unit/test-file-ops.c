/* SPDX-License-Identifier: LGPL-2.1-or-later */
/* Runs as root: asserts that file operations done "as" UID 65534 get exactly nobody's permissions,
 * whatever symlinks, hardlinks and FIFOs are put in the way, and that worker processes are reused,
 * stopped and reaped as promised. */
#include <dirent.h>
#include <fcntl.h>
#include <ftw.h>
#include <limits.h>
#include <poll.h>
#include <signal.h>
#include <sys/prctl.h>
#include <sys/resource.h>
#include <sys/stat.h>
#include <sys/syscall.h>
#include <sys/wait.h>

#include "file-ops.h"
#include "log.h"
#include "macro.h"
#include "time-util.h"

#define NOBODY 65534

static char base[] = "/tmp/test-file-ops-XXXXXX";
static bool base_made = false;
static pid_t main_pid;
static unsigned n_checks = 0;

static const char *errname(long v) {
        const char *s;

        if (v >= 0)
                return "ok";
        s = strerrorname_np((int) -v);
        return s ?: "?";
}

#define CHECK(cond)                                                                             \
        do {                                                                                    \
                n_checks++;                                                                     \
                if (!(cond)) {                                                                  \
                        fprintf(stderr, "%s:%d: FAILED: %s\n", __FILE__, __LINE__, #cond);      \
                        exit(EXIT_FAILURE);                                                     \
                }                                                                               \
        } while (0)

#define CHECK_RET(expr, expected)                                                               \
        do {                                                                                    \
                long _a = (expr), _e = (expected);                                              \
                n_checks++;                                                                     \
                if (_a != _e) {                                                                 \
                        fprintf(stderr, "%s:%d: FAILED: %s = %ld (%s), expected %ld (%s)\n",    \
                                __FILE__, __LINE__, #expr, _a, errname(_a), _e, errname(_e));   \
                        exit(EXIT_FAILURE);                                                     \
                }                                                                               \
        } while (0)

/* Root's own helpers: a failure here is a broken test setup, not a finding. */
#define SETUP(expr)                                                                             \
        do {                                                                                    \
                if ((expr) < 0) {                                                               \
                        fprintf(stderr, "%s:%d: setup failed: %s: %m\n", __FILE__, __LINE__, #expr); \
                        exit(EXIT_FAILURE);                                                     \
                }                                                                               \
        } while (0)

static int rm_one(const char *path, const struct stat *st, int flag, struct FTW *ftw) {
        return remove(path) < 0 ? -errno : 0;
}

static void cleanup(void) {
        /* Only the test itself cleans up, not a forked child that happens to call exit(). */
        if (base_made && getpid() == main_pid)
                (void) nftw(base, rm_one, 16, FTW_DEPTH | FTW_PHYS);
}

static char *at(const char *rel) {
        char *p;
        SETUP(asprintf(&p, "%s/%s", base, rel));
        return p;
}

static void write_file(const char *path, const char *content, mode_t mode, uid_t uid) {
        _cleanup_close_ int fd = open(path, O_WRONLY | O_CREAT | O_EXCL | O_CLOEXEC, mode);
        SETUP(fd);
        SETUP(write(fd, content, strlen(content)));
        SETUP(fchmod(fd, mode));
        SETUP(fchown(fd, uid, uid));
}

static bool file_has(const char *path, const char *content) {
        char buf[256] = {};
        _cleanup_close_ int fd = open(path, O_RDONLY | O_CLOEXEC | O_NOFOLLOW);
        if (fd < 0)
                return false;
        if (read(fd, buf, sizeof(buf) - 1) < 0)
                return false;
        return streq(buf, content);
}

static bool fd_has(int fd, const char *content) {
        char buf[256] = {};
        if (pread(fd, buf, sizeof(buf) - 1, 0) < 0)
                return false;
        return streq(buf, content);
}

static bool exists(const char *path) {
        struct stat st;
        return lstat(path, &st) >= 0;
}

/* True if pid is not a child of ours any more, i.e. it was reaped (no zombie left behind). */
static bool reaped(pid_t pid) {
        return waitpid(pid, NULL, WNOHANG) < 0 && errno == ECHILD;
}

static bool status_has(pid_t pid, const char *line) {
        char path[64], buf[4096];
        _cleanup_fclose_ FILE *f = NULL;

        snprintf(path, sizeof(path), "/proc/%i/status", (int) pid);
        f = fopen(path, "re");
        if (!f)
                return false;
        while (fgets(buf, sizeof(buf), f))
                if (strncmp(buf, line, strlen(line)) == 0 && buf[strlen(line)] == '\n')
                        return true;
        return false;
}

/* The fds of pid above 2, as a count; *ret_has tells whether fd `probe` is among them. Fds at or
 * above our soft RLIMIT_NOFILE cannot be the program's: valgrind keeps its own there. */
static int count_fds(pid_t pid, int probe, bool *ret_has) {
        struct rlimit rl;
        char path[64];
        DIR *d;
        int n = 0;

        *ret_has = false;
        if (getrlimit(RLIMIT_NOFILE, &rl) < 0)
                return -errno;
        snprintf(path, sizeof(path), "/proc/%i/fd", (int) pid);
        d = opendir(path);
        if (!d)
                return -errno;
        for (struct dirent *de; (de = readdir(d));) {
                int fd;
                if (de->d_name[0] == '.')
                        continue;
                fd = atoi(de->d_name);
                if (fd == probe)
                        *ret_has = true;
                if (fd > 2 && (rlim_t) fd < rl.rlim_cur)
                        n++;
        }
        closedir(d);
        return n;
}

/* Whether pid has exited (zombie or gone), without reaping it. */
static bool has_exited(pid_t pid) {
        char path[64], buf[512], *p;
        _cleanup_fclose_ FILE *f = NULL;

        snprintf(path, sizeof(path), "/proc/%i/stat", (int) pid);
        f = fopen(path, "re");
        if (!f || !fgets(buf, sizeof(buf), f))
                return true;
        p = strrchr(buf, ')');
        return p && p[1] == ' ' && (p[2] == 'Z' || p[2] == 'X');
}

static int wait_exit(pid_t pid, int timeout_msec) {
        _cleanup_close_ int pidfd = (int) syscall(SYS_pidfd_open, pid, 0);
        struct pollfd p = { .fd = pidfd, .events = POLLIN };

        if (pidfd >= 0)
                return poll(&p, 1, timeout_msec) == 1 ? 0 : -ETIMEDOUT;
        if (errno != ENOSYS)
                return -errno;

        /* No pidfds (valgrind does not know the syscall): look, with a bound. */
        for (int i = 0; i < timeout_msec / 10; i++) {
                if (has_exited(pid))
                        return 0;
                (void) poll(NULL, 0, 10);
        }
        return -ETIMEDOUT;
}

static void test_identity(Identity *nobody, Identity *root) {
        Identity x;

        CHECK_RET(identity_from_uid(0, root), 0);
        CHECK(root->uid == 0 && root->gid == 0);
        CHECK_RET(identity_from_uid(NOBODY, nobody), 0);
        CHECK(nobody->uid == NOBODY && nobody->gid == NOBODY);
        CHECK(nobody->n_groups >= 1 && nobody->groups[0] == NOBODY);
        CHECK(identity_equal(nobody, nobody));
        CHECK(!identity_equal(nobody, root));

        CHECK_RET(identity_from_uid(123456789, &x), -ESRCH);
        CHECK(x.uid == 123456789 && x.gid == 123456789 && x.n_groups == 0);
        CHECK_RET(identity_from_uid((uid_t) -1, &x), -EINVAL);
}

static void test_permissions(FileOps *f, const Identity *nobody, const Identity *root) {
        _cleanup_free_ char *priv = at("private"), *priv_file = at("private/new"),
                            *shared = at("shared"), *shared_file = at("shared/f"), *shared_g = at("shared/g"),
                            *user = at("user"), *secret = at("secret"), *readable = at("readable"),
                            *u_new = at("user/new"), *u_link = at("user/link"), *u_link2 = at("user/link2"),
                            *u_rlink = at("user/rlink"), *u_own = at("user/own"), *hardlink = at("hardlink"),
                            *u_rootfile = at("user/rootfile"), *u_renamed = at("user/renamed"),
                            *u_fifo = at("user/fifo"), *u_sub = at("user/sub"), *u_missing = at("user/missing"),
                            *u_dlink = at("user/dirlink"), *nodir = at("user/nodir/x"), *u_wonly = at("user/wonly");
        _cleanup_close_ int fd = -EBADF;
        struct stat st;
        usec_t t;

        /* base: root 0755; private: root 0700; shared: root 0755; user: nobody 0755. */
        SETUP(chmod(base, 0755));
        SETUP(mkdir(priv, 0700));
        SETUP(mkdir(shared, 0755));
        SETUP(mkdir(user, 0755));
        SETUP(chown(user, NOBODY, NOBODY));
        write_file(secret, "secret", 0600, 0);
        write_file(readable, "public", 0644, 0);
        write_file(shared_file, "root's", 0644, 0);

        /* A root-only directory stays root-only. */
        CHECK_RET(file_ops_check_dir(f, nobody, priv), -EACCES);
        CHECK_RET(file_ops_create(f, nobody, priv_file), -EACCES);
        CHECK(!exists(priv_file));
        CHECK_RET(file_ops_check_dir(f, nobody, shared), -EACCES);
        CHECK_RET(file_ops_check_dir(f, root, priv), 0);

        /* check_dir follows a symlink like the user would, and says what is wrong. */
        CHECK_RET(file_ops_check_dir(f, nobody, user), 0);
        SETUP(symlink(user, u_dlink));
        CHECK_RET(file_ops_check_dir(f, nobody, u_dlink), 0);
        CHECK_RET(file_ops_check_dir(f, nobody, secret), -ENOTDIR);
        CHECK_RET(file_ops_check_dir(f, nobody, u_missing), -ENOENT);
        /* Writable but not listable is enough to create files. */
        SETUP(mkdir(u_wonly, 0300));
        SETUP(chown(u_wonly, NOBODY, NOBODY));
        CHECK_RET(file_ops_check_dir(f, nobody, u_wonly), 0);

        /* Creation in the user's directory: owned by them, 0644 whatever the daemon's umask, and the
         * fd we get is usable, read-write and close-on-exec. */
        fd = file_ops_create(f, nobody, u_new);
        CHECK_RET(fd >= 0 ? 0 : fd, 0);
        CHECK(fstat(fd, &st) >= 0);
        CHECK(S_ISREG(st.st_mode) && st.st_uid == NOBODY && st.st_gid == NOBODY);
        CHECK((st.st_mode & 07777) == 0644);
        CHECK((fcntl(fd, F_GETFD) & FD_CLOEXEC) != 0);
        CHECK((fcntl(fd, F_GETFL) & O_ACCMODE) == O_RDWR);
        CHECK(write(fd, "hello", 5) == 5);
        CHECK(file_has(u_new, "hello"));
        CHECK_RET(file_ops_create(f, nobody, u_new), -EEXIST);
        CHECK(file_has(u_new, "hello"));
        fd = safe_close(fd);

        /* open_write of the user's own single-link file works and neither truncates nor appends. */
        fd = file_ops_open_write(f, nobody, u_new);
        CHECK_RET(fd >= 0 ? 0 : fd, 0);
        CHECK(fd_has(fd, "hello"));
        CHECK((fcntl(fd, F_GETFL) & (O_NONBLOCK | O_APPEND | O_ACCMODE)) == O_RDWR);
        fd = safe_close(fd);

        /* Symlinks to root's secret get the user nowhere. */
        SETUP(symlink(secret, u_link));
        CHECK_RET(file_ops_create(f, nobody, u_link), -EEXIST);
        CHECK_RET(file_ops_open_write(f, nobody, u_link), -ELOOP);
        CHECK_RET(file_ops_open_read(f, nobody, u_link), -EACCES);
        CHECK_RET(file_ops_check_target(f, nobody, u_link), -ELOOP);
        CHECK(file_has(secret, "secret"));
        CHECK(stat(secret, &st) >= 0 && st.st_uid == 0 && (st.st_mode & 07777) == 0600);
        /* ... while root's identity is root. */
        fd = file_ops_open_read(f, root, u_link);
        CHECK_RET(fd >= 0 ? 0 : fd, 0);
        CHECK(fd_has(fd, "secret"));
        fd = safe_close(fd);

        /* open_read follows a symlink to what the user may read, as their own open would. */
        SETUP(symlink(readable, u_rlink));
        fd = file_ops_open_read(f, nobody, u_rlink);
        CHECK_RET(fd >= 0 ? 0 : fd, 0);
        CHECK(fd_has(fd, "public"));
        CHECK((fcntl(fd, F_GETFL) & (O_NONBLOCK | O_ACCMODE)) == O_RDONLY);
        CHECK((fcntl(fd, F_GETFD) & FD_CLOEXEC) != 0);
        fd = safe_close(fd);

        /* A second hard link (made elsewhere by root) makes the file unwritable for us. */
        fd = file_ops_create(f, nobody, u_own);
        CHECK_RET(fd >= 0 ? 0 : fd, 0);
        fd = safe_close(fd);
        SETUP(link(u_own, hardlink));
        CHECK_RET(file_ops_open_write(f, nobody, u_own), -EMLINK);
        SETUP(unlink(hardlink));
        fd = file_ops_open_write(f, nobody, u_own);
        CHECK_RET(fd >= 0 ? 0 : fd, 0);
        fd = safe_close(fd);

        /* Someone else's file in the user's directory, even if world-writable, is not written. */
        write_file(u_rootfile, "root's", 0666, 0);
        CHECK_RET(file_ops_open_write(f, nobody, u_rootfile), -EPERM);

        /* Renames: not in root's directory, not out of the user's directory into root's. */
        CHECK_RET(file_ops_rename(f, nobody, shared_file, shared_g), -EACCES);
        CHECK(file_has(shared_file, "root's") && !exists(shared_g));
        CHECK_RET(file_ops_rename(f, nobody, u_new, shared_g), -EACCES);
        CHECK(!exists(shared_g) && file_has(u_new, "hello"));
        CHECK_RET(file_ops_rename(f, nobody, u_new, u_renamed), 0);
        CHECK(!exists(u_new) && file_has(u_renamed, "hello"));
        CHECK(lstat(u_renamed, &st) >= 0 && st.st_uid == NOBODY);

        /* unlink removes a link, never its target. */
        SETUP(symlink(secret, u_link2));
        CHECK_RET(file_ops_unlink(f, nobody, u_link2), 0);
        CHECK(!exists(u_link2) && file_has(secret, "secret"));
        CHECK_RET(file_ops_unlink(f, nobody, u_link2), -ENOENT);
        CHECK_RET(file_ops_unlink(f, nobody, shared_file), -EACCES);
        CHECK(file_has(shared_file, "root's"));

        /* A FIFO does not hang the worker (that would show as -ETIMEDOUT after 5 s) and is refused. */
        SETUP(mkfifo(u_fifo, 0666));
        SETUP(chown(u_fifo, NOBODY, NOBODY));
        t = now(CLOCK_MONOTONIC);
        CHECK_RET(file_ops_open_read(f, nobody, u_fifo), -EINVAL);
        CHECK_RET(file_ops_open_write(f, nobody, u_fifo), -EINVAL);
        CHECK_RET(file_ops_check_target(f, nobody, u_fifo), -EINVAL);
        CHECK(now(CLOCK_MONOTONIC) - t < 2 * USEC_PER_SEC);

        /* check_target: what rename-into-place would be allowed to replace. */
        SETUP(mkdir(u_sub, 0755));
        SETUP(chown(u_sub, NOBODY, NOBODY));
        CHECK_RET(file_ops_check_target(f, nobody, u_rootfile), 0); /* 0666 */
        SETUP(chmod(u_rootfile, 0644));
        CHECK_RET(file_ops_check_target(f, nobody, u_rootfile), -EACCES);
        CHECK_RET(file_ops_check_target(f, nobody, u_missing), 0);
        CHECK(!exists(u_missing));
        CHECK_RET(file_ops_check_target(f, nobody, u_sub), -EISDIR);
        CHECK_RET(file_ops_check_target(f, nobody, u_renamed), 0);
        CHECK_RET(file_ops_check_target(f, nobody, nodir), -ENOENT);
        CHECK_RET(file_ops_check_target(f, nobody, priv_file), -EACCES);

        /* Paths are checked before anything runs. */
        CHECK_RET(file_ops_check_dir(f, nobody, "relative/dir"), -EINVAL);
        CHECK_RET(file_ops_check_dir(f, nobody, ""), -EINVAL);
        CHECK_RET(file_ops_rename(f, nobody, u_renamed, "renamed"), -EINVAL);
        {
                _cleanup_free_ char *longp = malloc(PATH_MAX + 1);
                SETUP(longp ? 0 : -1);
                memset(longp, 'a', PATH_MAX);
                longp[0] = '/';
                longp[PATH_MAX] = '\0';
                CHECK_RET(file_ops_check_dir(f, nobody, longp), -ENAMETOOLONG);
        }
        {
                Identity bad = *nobody;
                bad.uid = (uid_t) -1;
                CHECK_RET(file_ops_check_dir(f, &bad, user), -EINVAL);
                bad = *nobody;
                bad.n_groups = IDENTITY_GROUPS_MAX + 1;
                CHECK_RET(file_ops_check_dir(f, &bad, user), -EINVAL);
        }

}

/* What the kernel says about the worker process itself. */
static void test_worker_process(FileOps *f, const Identity *nobody, int probe_fd) {
        char path[64];
        struct stat st;
        bool has = false;
        pid_t pid;

        CHECK_RET(file_ops_check_dir(f, nobody, "/"), -EACCES);
        pid = file_ops_worker_pid(f, nobody);
        CHECK(pid > 0);

        CHECK(status_has(pid, "Uid:\t65534\t65534\t65534\t65534"));
        CHECK(status_has(pid, "Gid:\t65534\t65534\t65534\t65534"));
        CHECK(status_has(pid, "Groups:\t65534 "));
        CHECK(status_has(pid, "CapPrm:\t0000000000000000"));
        CHECK(status_has(pid, "CapEff:\t0000000000000000"));
        CHECK(status_has(pid, "CapAmb:\t0000000000000000"));
        CHECK(status_has(pid, "NoNewPrivs:\t1"));
        CHECK(status_has(pid, "SigBlk:\t0000000000000000"));
        CHECK(status_has(pid, "SigIgn:\t0000000000000000"));
        /* Not dumpable: its /proc entries stay root's, so the user cannot ptrace it or read its memory. */
        snprintf(path, sizeof(path), "/proc/%i/mem", (int) pid);
        CHECK(stat(path, &st) >= 0 && st.st_uid == 0);
        /* Of the daemon's fds only its socket survived (the test's non-CLOEXEC probe fd did not). */
        CHECK_RET(count_fds(pid, probe_fd, &has), 1);
        CHECK(!has);
}

static void test_lifecycle(const Identity *nobody, const Identity *root, const char *user) {
        _cleanup_(file_ops_freep) FileOps *f = NULL;
        pid_t pid, pid2;
        usec_t t;

        /* Reuse: one worker per identity. */
        CHECK_RET(file_ops_new(&f, 200 * USEC_PER_MSEC, 300 * USEC_PER_MSEC, 2), 0);
        CHECK_RET(file_ops_check_dir(f, nobody, user), 0);
        pid = file_ops_worker_pid(f, nobody);
        CHECK_RET(file_ops_check_dir(f, nobody, user), 0);
        CHECK(pid > 0 && file_ops_worker_pid(f, nobody) == pid);
        CHECK_RET(file_ops_worker_count(f), 1);
        CHECK_RET(file_ops_check_dir(f, root, user), 0);
        CHECK_RET(file_ops_worker_count(f), 2);
        CHECK(file_ops_worker_pid(f, root) != pid);

        /* A worker that died (killed by the user it runs as, say) is replaced transparently, reaped,
         * and sending to its dead socket does not SIGPIPE us. */
        SETUP(kill(pid, SIGKILL));
        SETUP(wait_exit(pid, 5000));
        CHECK_RET(file_ops_check_dir(f, nobody, user), 0);
        pid2 = file_ops_worker_pid(f, nobody);
        CHECK(pid2 > 0 && pid2 != pid);
        CHECK(reaped(pid));

        /* A stuck worker: -ETIMEDOUT after the request timeout, killed and reaped, then replaced. */
        SETUP(kill(pid2, SIGSTOP));
        t = now(CLOCK_MONOTONIC);
        CHECK_RET(file_ops_check_dir(f, nobody, user), -ETIMEDOUT);
        t = now(CLOCK_MONOTONIC) - t;
        CHECK(t >= 250 * USEC_PER_MSEC && t < 3 * USEC_PER_SEC);
        CHECK_RET(file_ops_worker_pid(f, nobody), 0);
        CHECK(reaped(pid2));
        CHECK_RET(file_ops_check_dir(f, nobody, user), 0);
        pid = file_ops_worker_pid(f, nobody);
        CHECK(pid > 0 && pid != pid2);

        /* Idle: gc before the timeout keeps it, after the timeout kills and reaps it. */
        file_ops_gc(f);
        CHECK_RET(file_ops_worker_pid(f, nobody), pid);
        (void) poll(NULL, 0, 250);
        file_ops_gc(f);
        CHECK_RET(file_ops_worker_count(f), 0);
        CHECK(reaped(pid));

        /* LRU: with room for two, a third identity stops the least recently used one. */
        {
                Identity other = *nobody;
                pid_t p_root, p_nobody;

                other.uid = other.gid = 65533;
                other.n_groups = 0;
                CHECK_RET(file_ops_check_dir(f, root, user), 0);
                CHECK_RET(file_ops_check_dir(f, nobody, user), 0);
                p_root = file_ops_worker_pid(f, root);
                p_nobody = file_ops_worker_pid(f, nobody);
                CHECK_RET(file_ops_check_dir(f, root, user), 0); /* nobody's is now the LRU */
                CHECK_RET(file_ops_check_dir(f, &other, "/"), -EACCES);
                CHECK_RET(file_ops_worker_count(f), 2);
                CHECK_RET(file_ops_worker_pid(f, nobody), 0);
                CHECK_RET(file_ops_worker_pid(f, root), p_root);
                CHECK(reaped(p_nobody));
        }

        /* A worker nobody stops exits on its own after twice the idle timeout; gc reaps it. */
        CHECK_RET(file_ops_check_dir(f, nobody, user), 0);
        pid = file_ops_worker_pid(f, nobody);
        CHECK_RET(wait_exit(pid, 5000), 0);
        file_ops_gc(f);
        CHECK_RET(file_ops_worker_pid(f, nobody), 0);
        CHECK(reaped(pid));

        /* file_ops_free() leaves no worker behind. */
        CHECK_RET(file_ops_check_dir(f, nobody, user), 0);
        pid = file_ops_worker_pid(f, nobody);
        f = file_ops_free(f);
        CHECK(reaped(pid));
        CHECK(kill(pid, 0) < 0 && errno == ESRCH);
}

/* The daemon dies without cleaning up: its workers must die with it (PR_SET_PDEATHSIG, which the
 * switch to the user's UID would have cleared had it been set only before), even a worker that
 * cannot notice on its own (here: stopped, as if hung in a file system, so it never reads the
 * end of its socket). */
static void test_parent_death(const Identity *nobody) {
        int pfd[2], gofd[2], status;
        pid_t child, worker = 0;
        char go = 0;

        SETUP(prctl(PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0));
        SETUP(pipe2(pfd, O_CLOEXEC));
        SETUP(pipe2(gofd, O_CLOEXEC));
        child = fork();
        SETUP(child);
        if (child == 0) {
                FileOps *f = NULL;
                pid_t p;
                char c;

                if (file_ops_new(&f, 0, 0, 0) < 0 || file_ops_check_dir(f, nobody, "/") != -EACCES)
                        _exit(EXIT_FAILURE);
                p = file_ops_worker_pid(f, nobody);
                if (write(pfd[1], &p, sizeof(p)) != sizeof(p) || read(gofd[0], &c, 1) != 1)
                        _exit(EXIT_FAILURE);
                _exit(EXIT_SUCCESS); /* no file_ops_free(): a crash */
        }
        safe_close(pfd[1]);
        safe_close(gofd[0]);
        CHECK(read(pfd[0], &worker, sizeof(worker)) == sizeof(worker));
        safe_close(pfd[0]);
        CHECK(worker > 0);
        if (worker > 0)
                SETUP(kill(worker, SIGSTOP));
        CHECK(write(gofd[1], &go, 1) == 1);
        safe_close(gofd[1]);
        SETUP(waitpid(child, &status, 0));
        CHECK(WIFEXITED(status) && WEXITSTATUS(status) == 0);

        /* Orphaned, it is now our child (subreaper), and killed by its parent's death. */
        CHECK_RET(wait_exit(worker, 5000), 0);
        SETUP(waitpid(worker, &status, 0));
        CHECK(WIFSIGNALED(status) && WTERMSIG(status) == SIGKILL);
        SETUP(prctl(PR_SET_CHILD_SUBREAPER, 0, 0, 0, 0));
}

/* ---------------------------------------------------------------------------------------------- */
/* The asynchronous API, driven by a real event loop */

typedef struct Done {
        bool called;
        int result;
        unsigned seq;           /* in which order the callbacks ran */
        FileOpsRequest *req;
        FileOpsRequest *cancel; /* on_cancel_other: withdrawn from within the callback */
} Done;

static unsigned n_callbacks = 0;
static bool no_pidfd = false;

static void on_done(FileOpsRequest *req, int result, void *userdata) {
        Done *d = userdata;

        if (d->called || req != d->req) {
                fprintf(stderr, "FAILED: callback called twice or for the wrong request\n");
                exit(EXIT_FAILURE);
        }
        d->called = true;
        d->result = result;
        d->seq = ++n_callbacks;
}

/* Like a caller freeing an object that owns another pending request. */
static void on_cancel_other(FileOpsRequest *req, int result, void *userdata) {
        Done *d = userdata;

        on_done(req, result, userdata);
        d->cancel = file_ops_request_cancel(d->cancel);
        /* Withdrawing the request whose callback runs is a no-op, not a double free. */
        (void) file_ops_request_cancel(req);
}

/* Not counted as checks, or the loops below would dwarf everything else in the count. */
static void submit(FileOps *f, const Identity *id, FileOp op, const char *p, const char *p2, Done *d) {
        unsigned n = n_callbacks;
        int r;

        *d = (Done) { .result = INT_MIN };
        r = file_ops_submit(f, id, op, p, p2, on_done, d, &d->req);
        if (r < 0 || !d->req || d->called || n_callbacks != n) { /* never called from within submit */
                fprintf(stderr, "FAILED: submit of '%s': %s, callbacks %u -> %u\n", p, errname(r), n, n_callbacks);
                exit(EXIT_FAILURE);
        }
}

static bool flag_set(const void *p) {
        return *(const bool *) p;
}

/* Runs the loop until done(arg) or the timeout. */
static bool run_until(sd_event *e, bool (*done)(const void *), const void *arg, usec_t timeout) {
        usec_t deadline = usec_add(now(CLOCK_MONOTONIC), timeout);

        while (!done(arg)) {
                usec_t n = now(CLOCK_MONOTONIC);
                if (n >= deadline)
                        return false;
                SETUP(sd_event_run(e, deadline - n));
        }
        return true;
}

static bool run_until_called(sd_event *e, Done *d, usec_t timeout) {
        return run_until(e, flag_set, &d->called, timeout);
}

/* Runs the loop for a while, whatever happens. */
static void run_for(sd_event *e, usec_t t) {
        static const bool never = false;
        (void) run_until(e, flag_set, &never, t);
}

static bool callbacks_reach(const void *p) {
        return n_callbacks >= *(const unsigned *) p;
}

typedef struct GoneArg {
        FileOps *f;
        pid_t pid;
} GoneArg;

/* The /proc entry goes only when the process was reaped: a zombie keeps it. */
static bool pid_gone(const void *p) {
        const GoneArg *a = p;
        char path[64];

        /* Without pidfds (valgrind) the daemon's periodic gc is what reaps killed workers. */
        if (no_pidfd)
                file_ops_gc(a->f);
        snprintf(path, sizeof(path), "/proc/%i", (int) a->pid);
        return access(path, F_OK) < 0 && errno == ENOENT;
}

static bool run_until_reaped(sd_event *e, FileOps *f, pid_t pid) {
        GoneArg a = { f, pid };
        return run_until(e, pid_gone, &a, 3 * USEC_PER_SEC) && reaped(pid);
}

static int async_call(FileOps *f, sd_event *e, const Identity *id, FileOp op, const char *p, const char *p2) {
        Done d;

        submit(f, id, op, p, p2, &d);
        CHECK(run_until_called(e, &d, 5 * USEC_PER_SEC));
        return d.result;
}

/* Sync and async agree, on failures and on successes. */
static void test_async_results(sd_event *e, const Identity *nobody, const Identity *root) {
        _cleanup_free_ char *dir = at("a"), *user = at("a/user"), *priv = at("a/priv"), *priv_x = at("a/priv/x"),
                            *secret = at("a/secret"), *readable = at("a/readable"), *link = at("a/user/link"),
                            *rlink = at("a/user/rlink"), *missing = at("a/user/missing"), *nw = at("a/user/new"),
                            *renamed = at("a/user/renamed"), *u_x = at("a/user/x");
        _cleanup_(file_ops_freep) FileOps *f = NULL, *unattached = NULL;
        _cleanup_close_ int fd = -EBADF;
        struct stat st;
        const struct {
                FileOp op;
                const char *p, *p2;
                int expected;
        } table[] = {
                { FILE_OP_CHECK_DIR, priv, NULL, -EACCES },
                { FILE_OP_CHECK_DIR, user, NULL, 0 },
                { FILE_OP_CHECK_DIR, secret, NULL, -ENOTDIR },
                { FILE_OP_CHECK_DIR, missing, NULL, -ENOENT },
                { FILE_OP_CREATE, priv_x, NULL, -EACCES },
                { FILE_OP_OPEN_WRITE, link, NULL, -ELOOP },
                { FILE_OP_OPEN_READ, link, NULL, -EACCES },
                { FILE_OP_CHECK_TARGET, link, NULL, -ELOOP },
                { FILE_OP_CHECK_TARGET, missing, NULL, 0 },
                { FILE_OP_UNLINK, secret, NULL, -EACCES },
                { FILE_OP_RENAME, secret, u_x, -EACCES },
                { FILE_OP_UNLINK, missing, NULL, -ENOENT },
        };

        /* chmod: the test runs with umask 077, like a daemon. */
        SETUP(mkdir(dir, 0755));
        SETUP(chmod(dir, 0755));
        SETUP(mkdir(user, 0755));
        SETUP(chmod(user, 0755));
        SETUP(chown(user, NOBODY, NOBODY));
        SETUP(mkdir(priv, 0700));
        write_file(secret, "secret", 0600, 0);
        write_file(readable, "public", 0644, 0);
        SETUP(symlink(secret, link));
        SETUP(symlink(readable, rlink));

        CHECK_RET(file_ops_new(&f, 0, 5 * USEC_PER_SEC, 0), 0);
        CHECK_RET(file_ops_submit(f, nobody, FILE_OP_CHECK_DIR, user, NULL, on_done, NULL, NULL), -ENXIO);
        CHECK_RET(file_ops_attach_event(f, e), 0);
        CHECK_RET(file_ops_attach_event(f, e), 0);

        for (size_t i = 0; i < ELEMENTSOF(table); i++) {
                CHECK_RET(async_call(f, e, nobody, table[i].op, table[i].p, table[i].p2), table[i].expected);
                switch (table[i].op) {
                case FILE_OP_CHECK_DIR:
                        CHECK_RET(file_ops_check_dir(f, nobody, table[i].p), table[i].expected);
                        break;
                case FILE_OP_CHECK_TARGET:
                        CHECK_RET(file_ops_check_target(f, nobody, table[i].p), table[i].expected);
                        break;
                case FILE_OP_CREATE:
                        CHECK_RET(file_ops_create(f, nobody, table[i].p), table[i].expected);
                        break;
                case FILE_OP_OPEN_WRITE:
                        CHECK_RET(file_ops_open_write(f, nobody, table[i].p), table[i].expected);
                        break;
                case FILE_OP_OPEN_READ:
                        CHECK_RET(file_ops_open_read(f, nobody, table[i].p), table[i].expected);
                        break;
                case FILE_OP_RENAME:
                        CHECK_RET(file_ops_rename(f, nobody, table[i].p, table[i].p2), table[i].expected);
                        break;
                case FILE_OP_UNLINK:
                        CHECK_RET(file_ops_unlink(f, nobody, table[i].p), table[i].expected);
                        break;
                default:
                        CHECK(false);
                }
        }
        CHECK(file_has(secret, "secret") && !exists(priv_x) && !exists(u_x));
        /* One synchronous and one asynchronous worker for the user, running as the user. */
        CHECK_RET(file_ops_worker_count(f), 2);
        CHECK(file_ops_worker_pid_async(f, nobody) > 0);
        CHECK(file_ops_worker_pid_async(f, nobody) != file_ops_worker_pid(f, nobody));
        CHECK(status_has(file_ops_worker_pid_async(f, nobody), "Uid:\t65534\t65534\t65534\t65534"));

        /* The callback gets an fd it owns, to a file the user owns. */
        fd = async_call(f, e, nobody, FILE_OP_CREATE, nw, NULL);
        CHECK_RET(fd >= 0 ? 0 : fd, 0);
        CHECK(fstat(fd, &st) >= 0 && S_ISREG(st.st_mode) && st.st_uid == NOBODY && st.st_gid == NOBODY);
        CHECK((st.st_mode & 07777) == 0644);
        CHECK((fcntl(fd, F_GETFD) & FD_CLOEXEC) != 0);
        CHECK((fcntl(fd, F_GETFL) & O_ACCMODE) == O_RDWR);
        CHECK(write(fd, "hello", 5) == 5);
        fd = safe_close(fd);
        CHECK_RET(async_call(f, e, nobody, FILE_OP_CREATE, nw, NULL), -EEXIST);

        fd = async_call(f, e, nobody, FILE_OP_OPEN_WRITE, nw, NULL);
        CHECK_RET(fd >= 0 ? 0 : fd, 0);
        CHECK(fd_has(fd, "hello"));
        CHECK((fcntl(fd, F_GETFL) & (O_NONBLOCK | O_APPEND | O_ACCMODE)) == O_RDWR);
        fd = safe_close(fd);

        fd = async_call(f, e, nobody, FILE_OP_OPEN_READ, rlink, NULL);
        CHECK_RET(fd >= 0 ? 0 : fd, 0);
        CHECK(fd_has(fd, "public"));
        CHECK((fcntl(fd, F_GETFL) & O_ACCMODE) == O_RDONLY);
        fd = safe_close(fd);
        fd = async_call(f, e, root, FILE_OP_OPEN_READ, link, NULL);
        CHECK_RET(fd >= 0 ? 0 : fd, 0);
        CHECK(fd_has(fd, "secret"));
        fd = safe_close(fd);

        CHECK_RET(async_call(f, e, nobody, FILE_OP_RENAME, nw, renamed), 0);
        CHECK(!exists(nw) && file_has(renamed, "hello"));
        CHECK(lstat(renamed, &st) >= 0 && st.st_uid == NOBODY);
        CHECK_RET(async_call(f, e, nobody, FILE_OP_UNLINK, renamed, NULL), 0);
        CHECK(!exists(renamed));
        CHECK_RET(async_call(f, e, nobody, FILE_OP_UNLINK, renamed, NULL), -ENOENT);

        /* Arguments are checked before anything is queued. */
        CHECK_RET(file_ops_submit(f, nobody, FILE_OP_CHECK_DIR, "relative", NULL, on_done, NULL, NULL), -EINVAL);
        CHECK_RET(file_ops_submit(f, nobody, FILE_OP_RENAME, renamed, NULL, on_done, NULL, NULL), -EINVAL);
        CHECK_RET(file_ops_submit(f, nobody, _FILE_OP_MAX, user, NULL, on_done, NULL, NULL), -EINVAL);
        CHECK_RET(file_ops_submit(f, nobody, FILE_OP_CHECK_DIR, user, NULL, NULL, NULL, NULL), -EINVAL);
        {
                Identity bad = *nobody;
                bad.uid = (uid_t) -1;
                CHECK_RET(file_ops_submit(f, &bad, FILE_OP_CHECK_DIR, user, NULL, on_done, NULL, NULL), -EINVAL);
        }
        CHECK(file_ops_request_cancel(NULL) == NULL);

        CHECK_RET(file_ops_new(&unattached, 0, 0, 0), 0);
        CHECK_RET(file_ops_submit(unattached, nobody, FILE_OP_CHECK_DIR, user, NULL, on_done, NULL, NULL), -ENXIO);
}

static void on_chain(FileOpsRequest *req, int result, void *userdata);

typedef struct Chain {
        FileOps *f;
        const Identity *id;
        const char *dir;
        unsigned left;
        Done d;
} Chain;

/* A callback that submits the next request. */
static void on_chain(FileOpsRequest *req, int result, void *userdata) {
        Chain *c = userdata;

        if (result != 0 || c->left == 0) {
                fprintf(stderr, "FAILED: chained request: %i\n", result);
                exit(EXIT_FAILURE);
        }
        if (--c->left > 0 &&
            file_ops_submit(c->f, c->id, FILE_OP_CHECK_DIR, c->dir, NULL, on_chain, c, NULL) < 0) {
                fprintf(stderr, "FAILED: submit from a callback\n");
                exit(EXIT_FAILURE);
        }
}

static bool chain_done(const void *p) {
        return ((const Chain *) p)->left == 0;
}

/* Answered in the order asked, also when the socket buffer fills and sends wait for EPOLLOUT. */
static void test_async_order(sd_event *e, const Identity *nobody) {
        _cleanup_free_ char *user = at("a/user"), *priv = at("a/priv");
        _cleanup_(file_ops_freep) FileOps *f = NULL;
        _cleanup_free_ Done *d = NULL;
        const unsigned counts[] = { 100, 1000 };
        pid_t pid;

        CHECK_RET(file_ops_new(&f, 0, 10 * USEC_PER_SEC, 0), 0);
        CHECK_RET(file_ops_attach_event(f, e), 0);
        d = calloc(1000, sizeof(Done));
        SETUP(d ? 0 : -1);

        for (size_t k = 0; k < ELEMENTSOF(counts); k++) {
                unsigned first = n_callbacks, target = n_callbacks + counts[k];
                bool ok = true;

                for (unsigned i = 0; i < counts[k]; i++)
                        submit(f, nobody, FILE_OP_CHECK_DIR, i % 3 == 0 ? priv : user, NULL, &d[i]);
                CHECK(run_until(e, callbacks_reach, &target, 20 * USEC_PER_SEC));
                for (unsigned i = 0; i < counts[k]; i++)
                        ok = ok && d[i].called && d[i].seq == first + i + 1 && d[i].result == (i % 3 == 0 ? -EACCES : 0);
                CHECK(ok);
        }
        pid = file_ops_worker_pid_async(f, nobody);
        CHECK(pid > 0);

        {
                Chain c = { .f = f, .id = nobody, .dir = user, .left = 5 };
                CHECK_RET(file_ops_submit(f, nobody, FILE_OP_CHECK_DIR, user, NULL, on_chain, &c, NULL), 0);
                CHECK(run_until(e, chain_done, &c, 5 * USEC_PER_SEC));
        }
        CHECK_RET(file_ops_worker_pid_async(f, nobody), pid);
}

/* The point of it all: a stuck worker delays its own user only. */
static void test_async_isolation(sd_event *e, const Identity *nobody, const Identity *root) {
        _cleanup_free_ char *user = at("a/user");
        _cleanup_(file_ops_freep) FileOps *f = NULL;
        Done a1, a2, a3, b;
        pid_t pid, pid2;
        usec_t t0, t;

        CHECK_RET(file_ops_new(&f, 0, 300 * USEC_PER_MSEC, 0), 0);
        CHECK_RET(file_ops_attach_event(f, e), 0);
        CHECK_RET(async_call(f, e, nobody, FILE_OP_CHECK_DIR, user, NULL), 0);
        pid = file_ops_worker_pid_async(f, nobody);
        CHECK(pid > 0);

        SETUP(kill(pid, SIGSTOP));
        t0 = now(CLOCK_MONOTONIC);
        /* Withdrawn after it was sent: failing the worker must skip it silently. */
        submit(f, nobody, FILE_OP_CHECK_DIR, user, NULL, &a3);
        CHECK(file_ops_request_cancel(a3.req) == NULL);
        /* a1's callback withdraws a3, like a caller freeing an object that owns it. */
        a1 = (Done) { .result = INT_MIN };
        CHECK_RET(file_ops_submit(f, nobody, FILE_OP_CHECK_DIR, user, NULL, on_cancel_other, &a1, &a1.req), 0);
        submit(f, nobody, FILE_OP_CHECK_DIR, user, NULL, &a2);
        submit(f, nobody, FILE_OP_CHECK_DIR, user, NULL, &a3);
        a1.cancel = a3.req;

        /* Another user's request (needing a new worker, even) is answered at once. */
        submit(f, root, FILE_OP_CHECK_DIR, user, NULL, &b);
        CHECK(run_until_called(e, &b, USEC_PER_SEC));
        t = now(CLOCK_MONOTONIC) - t0;
        CHECK_RET(b.result, 0);
        CHECK(t < 250 * USEC_PER_MSEC);
        CHECK(!a1.called && !a2.called && !a3.called);
        /* So is a synchronous call of the same user: it has a worker of its own. */
        CHECK_RET(file_ops_check_dir(f, nobody, user), 0);
        CHECK(now(CLOCK_MONOTONIC) - t0 < 250 * USEC_PER_MSEC);
        CHECK(!a1.called && !a2.called);

        /* The stuck user's requests time out, all of them, and the worker is killed and reaped. */
        CHECK(run_until_called(e, &a1, 3 * USEC_PER_SEC));
        CHECK(run_until_called(e, &a2, USEC_PER_SEC));
        t = now(CLOCK_MONOTONIC) - t0;
        CHECK(t >= 290 * USEC_PER_MSEC && t < 2 * USEC_PER_SEC);
        CHECK_RET(a1.result, -ETIMEDOUT);
        CHECK_RET(a2.result, -ETIMEDOUT);
        CHECK(a1.seq < a2.seq);
        CHECK(!a3.called && !a1.cancel); /* withdrawn by a1's callback */
        CHECK_RET(file_ops_worker_pid_async(f, nobody), 0);
        CHECK(run_until_reaped(e, f, pid));

        /* A fresh worker serves the next request. */
        CHECK_RET(async_call(f, e, nobody, FILE_OP_CHECK_DIR, user, NULL), 0);
        pid2 = file_ops_worker_pid_async(f, nobody);
        CHECK(pid2 > 0 && pid2 != pid);

        /* A worker that dies fails what it had with -ECONNRESET. */
        SETUP(kill(pid2, SIGSTOP));
        submit(f, nobody, FILE_OP_CHECK_DIR, user, NULL, &a1);
        submit(f, nobody, FILE_OP_CHECK_DIR, user, NULL, &a2);
        SETUP(kill(pid2, SIGKILL));
        CHECK(run_until_called(e, &a2, USEC_PER_SEC));
        CHECK_RET(a1.result, -ECONNRESET);
        CHECK_RET(a2.result, -ECONNRESET);
        CHECK(run_until_reaped(e, f, pid2));
        CHECK_RET(async_call(f, e, nobody, FILE_OP_CHECK_DIR, user, NULL), 0);
        CHECK(file_ops_worker_pid_async(f, nobody) > 0);

        /* A worker that exits on its own while idle is reaped by the loop, without gc. */
        pid = file_ops_worker_pid_async(f, nobody);
        SETUP(kill(pid, SIGTERM));
        CHECK(run_until_reaped(e, f, pid));
        CHECK_RET(async_call(f, e, nobody, FILE_OP_CHECK_DIR, user, NULL), 0);
}

/* Withdrawn requests: no callback, no fd left behind. */
static void test_async_cancel(sd_event *e, const Identity *nobody) {
        _cleanup_free_ char *user = at("a/user"), *c1 = at("a/user/cancelled1"), *c2 = at("a/user/cancelled2"),
                            *priv = at("a/priv");
        _cleanup_(file_ops_freep) FileOps *f = NULL;
        _cleanup_free_ Done *d = NULL;
        Done x, y, z;
        bool has;
        int n0;
        pid_t pid;
        unsigned n, target;

        CHECK_RET(file_ops_new(&f, 0, 300 * USEC_PER_MSEC, 0), 0);
        CHECK_RET(file_ops_attach_event(f, e), 0);
        CHECK_RET(async_call(f, e, nobody, FILE_OP_CHECK_DIR, user, NULL), 0);
        pid = file_ops_worker_pid_async(f, nobody);
        n0 = count_fds(getpid(), -1, &has);
        CHECK(n0 > 0);

        /* Sent to a stopped worker, withdrawn, answered later: the answer and its fd are dropped. */
        SETUP(kill(pid, SIGSTOP));
        submit(f, nobody, FILE_OP_CREATE, c1, NULL, &x);
        submit(f, nobody, FILE_OP_OPEN_READ, "/etc/passwd", NULL, &y);
        submit(f, nobody, FILE_OP_CREATE, c2, NULL, &z);
        CHECK(file_ops_request_cancel(x.req) == NULL);
        CHECK(file_ops_request_cancel(y.req) == NULL);
        SETUP(kill(pid, SIGCONT));
        CHECK(run_until_called(e, &z, USEC_PER_SEC));
        CHECK(!x.called && !y.called);
        CHECK_RET(z.result >= 0 ? 0 : z.result, 0);
        z.result = safe_close(z.result);
        /* The withdrawn create did run (it had been sent): withdrawing is not undoing. */
        CHECK(exists(c1) && exists(c2));
        CHECK_RET(count_fds(getpid(), -1, &has), n0);
        CHECK_RET(file_ops_worker_pid_async(f, nobody), pid);

        /* Bounded: FILE_OPS_PENDING_MAX for a stopped worker, then -EAGAIN; withdrawn ones, sent
         * or not (the socket buffer holds far fewer), never call back. */
        d = calloc(FILE_OPS_PENDING_MAX, sizeof(Done));
        SETUP(d ? 0 : -1);
        SETUP(kill(pid, SIGSTOP));
        n = n_callbacks;
        for (unsigned i = 0; i < FILE_OPS_PENDING_MAX; i++)
                submit(f, nobody, FILE_OP_CHECK_DIR, user, NULL, &d[i]);
        CHECK_RET(file_ops_submit(f, nobody, FILE_OP_CHECK_DIR, user, NULL, on_done, &x, NULL), -EAGAIN);
        for (unsigned i = 0; i < 10; i++) {
                d[10 + i].req = file_ops_request_cancel(d[10 + i].req);
                d[FILE_OPS_PENDING_MAX - 1 - i].req = file_ops_request_cancel(d[FILE_OPS_PENDING_MAX - 1 - i].req);
        }
        CHECK_RET(n_callbacks, n);
        target = n + FILE_OPS_PENDING_MAX - 20;
        CHECK(run_until(e, callbacks_reach, &target, 3 * USEC_PER_SEC));
        run_for(e, 50 * USEC_PER_MSEC);
        CHECK_RET(n_callbacks, target);
        {
                bool ok = true;
                for (unsigned i = 0; i < FILE_OPS_PENDING_MAX; i++) {
                        bool withdrawn = (i >= 10 && i < 20) || i >= FILE_OPS_PENDING_MAX - 10;
                        ok = ok && (withdrawn ? !d[i].called : d[i].called && d[i].result == -ETIMEDOUT);
                }
                CHECK(ok);
        }
        CHECK(run_until_reaped(e, f, pid));

        /* All workers busy and no room for another: -EAGAIN rather than stopping a busy one. */
        f = file_ops_free(f);
        CHECK_RET(file_ops_new(&f, 0, 5 * USEC_PER_SEC, 1), 0);
        CHECK_RET(file_ops_attach_event(f, e), 0);
        CHECK_RET(async_call(f, e, nobody, FILE_OP_CHECK_DIR, user, NULL), 0);
        pid = file_ops_worker_pid_async(f, nobody);
        SETUP(kill(pid, SIGSTOP));
        submit(f, nobody, FILE_OP_CHECK_DIR, priv, NULL, &x);
        {
                Identity other = *nobody;
                other.uid = other.gid = 1;
                other.n_groups = 0;
                CHECK_RET(file_ops_submit(f, &other, FILE_OP_CHECK_DIR, user, NULL, on_done, &y, NULL), -EAGAIN);
                CHECK_RET(file_ops_check_dir(f, &other, user), -EAGAIN);
                CHECK_RET(file_ops_worker_pid_async(f, nobody), pid);
                SETUP(kill(pid, SIGCONT));
                CHECK(run_until_called(e, &x, USEC_PER_SEC));
                CHECK_RET(x.result, -EACCES);
                /* Idle now, so it makes room. */
                CHECK_RET(async_call(f, e, &other, FILE_OP_CHECK_DIR, user, NULL), -EACCES);
                CHECK_RET(file_ops_worker_pid_async(f, nobody), 0);
                CHECK(run_until_reaped(e, f, pid));
        }
}

/* gc leaves busy workers alone; file_ops_free() withdraws silently and leaves no zombie. */
static void test_async_gc_free(sd_event *e, const Identity *nobody, const Identity *root) {
        _cleanup_free_ char *user = at("a/user");
        _cleanup_(file_ops_freep) FileOps *f = NULL;
        Done x, y, z;
        pid_t pid, pid_root;
        unsigned n;

        CHECK_RET(file_ops_new(&f, 100 * USEC_PER_MSEC, 5 * USEC_PER_SEC, 0), 0);
        CHECK_RET(file_ops_attach_event(f, e), 0);
        CHECK_RET(async_call(f, e, nobody, FILE_OP_CHECK_DIR, user, NULL), 0);
        pid = file_ops_worker_pid_async(f, nobody);
        SETUP(kill(pid, SIGSTOP));
        submit(f, nobody, FILE_OP_CHECK_DIR, user, NULL, &x);
        run_for(e, 250 * USEC_PER_MSEC);
        file_ops_gc(f);
        CHECK_RET(file_ops_worker_pid_async(f, nobody), pid);
        CHECK(!x.called);
        SETUP(kill(pid, SIGCONT));
        CHECK(run_until_called(e, &x, USEC_PER_SEC));
        CHECK_RET(x.result, 0);

        /* Idle, it goes. */
        run_for(e, 150 * USEC_PER_MSEC);
        file_ops_gc(f);
        CHECK_RET(file_ops_worker_pid_async(f, nobody), 0);
        CHECK(run_until_reaped(e, f, pid));

        /* Freed with requests pending on a stopped worker and on a running one. */
        CHECK_RET(async_call(f, e, nobody, FILE_OP_CHECK_DIR, user, NULL), 0);
        pid = file_ops_worker_pid_async(f, nobody);
        SETUP(kill(pid, SIGSTOP));
        submit(f, nobody, FILE_OP_CHECK_DIR, user, NULL, &x);
        submit(f, nobody, FILE_OP_CREATE, "/tmp/never-mind", NULL, &y);
        submit(f, root, FILE_OP_CHECK_DIR, user, NULL, &z);
        pid_root = file_ops_worker_pid_async(f, root);
        CHECK(pid_root > 0);
        n = n_callbacks;
        f = file_ops_free(f);
        run_for(e, 100 * USEC_PER_MSEC);
        CHECK_RET(n_callbacks, n);
        CHECK(!x.called && !y.called && !z.called);
        CHECK(reaped(pid) && reaped(pid_root));
        CHECK(kill(pid, 0) < 0 && errno == ESRCH);
        (void) unlink("/tmp/never-mind");
}

static void test_async(const Identity *nobody, const Identity *root) {
        _cleanup_(sd_event_unrefp) sd_event *e = NULL;
        _cleanup_close_ int pidfd = (int) syscall(SYS_pidfd_open, getpid(), 0);

        no_pidfd = pidfd < 0 && errno == ENOSYS;
        SETUP(sd_event_new(&e));
        test_async_results(e, nobody, root);
        test_async_order(e, nobody);
        test_async_isolation(e, nobody, root);
        test_async_cancel(e, nobody);
        test_async_gc_free(e, nobody, root);
}

int main(void) {
        _cleanup_(file_ops_freep) FileOps *f = NULL;
        _cleanup_free_ char *user = NULL;
        Identity nobody, root;
        _cleanup_close_ int probe = -EBADF;

        if (geteuid() != 0) {
                fprintf(stderr, "Not running as root, skipping.\n");
                return 77;
        }
        if (!getenv("BITSD_TEST_DEBUG"))
                log_set_max_level(LOG_WARNING);
        else
                log_set_max_level(LOG_DEBUG);

        main_pid = getpid();
        SETUP(mkdtemp(base) ? 0 : -1);
        base_made = true;
        SETUP(atexit(cleanup));
        user = at("user");

        /* Deliberately without O_CLOEXEC: the worker must not inherit it anyway. */
        {
                _cleanup_close_ int fd = open("/etc/passwd", O_RDONLY | O_CLOEXEC);
                SETUP(fd);
                probe = fcntl(fd, F_DUPFD, 100); /* F_DUPFD, not F_DUPFD_CLOEXEC */
                SETUP(probe);
        }

        /* Like a daemon: a strict umask, signals blocked for signalfds, some ignored. Workers must
         * not inherit any of it. */
        umask(077);
        {
                sigset_t ss;
                sigemptyset(&ss);
                sigaddset(&ss, SIGTERM);
                sigaddset(&ss, SIGCHLD);
                SETUP(sigprocmask(SIG_BLOCK, &ss, NULL));
                SETUP(signal(SIGHUP, SIG_IGN) == SIG_ERR ? -1 : 0);
        }

        test_identity(&nobody, &root);

        CHECK_RET(file_ops_new(&f, 0, 5 * USEC_PER_SEC, 0), 0);
        test_worker_process(f, &nobody, probe);
        test_permissions(f, &nobody, &root);
        f = file_ops_free(f);

        test_lifecycle(&nobody, &root, user);
        test_parent_death(&nobody);
        test_async(&nobody, &root);

        printf("test-file-ops: all %u checks passed\n", n_checks);
        return EXIT_SUCCESS;
}
