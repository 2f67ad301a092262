/* SPDX-License-Identifier: LGPL-2.1-or-later */
#include <assert.h>
#include <errno.h>
#include <fcntl.h>
#include <pthread.h>
#include <signal.h>
#include <stdatomic.h>
#include <stdlib.h>
#include <string.h>
#include <sys/eventfd.h>
#include <sys/stat.h>
#include <unistd.h>

#include "file-sink.h"

/* Offsets, lengths and memory of a direct write are multiples of this (the largest logical block
 * size in use). Buffers end on FILE_SINK_BUFFER_SIZE boundaries of the file, so once the stream
 * is aligned it stays aligned. */
#define DIRECT_ALIGN 4096U
/* Every buffer, a checkpoint's sync, the final ones, and a few truncations fit many times over. */
#define OPS_MAX 16U
#define WRITER_STACK_SIZE (512U * 1024U)

typedef enum SinkOpKind {
        SINK_OP_PREPARE,  /* offset: the recorded checkpoint */
        SINK_OP_WRITE,
        SINK_OP_SYNC,     /* offset: durable up to here when done */
        SINK_OP_TRUNCATE, /* offset: the new length */
        SINK_OP_COMPLETE, /* offset: the stream's length; sync, then date the file */
        SINK_OP_CLOSE,
        SINK_OP_SOURCE_STAT,
        SINK_OP_COPY,     /* offset: where, in the source and the file; len: at most this much */
} SinkOpKind;

typedef struct SinkOp {
        SinkOpKind kind;
        unsigned epoch;   /* writes and syncs of an older epoch (before a rewind) are dropped */
        unsigned buf;     /* SINK_OP_WRITE */
        uint64_t offset;
        size_t len;
        time_t mtime;
} SinkOp;

struct FileSinkOrphan {
        atomic_uint refs;
        atomic_bool done;
};

struct FileSink {
        sd_event *event;
        sd_event_source *wake_source;
        int wake_fd;
        int fd;
        int src_fd;                   /* a local source to copy from, or -EBADF */
        FileSinkCallbacks cb;
        void *userdata;

        /* The loop's side. */
        char *buf[FILE_SINK_BUFFERS]; /* allocated when first needed */
        int filling;                  /* the buffer being filled, -1: none */
        uint64_t fill_start;          /* file offset of its first byte */
        size_t fill_len;
        uint64_t offset;              /* bytes appended */
        uint64_t submitted;           /* bytes handed to the writer */
        uint64_t sync_requested;      /* the offset of the last sync asked for */
        uint64_t durable;             /* reported durable */
        bool prepared;
        bool completing;
        bool copying;
        bool sync_pending;
        bool blocked;                 /* append answered -EAGAIN: call writable() */
        int error;                    /* failure seen */
        bool error_reported;
        bool deliver_prepared, deliver_completed, deliver_source, deliver_copied;
        int64_t prepare_result, complete_result, source_result, copy_result;
        bool copy_write_failed;
        struct stat source_stat;

        /* The writer's side: only the writer touches these while it runs. */
        char *copy_buf;               /* for copies copy_file_range() cannot do */
        bool copy_wrote_badly;        /* the last copy failed writing, not reading */
        struct stat src_st;
        bool direct_ok;               /* O_DIRECT not refused by the file system */
        bool fd_direct;               /* O_DIRECT currently set on the fd */
        bool direct_used;

        /* Shared, under lock. */
        pthread_mutex_t lock;
        pthread_cond_t work, idle;
        SinkOp ops[OPS_MAX];
        unsigned op_head, op_count;
        unsigned epoch;
        bool buf_busy[FILE_SINK_BUFFERS]; /* queued or being written */
        bool executing;               /* the op at op_head is being carried out */
        usec_t op_started;            /* CLOCK_MONOTONIC, while an op touches the file */
        bool quit;
        bool held;                    /* tests: the writer waits inside its next op */
        bool thread_running;
        pthread_t thread;
        FileSinkOrphan *orphan;       /* set: the writer owns the sink and frees it */
        uint64_t w_durable;
        unsigned w_durable_epoch;
        int w_error;
        bool w_direct_used;
        bool w_prepared, w_completed, w_source, w_copied;
        int64_t w_prepare_result, w_complete_result, w_source_result, w_copy_result;
        bool w_copy_write_failed;
        struct stat w_source_stat;
};

static int set_direct(int fd, bool on) {
        int flags = fcntl(fd, F_GETFL);
        if (flags < 0)
                return -errno;
        if (!!(flags & O_DIRECT) == on)
                return 0;
        if (fcntl(fd, F_SETFL, on ? flags | O_DIRECT : flags & ~O_DIRECT) < 0)
                return -errno;
        return 0;
}

static bool is_aligned(uint64_t x) {
        return x % DIRECT_ALIGN == 0;
}

/* ---- the writer ---- */

/* Writes p[0..n) at off: directly when everything is aligned and the file system takes it,
 * through the page cache otherwise. */
static int sink_write(FileSink *s, const char *p, size_t n, uint64_t off) {
        while (n > 0) {
                bool want = s->direct_ok && is_aligned(off) && is_aligned(n) && is_aligned((uintptr_t) p);
                if (want != s->fd_direct) {
                        int r = set_direct(s->fd, want);
                        if (r < 0 && want) {
                                s->direct_ok = false; /* e.g. EINVAL: not supported here */
                                continue;
                        }
                        if (r < 0)
                                return r;
                        s->fd_direct = want;
                }
                ssize_t k = pwrite(s->fd, p, n, (off_t) off);
                if (k < 0) {
                        if (errno == EINTR)
                                continue;
                        if (errno == EINVAL && s->fd_direct) {
                                s->direct_ok = false; /* alignment or direct I/O refused after all */
                                continue;
                        }
                        return -errno;
                }
                if (k == 0)
                        return -EIO;
                if (s->fd_direct)
                        s->direct_used = true;
                p += k;
                n -= (size_t) k;
                off += (uint64_t) k;
        }
        return 0;
}

/* The file's bytes past the checkpoint were never proven durable: cut them off. A file shorter
 * than the checkpoint lost data it was said to have: start it again. */
static int64_t sink_prepare(FileSink *s, uint64_t checkpoint) {
        struct stat st;
        if (fstat(s->fd, &st) < 0)
                return -errno;
        uint64_t keep = (uint64_t) st.st_size >= checkpoint ? checkpoint : 0;
        if ((uint64_t) st.st_size != keep && ftruncate(s->fd, (off_t) keep) < 0)
                return -errno;
        return (int64_t) keep;
}

static int sink_sync(FileSink *s) {
        return fdatasync(s->fd) < 0 ? -errno : 0;
}

#define COPY_FALLBACK_SIZE (256U * 1024U)

/* Copies up to len bytes of the source at off to the same offset of the file. Returns the bytes
 * copied (0: the source ends there) or -errno, with copy_write_failed telling which side failed. */
static int64_t sink_copy(FileSink *s, uint64_t off, size_t len) {
        loff_t in = (loff_t) off, out = (loff_t) off;
        ssize_t n;

        s->copy_wrote_badly = false;
        if (s->fd_direct) {
                (void) set_direct(s->fd, false);
                s->fd_direct = false;
        }
        n = copy_file_range(s->src_fd, &in, s->fd, &out, len, 0);
        if (n >= 0)
                return n;
        if (errno == ENOSPC || errno == EDQUOT || errno == EFBIG) {
                s->copy_wrote_badly = true; /* the file's side, surely */
                return -errno;
        }
        if (errno != EXDEV && errno != EINVAL && errno != ENOSYS && errno != EOPNOTSUPP)
                return -errno;

        /* Different file systems, or no support: a plain read and write. */
        if (!s->copy_buf) {
                s->copy_buf = malloc(COPY_FALLBACK_SIZE);
                if (!s->copy_buf)
                        return -ENOMEM;
        }
        n = pread(s->src_fd, s->copy_buf, MIN(len, (size_t) COPY_FALLBACK_SIZE), (off_t) off);
        if (n < 0)
                return -errno;
        if (n > 0) {
                int r = sink_write(s, s->copy_buf, (size_t) n, off);
                if (r < 0) {
                        s->copy_wrote_badly = true;
                        return r;
                }
        }
        return n;
}

/* The file (back to normal I/O for whoever shares its description) and the source. */
static void sink_close_files(FileSink *s) {
        if (s->fd_direct)
                (void) set_direct(s->fd, false);
        s->fd_direct = false;
        s->fd = safe_close(s->fd);
        s->src_fd = safe_close(s->src_fd);
}

/* Carries out one op; called without the lock. Returns its result (negative: errno). */
static int64_t sink_execute(FileSink *s, const SinkOp *op) {
        switch (op->kind) {
        case SINK_OP_PREPARE:
                return sink_prepare(s, op->offset);
        case SINK_OP_WRITE:
                return sink_write(s, s->buf[op->buf], op->len, op->offset);
        case SINK_OP_SYNC:
                return sink_sync(s);
        case SINK_OP_TRUNCATE:
                return ftruncate(s->fd, (off_t) op->offset) < 0 ? -errno : 0;
        case SINK_OP_COMPLETE: {
                int r = sink_sync(s);
                if (r < 0)
                        return r;
                if (op->mtime > 0) {
                        struct timespec ts[2] = { { .tv_sec = op->mtime }, { .tv_sec = op->mtime } };
                        (void) futimens(s->fd, ts);
                }
                return (int64_t) op->offset;
        }
        case SINK_OP_CLOSE:
                sink_close_files(s);
                return 0;
        case SINK_OP_SOURCE_STAT:
                return fstat(s->src_fd, &s->src_st) < 0 ? -errno : 0;
        case SINK_OP_COPY:
                return sink_copy(s, op->offset, op->len);
        }
        return -EINVAL;
}

/* Records what an op did; under the lock. */
static void sink_record(FileSink *s, const SinkOp *op, bool skipped, int64_t r) {
        if (op->kind == SINK_OP_WRITE)
                s->buf_busy[op->buf] = false;
        if (op->kind == SINK_OP_PREPARE) {
                s->w_prepared = true;
                s->w_prepare_result = r;
                if (r >= 0) {
                        s->w_durable = (uint64_t) r;
                        s->w_durable_epoch = op->epoch;
                }
                return;
        }
        if (op->kind == SINK_OP_SOURCE_STAT) {
                s->w_source = true;
                s->w_source_result = r;
                s->w_source_stat = s->src_st;
                return;
        }
        if (op->kind == SINK_OP_COPY) {
                /* Reported to the loop, which decides; a failed write also stops the sink. */
                s->w_copied = true;
                s->w_copy_result = skipped ? -s->w_error : r;
                s->w_copy_write_failed = skipped || s->copy_wrote_badly;
                if (!skipped && r < 0 && s->copy_wrote_badly && s->w_error == 0)
                        s->w_error = (int) -r;
                return;
        }
        if (op->kind == SINK_OP_COMPLETE) {
                s->w_completed = true;
                s->w_complete_result = s->w_error != 0 ? -s->w_error : r;
                if (s->w_error == 0 && r < 0)
                        s->w_error = (int) -r;
                if (s->w_error == 0) {
                        s->w_durable = (uint64_t) r;
                        s->w_durable_epoch = op->epoch;
                }
                return;
        }
        if (skipped)
                return;
        if (r < 0 && s->w_error == 0)
                s->w_error = (int) -r;
        if (op->kind == SINK_OP_SYNC && r >= 0) {
                s->w_durable = op->offset;
                s->w_durable_epoch = op->epoch;
        }
}

static void sink_release(FileSink *s) {
        sink_close_files(s);
        s->copy_buf = mfree(s->copy_buf);
        if (s->wake_fd >= 0)
                close(s->wake_fd);
        s->wake_fd = -EBADF;
        for (unsigned i = 0; i < FILE_SINK_BUFFERS; i++)
                s->buf[i] = mfree(s->buf[i]);
        pthread_cond_destroy(&s->idle);
        pthread_cond_destroy(&s->work);
        pthread_mutex_destroy(&s->lock);
}

static void *writer_main(void *userdata) {
        FileSink *s = userdata;
        FileSinkOrphan *orphan;

        pthread_mutex_lock(&s->lock);
        for (;;) {
                while (s->op_count == 0 && !s->quit)
                        pthread_cond_wait(&s->work, &s->lock);
                if (s->op_count == 0)
                        break;
                SinkOp op = s->ops[s->op_head];
                /* Stale writes and syncs go; after a failure nothing more is written. */
                bool skipped = ((op.kind == SINK_OP_WRITE || op.kind == SINK_OP_SYNC) && op.epoch != s->epoch) ||
                               (s->w_error != 0 && op.kind != SINK_OP_PREPARE && op.kind != SINK_OP_CLOSE &&
                                op.kind != SINK_OP_SOURCE_STAT);
                s->executing = true;
                if (!skipped)
                        s->op_started = now(CLOCK_MONOTONIC);
                while (s->held && !s->quit)
                        pthread_cond_wait(&s->work, &s->lock);
                pthread_mutex_unlock(&s->lock);

                int64_t r = skipped ? 0 : sink_execute(s, &op);

                pthread_mutex_lock(&s->lock);
                s->executing = false;
                s->op_started = 0;
                s->w_direct_used = s->direct_used;
                s->op_head = (s->op_head + 1) % OPS_MAX;
                s->op_count--;
                sink_record(s, &op, skipped, r);
                if (s->op_count == 0)
                        pthread_cond_broadcast(&s->idle);
                if (!s->orphan)
                        (void) eventfd_write(s->wake_fd, 1);
        }
        orphan = s->orphan;
        pthread_mutex_unlock(&s->lock);

        if (orphan) {
                /* Nobody waits for us: clean up, and say that the file is free again. */
                sink_release(s);
                free(s);
                atomic_store(&orphan->done, true);
                file_sink_orphan_unref(orphan);
        }
        return NULL;
}

static int sink_start_writer(FileSink *s) {
        sigset_t all, saved;
        pthread_attr_t attr;
        int r;

        if (s->thread_running)
                return 0;
        /* The loop takes its signals through signalfd: the writer must never receive one. */
        sigfillset(&all);
        r = pthread_attr_init(&attr);
        if (r != 0)
                return -r;
        (void) pthread_attr_setstacksize(&attr, WRITER_STACK_SIZE);
        pthread_sigmask(SIG_SETMASK, &all, &saved);
        r = pthread_create(&s->thread, &attr, writer_main, s);
        pthread_sigmask(SIG_SETMASK, &saved, NULL);
        pthread_attr_destroy(&attr);
        if (r != 0)
                return -r;
        s->thread_running = true;
        return 0;
}

static int sink_queue(FileSink *s, SinkOp op) {
        int r = sink_start_writer(s);
        if (r < 0)
                return r;
        pthread_mutex_lock(&s->lock);
        if (s->op_count >= OPS_MAX) {
                pthread_mutex_unlock(&s->lock);
                return -EBUSY; /* the file system stopped answering long ago */
        }
        op.epoch = s->epoch;
        s->ops[(s->op_head + s->op_count) % OPS_MAX] = op;
        s->op_count++;
        if (op.kind == SINK_OP_WRITE)
                s->buf_busy[op.buf] = true;
        pthread_cond_signal(&s->work);
        pthread_mutex_unlock(&s->lock);
        return 0;
}

/* ---- the loop ---- */

/* Room in a buffer that starts at off: up to the next buffer-size boundary of the file. */
static size_t buffer_room(uint64_t off) {
        return FILE_SINK_BUFFER_SIZE - (size_t) (off % FILE_SINK_BUFFER_SIZE);
}

static int sink_submit_filling(FileSink *s) {
        if (s->filling < 0 || s->fill_len == 0)
                return 0;
        int r = sink_queue(s, (SinkOp) {
                .kind = SINK_OP_WRITE, .buf = (unsigned) s->filling, .offset = s->fill_start, .len = s->fill_len,
        });
        if (r < 0)
                return r;
        s->submitted = s->fill_start + s->fill_len;
        s->filling = -1;
        s->fill_len = 0;
        return 0;
}

static int on_wake(sd_event_source *source, int fd, uint32_t revents, void *userdata) {
        FileSink *s = userdata;
        eventfd_t v;
        bool any_free = false, durable_now;
        uint64_t durable;

        (void) eventfd_read(s->wake_fd, &v);
        pthread_mutex_lock(&s->lock);
        for (unsigned i = 0; i < FILE_SINK_BUFFERS; i++)
                if (!s->buf_busy[i] && (int) i != s->filling)
                        any_free = true;
        durable = s->w_durable;
        durable_now = s->w_durable_epoch == s->epoch;
        if (s->w_error != 0 && s->error == 0)
                s->error = s->w_error;
        if (s->w_prepared) {
                s->w_prepared = false;
                s->deliver_prepared = true;
                s->prepare_result = s->w_prepare_result;
        }
        if (s->w_completed) {
                s->w_completed = false;
                s->deliver_completed = true;
                s->complete_result = s->w_complete_result;
        }
        if (s->w_source) {
                s->w_source = false;
                s->deliver_source = true;
                s->source_result = s->w_source_result;
                s->source_stat = s->w_source_stat;
        }
        if (s->w_copied) {
                s->w_copied = false;
                s->deliver_copied = true;
                s->copy_result = s->w_copy_result;
                s->copy_write_failed = s->w_copy_write_failed;
        }
        pthread_mutex_unlock(&s->lock);

        if (s->blocked && any_free && s->error == 0) {
                s->blocked = false;
                s->cb.writable(s, s->userdata); /* does not free */
        }

        /* One callback that may free the sink per wake-up: if more are due, come back for them. */
        bool fail = s->error != 0 && !s->error_reported && !s->completing && !s->deliver_copied;
        bool advance = durable_now && durable > s->durable && s->error == 0 && !s->completing;
        unsigned due = s->deliver_prepared + s->deliver_source + s->deliver_copied + fail + advance + s->deliver_completed;
        if (due > 1)
                (void) eventfd_write(s->wake_fd, 1);

        if (s->deliver_prepared) {
                s->deliver_prepared = false;
                if (s->prepare_result >= 0) {
                        s->prepared = true;
                        s->offset = s->submitted = s->sync_requested = s->durable = (uint64_t) s->prepare_result;
                }
                s->cb.prepared(s, s->prepare_result, s->userdata);
        } else if (s->deliver_source) {
                s->deliver_source = false;
                s->cb.source_ready(s, s->source_result < 0 ? (int) -s->source_result : 0, &s->source_stat, s->userdata);
        } else if (s->deliver_copied) {
                s->deliver_copied = false;
                s->copying = false;
                if (s->copy_result > 0)
                        s->offset = s->submitted = s->offset + (uint64_t) s->copy_result;
                if (s->copy_result < 0 && s->copy_write_failed)
                        s->error_reported = true; /* told here, not by failed() */
                s->cb.copied(s, s->copy_result, s->copy_write_failed, s->userdata);
        } else if (fail) {
                s->error_reported = true;
                s->sync_pending = false;
                s->cb.failed(s, s->error, s->userdata);
        } else if (advance) {
                s->durable = durable;
                if (durable >= s->sync_requested)
                        s->sync_pending = false;
                s->cb.durable(s, durable, s->userdata);
        } else if (s->deliver_completed) {
                s->deliver_completed = false;
                if (s->complete_result >= 0)
                        s->durable = (uint64_t) s->complete_result;
                s->cb.completed(s, s->complete_result, s->userdata);
        }
        return 0;
}

int file_sink_new(sd_event *e, int fd, const FileSinkCallbacks *cb, void *userdata, FileSink **ret) {
        FileSink *s;
        int r;

        s = calloc(1, sizeof(FileSink));
        if (!s)
                return -ENOMEM;
        *s = (FileSink) {
                .event = sd_event_ref(e), .wake_fd = -EBADF, .fd = fd, .src_fd = -EBADF, .cb = *cb, .userdata = userdata,
                .filling = -1, .direct_ok = true,
        };
        pthread_mutex_init(&s->lock, NULL);
        pthread_cond_init(&s->work, NULL);
        {
                pthread_condattr_t attr;
                pthread_condattr_init(&attr);
                pthread_condattr_setclock(&attr, CLOCK_MONOTONIC);
                pthread_cond_init(&s->idle, &attr);
                pthread_condattr_destroy(&attr);
        }

        s->wake_fd = eventfd(0, EFD_CLOEXEC | EFD_NONBLOCK);
        if (s->wake_fd < 0)
                r = -errno;
        else
                r = sd_event_add_io(e, &s->wake_source, s->wake_fd, EPOLLIN, on_wake, s);
        if (r < 0) {
                s->fd = -EBADF; /* not taken over after all */
                (void) file_sink_close(s, 0, NULL);
                return r;
        }
        (void) sd_event_source_set_description(s->wake_source, "file-sink");
        *ret = s;
        return 0;
}

int file_sink_prepare(FileSink *s, uint64_t checkpoint) {
        return sink_queue(s, (SinkOp) { .kind = SINK_OP_PREPARE, .offset = checkpoint });
}

int file_sink_append(FileSink *s, const void *data, size_t n) {
        bool busy[FILE_SINK_BUFFERS];
        size_t room = 0;
        bool any_busy = false;
        const char *p = data;
        int r;

        if (s->error != 0)
                return -s->error;
        if (!s->prepared || s->completing)
                return -EINVAL;
        if (n == 0)
                return 0;

        pthread_mutex_lock(&s->lock);
        memcpy(busy, s->buf_busy, sizeof(busy));
        pthread_mutex_unlock(&s->lock);

        /* All or nothing: count the room in the buffer being filled and in the free ones. */
        uint64_t at = s->offset;
        if (s->filling >= 0) {
                room = buffer_room(s->fill_start) - s->fill_len;
                at = s->fill_start + buffer_room(s->fill_start);
                busy[s->filling] = true; /* taken, as far as the loop below goes */
        }
        for (unsigned i = 0; i < FILE_SINK_BUFFERS; i++) {
                if ((int) i == s->filling)
                        continue;
                if (busy[i]) {
                        any_busy = true;
                        continue;
                }
                room += buffer_room(at);
                at += buffer_room(at);
        }
        if (room < n) {
                if (!any_busy)
                        return -E2BIG; /* more than all buffers hold: never offered by curl */
                s->blocked = true;
                return -EAGAIN;
        }

        while (n > 0) {
                if (s->filling < 0) {
                        unsigned i;
                        for (i = 0; i < FILE_SINK_BUFFERS; i++)
                                if (!busy[i])
                                        break;
                        assert(i < FILE_SINK_BUFFERS);
                        if (!s->buf[i] && posix_memalign((void **) &s->buf[i], DIRECT_ALIGN, FILE_SINK_BUFFER_SIZE) != 0) {
                                s->buf[i] = NULL;
                                return -ENOMEM;
                        }
                        busy[i] = true;
                        s->filling = (int) i;
                        s->fill_start = s->offset;
                        s->fill_len = 0;
                }
                size_t cap = buffer_room(s->fill_start);
                size_t k = MIN(cap - s->fill_len, n);
                memcpy(s->buf[s->filling] + s->fill_len, p, k);
                s->fill_len += k;
                s->offset += k;
                p += k;
                n -= k;
                if (s->fill_len == cap) {
                        r = sink_submit_filling(s);
                        if (r < 0)
                                return r;
                }
        }
        return 0;
}

int file_sink_checkpoint(FileSink *s, bool partial) {
        int r;

        if (s->error != 0)
                return -s->error;
        if (!s->prepared || s->completing || s->sync_pending)
                return 0;
        if (partial) {
                r = sink_submit_filling(s);
                if (r < 0)
                        return r;
        }
        if (s->submitted == s->sync_requested)
                return 0;
        r = sink_queue(s, (SinkOp) { .kind = SINK_OP_SYNC, .offset = s->submitted });
        if (r < 0)
                return r;
        s->sync_requested = s->submitted;
        s->sync_pending = true;
        return 0;
}

bool file_sink_checkpoint_pending(const FileSink *s) {
        return s->sync_pending;
}

int file_sink_complete(FileSink *s, time_t mtime) {
        int r;

        if (s->error != 0)
                return -s->error;
        if (!s->prepared || s->completing)
                return -EINVAL;
        r = sink_submit_filling(s);
        if (r >= 0)
                r = sink_queue(s, (SinkOp) { .kind = SINK_OP_COMPLETE, .offset = s->offset, .mtime = mtime });
        if (r < 0)
                return r;
        s->submitted = s->sync_requested = s->offset;
        s->completing = true;
        s->sync_pending = false;
        return 0;
}

int file_sink_rewind(FileSink *s, uint64_t offset) {
        pthread_mutex_lock(&s->lock);
        s->epoch++;
        pthread_mutex_unlock(&s->lock);
        s->filling = -1;
        s->fill_len = 0;
        s->offset = s->submitted = offset;
        s->durable = s->sync_requested = MIN(s->durable, offset);
        s->sync_pending = false;
        s->blocked = false;
        return sink_queue(s, (SinkOp) { .kind = SINK_OP_TRUNCATE, .offset = offset });
}

int file_sink_set_source(FileSink *s, int src_fd) {
        if (s->src_fd >= 0 || !s->prepared)
                return -EINVAL;
        pthread_mutex_lock(&s->lock); /* the writer reads it */
        s->src_fd = src_fd;
        pthread_mutex_unlock(&s->lock);
        return sink_queue(s, (SinkOp) { .kind = SINK_OP_SOURCE_STAT });
}

int file_sink_copy(FileSink *s, size_t len) {
        int r;

        if (s->error != 0)
                return -s->error;
        if (!s->prepared || s->completing || s->copying || s->src_fd < 0 || s->filling >= 0)
                return -EINVAL;
        r = sink_queue(s, (SinkOp) { .kind = SINK_OP_COPY, .offset = s->offset, .len = len });
        if (r < 0)
                return r;
        s->copying = true;
        return 0;
}

uint64_t file_sink_offset(const FileSink *s) {
        return s->offset;
}

uint64_t file_sink_durable(const FileSink *s) {
        return s->durable;
}

usec_t file_sink_stuck_usec(const FileSink *s) {
        FileSink *m = (FileSink *) s;
        pthread_mutex_lock(&m->lock);
        usec_t started = m->op_started;
        pthread_mutex_unlock(&m->lock);
        return started == 0 ? 0 : usec_sub(now(CLOCK_MONOTONIC), started);
}

static FileSinkOrphan *orphan_new(void) {
        FileSinkOrphan *o = calloc(1, sizeof(FileSinkOrphan));
        if (!o)
                return NULL;
        atomic_init(&o->refs, 2); /* the caller's and the writer's */
        atomic_init(&o->done, false);
        return o;
}

bool file_sink_orphan_done(const FileSinkOrphan *o) {
        return atomic_load(&((FileSinkOrphan *) o)->done);
}

FileSinkOrphan *file_sink_orphan_unref(FileSinkOrphan *o) {
        if (o && atomic_fetch_sub(&o->refs, 1) == 1)
                free(o);
        return NULL;
}

int64_t file_sink_close(FileSink *s, usec_t timeout, FileSinkOrphan **ret_orphan) {
        int64_t result;

        if (ret_orphan)
                *ret_orphan = NULL;
        if (!s)
                return 0;

        /* Whatever was appended goes to disk; then the writer closes the file. */
        if (s->error == 0 && s->prepared && !s->completing && sink_submit_filling(s) >= 0 &&
            s->submitted != s->sync_requested &&
            sink_queue(s, (SinkOp) { .kind = SINK_OP_SYNC, .offset = s->submitted }) >= 0)
                s->sync_requested = s->submitted;
        if (s->fd >= 0 && sink_queue(s, (SinkOp) { .kind = SINK_OP_CLOSE }) < 0 && s->thread_running) {
                /* The queue is full: the writer has been stuck for long. */
                timeout = 0;
        }

        if (s->thread_running) {
                usec_t n = now(CLOCK_MONOTONIC), deadline = usec_add(n, timeout);
                struct timespec ts;

                pthread_mutex_lock(&s->lock);
                if (s->op_started != 0 && usec_sub(n, s->op_started) > timeout)
                        deadline = n; /* stuck already: do not wait for it */
                ts = (struct timespec) {
                        .tv_sec = (time_t) (deadline / USEC_PER_SEC),
                        .tv_nsec = (long) (deadline % USEC_PER_SEC * NSEC_PER_USEC),
                };
                while (s->op_count > 0 && now(CLOCK_MONOTONIC) < deadline)
                        if (pthread_cond_timedwait(&s->idle, &s->lock, &ts) == ETIMEDOUT)
                                break;
                if (s->op_count > 0) {
                        /* Leave the sink to its writer: it drops what waits and goes when the
                         * operation under way returns. The loop's parts go now. */
                        FileSinkOrphan *o = orphan_new();
                        if (o) {
                                pthread_t thread = s->thread;
                                /* Once unlocked, s belongs to the writer: drop the loop's parts first. */
                                s->wake_source = sd_event_source_disable_unref(s->wake_source);
                                s->event = sd_event_unref(s->event);
                                s->orphan = o;
                                s->op_count = s->executing ? 1 : 0;
                                s->quit = true;
                                pthread_cond_signal(&s->work);
                                pthread_mutex_unlock(&s->lock);
                                pthread_detach(thread);
                                if (ret_orphan)
                                        *ret_orphan = o;
                                else
                                        file_sink_orphan_unref(o);
                                return -ETIMEDOUT;
                        }
                        /* No memory even for that: wait after all. */
                        while (s->op_count > 0)
                                pthread_cond_wait(&s->idle, &s->lock);
                }
                s->quit = true;
                pthread_cond_signal(&s->work);
                int error = s->error ?: s->w_error;
                bool current = s->w_durable_epoch == s->epoch;
                uint64_t durable = s->w_durable;
                pthread_mutex_unlock(&s->lock);
                pthread_join(s->thread, NULL);
                result = error != 0 ? -error : current ? (int64_t) durable : (int64_t) s->durable;
        } else
                result = s->error != 0 ? -s->error : (int64_t) s->durable;
        if (!s->prepared && result >= 0)
                result = -ENODATA; /* never knew where the stream stood */

        sd_event_source_disable_unref(s->wake_source);
        sd_event_unref(s->event);
        sink_release(s);
        free(s);
        return result;
}

bool file_sink_used_direct_io(const FileSink *s) {
        FileSink *m = (FileSink *) s;
        pthread_mutex_lock(&m->lock);
        bool used = m->w_direct_used;
        pthread_mutex_unlock(&m->lock);
        return used;
}

bool file_sink_thread_running(const FileSink *s) {
        return s->thread_running;
}

void file_sink_hold_writer(FileSink *s, bool hold) {
        pthread_mutex_lock(&s->lock);
        s->held = hold;
        pthread_cond_broadcast(&s->work);
        pthread_mutex_unlock(&s->lock);
}
