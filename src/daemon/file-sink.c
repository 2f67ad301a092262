/* SPDX-License-Identifier: LGPL-2.1-or-later */
#include <assert.h>
#include <errno.h>
#include <fcntl.h>
#include <pthread.h>
#include <signal.h>
#include <stdlib.h>
#include <string.h>
#include <sys/eventfd.h>
#include <unistd.h>

#include "file-sink.h"

/* Offsets, lengths and memory of a direct write are multiples of this (the largest logical block
 * size in use). Buffers end on FILE_SINK_BUFFER_SIZE boundaries of the file, so once the stream
 * is aligned it stays aligned. */
#define DIRECT_ALIGN 4096U
/* Every buffer queued, the sync of a checkpoint and the final sync of file_sink_finish(). */
#define OPS_MAX (FILE_SINK_BUFFERS + 2U)
#define WRITER_STACK_SIZE (512U * 1024U)

typedef enum SinkOpKind {
        SINK_OP_WRITE,
        SINK_OP_SYNC,
} SinkOpKind;

typedef struct SinkOp {
        SinkOpKind kind;
        unsigned buf;    /* SINK_OP_WRITE */
        uint64_t offset; /* SINK_OP_WRITE: where; SINK_OP_SYNC: durable up to here when done */
        size_t len;
} SinkOp;

struct FileSink {
        sd_event *event;
        sd_event_source *wake_source;
        int wake_fd;
        int fd;
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
        bool sync_pending;
        bool blocked;                 /* append answered -EAGAIN: call writable() */
        int error;                    /* reported failure */

        /* The writer's side: only the writer touches these while it runs. */
        bool direct_ok;               /* O_DIRECT not refused by the file system */
        bool fd_direct;               /* O_DIRECT currently set on the fd */
        bool direct_used;

        /* Shared, under lock. */
        pthread_mutex_t lock;
        pthread_cond_t work, idle;
        SinkOp ops[OPS_MAX];
        unsigned op_head, op_count;
        bool buf_busy[FILE_SINK_BUFFERS]; /* queued or being written */
        bool executing;               /* the op at op_head is being carried out */
        bool quit;
        bool held;                    /* tests: the writer takes no new op */
        bool thread_running;
        pthread_t thread;
        uint64_t w_durable;
        int w_error;
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

/* Writes p[0..n) at off: directly when everything is aligned and the file system takes it,
 * through the page cache otherwise. Runs on the writer, or on the loop while the writer is idle. */
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

static int sink_sync(FileSink *s) {
        return fdatasync(s->fd) < 0 ? -errno : 0;
}

static void *writer_main(void *userdata) {
        FileSink *s = userdata;

        pthread_mutex_lock(&s->lock);
        for (;;) {
                while ((s->op_count == 0 || s->held) && !s->quit)
                        pthread_cond_wait(&s->work, &s->lock);
                if (s->op_count == 0)
                        break;
                SinkOp op = s->ops[s->op_head];
                bool skip = s->w_error != 0; /* after a failure nothing more is written */
                s->executing = true;
                pthread_mutex_unlock(&s->lock);

                int r = 0;
                if (!skip)
                        r = op.kind == SINK_OP_WRITE ? sink_write(s, s->buf[op.buf], op.len, op.offset) : sink_sync(s);

                pthread_mutex_lock(&s->lock);
                s->executing = false;
                s->op_head = (s->op_head + 1) % OPS_MAX;
                s->op_count--;
                if (op.kind == SINK_OP_WRITE)
                        s->buf_busy[op.buf] = false;
                if (r < 0 && s->w_error == 0)
                        s->w_error = -r;
                if (op.kind == SINK_OP_SYNC && !skip && r >= 0)
                        s->w_durable = op.offset;
                if (s->op_count == 0)
                        pthread_cond_broadcast(&s->idle);
                pthread_mutex_unlock(&s->lock);
                (void) eventfd_write(s->wake_fd, 1);
                pthread_mutex_lock(&s->lock);
        }
        pthread_mutex_unlock(&s->lock);
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
        assert(s->op_count < OPS_MAX);
        s->ops[(s->op_head + s->op_count) % OPS_MAX] = op;
        s->op_count++;
        if (op.kind == SINK_OP_WRITE)
                s->buf_busy[op.buf] = true;
        pthread_cond_signal(&s->work);
        pthread_mutex_unlock(&s->lock);
        return 0;
}

static void sink_wait_idle(FileSink *s) {
        pthread_mutex_lock(&s->lock);
        while (s->op_count > 0)
                pthread_cond_wait(&s->idle, &s->lock);
        pthread_mutex_unlock(&s->lock);
}

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
        bool any_free = false;
        uint64_t durable;
        int error;

        (void) eventfd_read(s->wake_fd, &v);
        pthread_mutex_lock(&s->lock);
        for (unsigned i = 0; i < FILE_SINK_BUFFERS; i++)
                if (!s->buf_busy[i] && (int) i != s->filling)
                        any_free = true;
        durable = s->w_durable;
        error = s->w_error;
        pthread_mutex_unlock(&s->lock);

        if (s->error != 0)
                return 0;
        if (error != 0) {
                s->error = error;
                s->sync_pending = false;
                s->cb.failed(s, error, s->userdata);
                return 0;
        }
        if (s->blocked && any_free) {
                s->blocked = false;
                s->cb.writable(s, s->userdata);
        }
        if (durable > s->durable) {
                s->durable = durable;
                if (durable >= s->sync_requested)
                        s->sync_pending = false;
                s->cb.durable(s, durable, s->userdata); /* may free s: last */
        }
        return 0;
}

int file_sink_new(sd_event *e, int fd, uint64_t offset, const FileSinkCallbacks *cb, void *userdata, FileSink **ret) {
        FileSink *s;
        int r;

        s = calloc(1, sizeof(FileSink));
        if (!s)
                return -ENOMEM;
        *s = (FileSink) {
                .event = sd_event_ref(e), .wake_fd = -EBADF, .fd = fd, .cb = *cb, .userdata = userdata,
                .filling = -1, .offset = offset, .submitted = offset, .sync_requested = offset, .durable = offset,
                .w_durable = offset, .direct_ok = true,
        };
        pthread_mutex_init(&s->lock, NULL);
        pthread_cond_init(&s->work, NULL);
        pthread_cond_init(&s->idle, NULL);

        s->wake_fd = eventfd(0, EFD_CLOEXEC | EFD_NONBLOCK);
        if (s->wake_fd < 0) {
                r = -errno;
                file_sink_free(s);
                return r;
        }
        r = sd_event_add_io(e, &s->wake_source, s->wake_fd, EPOLLIN, on_wake, s);
        if (r < 0) {
                file_sink_free(s);
                return r;
        }
        (void) sd_event_source_set_description(s->wake_source, "file-sink");
        *ret = s;
        return 0;
}

FileSink *file_sink_free(FileSink *s) {
        if (!s)
                return NULL;
        if (s->thread_running) {
                pthread_mutex_lock(&s->lock);
                /* Drop what waits; the write under way (if any) finishes. */
                s->op_count = s->executing ? 1 : 0;
                s->quit = true;
                pthread_cond_signal(&s->work);
                pthread_mutex_unlock(&s->lock);
                pthread_join(s->thread, NULL);
        }
        if (s->fd_direct)
                (void) set_direct(s->fd, false);
        sd_event_source_disable_unref(s->wake_source);
        if (s->wake_fd >= 0)
                close(s->wake_fd);
        sd_event_unref(s->event);
        for (unsigned i = 0; i < FILE_SINK_BUFFERS; i++)
                free(s->buf[i]);
        pthread_cond_destroy(&s->idle);
        pthread_cond_destroy(&s->work);
        pthread_mutex_destroy(&s->lock);
        return mfree(s);
}

int file_sink_append(FileSink *s, const void *data, size_t n) {
        bool busy[FILE_SINK_BUFFERS];
        size_t room = 0;
        bool any_busy = false;
        const char *p = data;
        int r;

        if (s->error != 0)
                return -s->error;
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
                        busy[i] = true; /* taken, as far as this loop goes */
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
        if (s->sync_pending)
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

int64_t file_sink_finish(FileSink *s) {
        int r;

        if (s->error != 0)
                return -s->error;

        if (!s->thread_running) {
                /* Never needed the writer (a small file): write and sync right here. */
                if (s->filling >= 0 && s->fill_len > 0) {
                        r = sink_write(s, s->buf[s->filling], s->fill_len, s->fill_start);
                        if (r < 0) {
                                s->error = -r;
                                return r;
                        }
                        s->submitted = s->fill_start + s->fill_len;
                        s->filling = -1;
                        s->fill_len = 0;
                }
                if (s->submitted != s->durable) {
                        r = sink_sync(s);
                        if (r < 0) {
                                s->error = -r;
                                return r;
                        }
                }
                s->durable = s->w_durable = s->sync_requested = s->submitted;
                s->sync_pending = false;
                return (int64_t) s->durable;
        }

        r = sink_submit_filling(s);
        if (r >= 0 && s->submitted != s->sync_requested)
                r = sink_queue(s, (SinkOp) { .kind = SINK_OP_SYNC, .offset = s->submitted });
        if (r >= 0)
                s->sync_requested = s->submitted;
        sink_wait_idle(s);

        pthread_mutex_lock(&s->lock);
        int error = s->w_error;
        uint64_t durable = s->w_durable;
        pthread_mutex_unlock(&s->lock);

        s->sync_pending = false;
        s->blocked = false;
        if (r < 0 || error != 0) {
                s->error = error ?: -r;
                return -s->error;
        }
        s->durable = durable;
        return (int64_t) durable;
}

void file_sink_rewind(FileSink *s, uint64_t offset) {
        if (s->thread_running)
                sink_wait_idle(s);
        pthread_mutex_lock(&s->lock);
        s->w_durable = MIN(s->w_durable, offset);
        pthread_mutex_unlock(&s->lock);
        s->filling = -1;
        s->fill_len = 0;
        s->offset = s->submitted = offset;
        s->durable = s->sync_requested = MIN(s->durable, offset);
        s->sync_pending = false;
        s->blocked = false;
}

uint64_t file_sink_offset(const FileSink *s) {
        return s->offset;
}

uint64_t file_sink_durable(const FileSink *s) {
        return s->durable;
}

bool file_sink_used_direct_io(const FileSink *s) {
        return s->direct_used;
}

bool file_sink_thread_running(const FileSink *s) {
        return s->thread_running;
}

void file_sink_hold_writer(FileSink *s, bool hold) {
        pthread_mutex_lock(&s->lock);
        s->held = hold;
        pthread_cond_signal(&s->work);
        pthread_mutex_unlock(&s->lock);
}
