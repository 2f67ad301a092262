/* SPDX-License-Identifier: LGPL-2.1-or-later */
#pragma once

/* Local-file work done with a user's credentials.
 *
 * bitsd runs as root, but it must never touch a user-chosen path with its own privileges. Every
 * path operation (check a directory, create/open the temporary file, open a file:// source,
 * rename on Complete, unlink on Cancel) is carried out by a worker process that was forked from
 * the daemon and switched to the identity (UID, GID, supplementary groups) before it touched
 * anything; opened files come back to the daemon as file descriptors over SCM_RIGHTS. The kernel
 * therefore enforces exactly that user's permissions, whatever symlinks, hardlinks or renames the
 * user plays with.
 *
 * Workers are kept per identity and reused; an idle worker exits on its own. Requests are
 * synchronous round trips on a socketpair (microseconds), bounded by a timeout so a hung file
 * system cannot stall the daemon forever; the daemon itself uses the asynchronous form below,
 * which never waits. This module does not include sd-bus. */

#include <stdbool.h>
#include <stdint.h>
#include <sys/types.h>

#include <systemd/sd-event.h>

#include "macro.h"

#define IDENTITY_GROUPS_MAX 256

typedef struct Identity {
        uid_t uid;
        gid_t gid;
        size_t n_groups;
        gid_t groups[IDENTITY_GROUPS_MAX];
} Identity;

/* The identity of a user as NSS knows it: primary GID and supplementary groups (getgrouplist).
 * -ESRCH if the UID has no passwd entry: then the identity is uid, gid = uid, no groups. */
int identity_from_uid(uid_t uid, Identity *ret);
bool identity_equal(const Identity *a, const Identity *b);

typedef struct FileOps FileOps;

/* idle_timeout_usec: a worker that served no request for this long exits (0 = 30 s).
 * request_timeout_usec: a request without an answer for this long fails with -ETIMEDOUT and
 * the worker is killed (0 = 30 s). At most workers_max workers live at once (0 = 64); the
 * least recently used one is stopped to make room. */
int file_ops_new(FileOps **ret, uint64_t idle_timeout_usec, uint64_t request_timeout_usec, unsigned workers_max);
FileOps *file_ops_free(FileOps *f);
DEFINE_TRIVIAL_CLEANUP_FUNC(FileOps *, file_ops_free);

/* Called from time to time (e.g. by a timer of the daemon) to stop idle workers and reap exited ones. */
void file_ops_gc(FileOps *f);

/* Workers are children of the daemon, reaped here by PID: the daemon must not reap children it did
 * not start itself (no waitid(P_ALL), no SIGCHLD set to SIG_IGN).
 * For tests and debugging: the number of live workers, the PID of the worker of an identity (0 if none). */
unsigned file_ops_worker_count(const FileOps *f);
pid_t file_ops_worker_pid(const FileOps *f, const Identity *id);

/* All functions return 0 (or a fd ≥ 0 where noted) on success and -errno as seen by the worker
 * on failure (-EACCES, -ENOENT, -ENOTDIR, -EEXIST, -ELOOP, ...). Paths must be absolute. */

/* The directory exists, is a directory (after following symlinks, as the user would) and the
 * user may create files in it (write + search permission). */
int file_ops_check_dir(FileOps *f, const Identity *id, const char *dir);

/* The final name may be written by the user: either nothing exists there (-> 0), or a regular
 * file exists that the user can open for writing (-> 0); a directory -> -EISDIR; anything else
 * the user cannot write -> -EACCES (or what the open said). Nothing is created or changed.
 * The final name itself is never followed: a symlink there -> -ELOOP, a FIFO, socket or device
 * -> -EINVAL; nothing exists but neither does the directory -> -ENOENT/-ENOTDIR. */
int file_ops_check_target(FileOps *f, const Identity *id, const char *path);

/* Creates the file exclusively (O_CREAT|O_EXCL|O_NOFOLLOW, mode 0666 & ~022) and returns an
 * O_RDWR|O_CLOEXEC fd to it. */
int file_ops_create(FileOps *f, const Identity *id, const char *path);

/* Opens an existing regular file for writing (O_RDWR|O_NOFOLLOW, no O_CREAT, no O_TRUNC).
 * Refuses (-EMLINK) a file with more than one hard link, (-EPERM) a file not owned by the user,
 * (-EINVAL) anything not a regular file. Returns the fd. */
int file_ops_open_write(FileOps *f, const Identity *id, const char *path);

/* Opens a regular file for reading (follows symlinks, as the user's own open would). -EINVAL for
 * a non-regular file (FIFOs, devices, directories). Returns the fd. */
int file_ops_open_read(FileOps *f, const Identity *id, const char *path);

/* rename(2) as the user. Fails with -EEXIST... never: it replaces the target, like rename. */
int file_ops_rename(FileOps *f, const Identity *id, const char *from, const char *to);

/* unlink(2) as the user; -ENOENT is returned as is (callers decide whether that is fine). */
int file_ops_unlink(FileOps *f, const Identity *id, const char *path);

/* ---- Asynchronous requests ----
 *
 * The daemon serves every user from one event loop, so it must never wait for a worker: a
 * user can stop their own worker (SIGSTOP) or point it at a hung FUSE mount of their own. The
 * asynchronous form sends the request and returns at once; the answer arrives through an
 * sd-event I/O source on the worker's socket and is handed to the callback. A stuck worker thus
 * delays only the requests of its own identity, never anybody else's nor the bus. */

typedef enum FileOp {
        FILE_OP_CHECK_DIR,
        FILE_OP_CHECK_TARGET,
        FILE_OP_CREATE,
        FILE_OP_OPEN_WRITE,
        FILE_OP_OPEN_READ,
        FILE_OP_RENAME,       /* path -> path2 */
        FILE_OP_UNLINK,
        _FILE_OP_MAX,
} FileOp;

typedef struct FileOpsRequest FileOpsRequest;

/* result: what the synchronous function of the same op would have returned — 0, a fd ≥ 0 (the
 * callback owns it and must close it) or -errno; -ETIMEDOUT when the worker did not answer within
 * the request timeout (the worker is then killed, and every other request queued on it fails
 * with -ETIMEDOUT too); -ECONNRESET when the worker died. The request is freed by file-ops right
 * after the callback returns; the callback may submit new requests and cancel other ones. */
typedef void (*FileOpsCallback)(FileOpsRequest *req, int result, void *userdata);

/* Needed before file_ops_submit(). The loop must outlive the FileOps (or file_ops_free() first). */
int file_ops_attach_event(FileOps *f, sd_event *event);

/* Queues op for the identity's worker (spawned if needed) and returns 0 at once; the callback
 * is never called from within file_ops_submit(). Requests of one identity are answered in the
 * order submitted; different identities run in parallel. At most FILE_OPS_PENDING_MAX requests
 * may be pending per identity (-EAGAIN beyond), so no user can make the daemon queue without
 * bound. path2 is used by FILE_OP_RENAME only. *ret (optional) is valid until the callback ran
 * or the request was cancelled. */
#define FILE_OPS_PENDING_MAX 1024U
int file_ops_submit(FileOps *f, const Identity *id, FileOp op, const char *path, const char *path2,
                    FileOpsCallback cb, void *userdata, FileOpsRequest **ret);

/* Withdraws a pending request: its callback is never called; a fd that arrives for it later is
 * closed. NULL is fine. Returns NULL. */
FileOpsRequest *file_ops_request_cancel(FileOpsRequest *r);

/* For tests and debugging: the PID of the worker that serves the asynchronous requests of an
 * identity (0 if none). Synchronous calls never share a worker with asynchronous requests (they
 * would have to wait behind them); file_ops_worker_pid() reports the synchronous one. */
pid_t file_ops_worker_pid_async(const FileOps *f, const Identity *id);
