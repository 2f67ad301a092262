/* SPDX-License-Identifier: LGPL-2.1-or-later */
#pragma once

/* A file sink: appends a byte stream to a file, fast and durably, and never lets the loop touch
 * the file.
 *
 * The sink owns the file's fd. Everything done to the file (sizing and truncating it, writing,
 * fdatasync(), setting its date, closing it) is carried out in order by the sink's writer thread,
 * and reported back to the loop, so a file system that stops answering (a dead NFS server, a
 * user's FUSE server) holds up this one download, never the daemon.
 *
 * Appended bytes are gathered in a few 1 MiB buffers aligned for direct I/O. A full buffer goes
 * to the writer, which writes it with O_DIRECT where the file system allows it (no page-cache
 * copy, no writeback charged to the daemon; buffered writes otherwise) while the loop goes on
 * receiving into the next buffer. When every buffer is taken, file_sink_append() answers -EAGAIN
 * and takes nothing; writable() says when to try again.
 *
 * A checkpoint asks the writer to fdatasync() behind the writes queued before it; durable()
 * then reports the offset up to which the file is on disk. Only durable offsets may be recorded.
 *
 * The sink never opens a path. This module does not include sd-bus. */

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <sys/stat.h>
#include <time.h>

#include <systemd/sd-event.h>

#include "macro.h"
#include "time-util.h"

#define FILE_SINK_BUFFER_SIZE (1024U * 1024U)
#define FILE_SINK_BUFFERS 4U

typedef struct FileSink FileSink;
typedef struct FileSinkOrphan FileSinkOrphan;

/* Callbacks marked "may free" may call file_sink_close() on the sink. */
typedef struct FileSinkCallbacks {
        /* file_sink_prepare() is done: the stream continues at offset (>= 0), or -errno. May free. */
        void (*prepared)(FileSink *s, int64_t offset, void *userdata);
        /* Buffer space is free again after file_sink_append() answered -EAGAIN. */
        void (*writable)(FileSink *s, void *userdata);
        /* The file is on disk up to offset (a checkpoint completed). May free. */
        void (*durable)(FileSink *s, uint64_t offset, void *userdata);
        /* file_sink_complete() is done: every byte is on disk (the stream's length), or -errno. May free. */
        void (*completed)(FileSink *s, int64_t result, void *userdata);
        /* A write, truncation or sync failed (positive errno); the sink takes nothing more. Not called
         * once file_sink_complete() was asked for (completed() gets the error). May free. */
        void (*failed)(FileSink *s, int error, void *userdata);
        /* Local sources only: file_sink_set_source() looked at the source: 0 and its stat, or a
         * positive errno. May free. */
        void (*source_ready)(FileSink *s, int error, const struct stat *st, void *userdata);
        /* file_sink_copy() is done: n bytes copied (0: the source ends there), or -errno; write_failed
         * says whether writing the file failed (then the sink takes nothing more) rather than
         * reading the source. May free. */
        void (*copied)(FileSink *s, int64_t n, bool write_failed, void *userdata);
} FileSinkCallbacks;

/* Takes over fd (open for writing): from now on only the writer touches it, and closes it. Call
 * file_sink_prepare() before appending. */
int file_sink_new(sd_event *e, int fd, const FileSinkCallbacks *cb, void *userdata, FileSink **ret);

/* Continues the file after a recorded checkpoint: bytes past it were never proven durable and are
 * cut off; a file shorter than the checkpoint starts again from 0. prepared() tells the offset. */
int file_sink_prepare(FileSink *s, uint64_t checkpoint);

/* Takes all n bytes (0), or none: -EAGAIN (every buffer taken: wait for writable()), or the
 * errno of an earlier failure. */
int file_sink_append(FileSink *s, const void *data, size_t n);

/* Asks for everything appended so far to become durable: with partial = false, what filled whole
 * buffers (so writes stay large and aligned); with partial = true, every byte (for slow streams).
 * durable() follows. Returns 0, also without doing anything when nothing new would become durable
 * or a checkpoint is already under way (file_sink_checkpoint_pending()). */
int file_sink_checkpoint(FileSink *s, bool partial);
bool file_sink_checkpoint_pending(const FileSink *s);

/* The stream is complete: write everything, fdatasync(), date the file mtime (if > 0); completed()
 * follows. Nothing may be appended afterwards. */
int file_sink_complete(FileSink *s, time_t mtime);

/* A local file to copy from instead of appending: the sink takes over src_fd (only the writer
 * touches it, and closes it), looks at it, and calls source_ready(). Once prepared only. */
int file_sink_set_source(FileSink *s, int src_fd);

/* Copies the next bytes of the source (at most len, at the stream's offset: the file is a copy of
 * the source) to the file, in the kernel where it can; copied() follows. One copy at a time. */
int file_sink_copy(FileSink *s, size_t len);

/* Forgets every byte after offset and continues from there: the file is truncated behind the
 * writes already queued, which are dropped where they have not started yet. */
int file_sink_rewind(FileSink *s, uint64_t offset);

/* Bytes appended (the stream's length), and the offset known to be durable. */
uint64_t file_sink_offset(const FileSink *s);
uint64_t file_sink_durable(const FileSink *s);

/* How long the writer has been inside one operation on the file (0: none under way). A file
 * system that does not answer shows here. */
usec_t file_sink_stuck_usec(const FileSink *s);

/* Writes out what was appended, fdatasync()s, closes the file and frees the sink, waiting at most
 * timeout (and not at all when an operation is already stuck for longer than that). Returns the
 * durable offset, or -errno (-ENODATA: file_sink_prepare() had not answered). If the time ran out: -ETIMEDOUT, and the sink is left to its
 * writer, which gives up what is queued and goes away (closing the fd) when the operation under
 * way returns; *ret_orphan then tells when that happened (nothing else may touch the file before).
 * No callback is called. */
int64_t file_sink_close(FileSink *s, usec_t timeout, FileSinkOrphan **ret_orphan);

bool file_sink_orphan_done(const FileSinkOrphan *o);
FileSinkOrphan *file_sink_orphan_unref(FileSinkOrphan *o);

/* For tests: whether any write went to the file with O_DIRECT, whether the thread runs, and
 * holding the writer inside its next operation (as a file system that does not answer would). */
bool file_sink_used_direct_io(const FileSink *s);
bool file_sink_thread_running(const FileSink *s);
void file_sink_hold_writer(FileSink *s, bool hold);
