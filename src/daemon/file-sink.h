/* SPDX-License-Identifier: LGPL-2.1-or-later */
#pragma once

/* A file sink: appends a byte stream to a file, fast and durably, without blocking the loop.
 *
 * Appended bytes are gathered in a few 1 MiB buffers aligned for direct I/O. A full buffer goes
 * to the sink's writer thread, which writes it with O_DIRECT where the file system allows it
 * (no page-cache copy, no writeback charged to the daemon; buffered writes otherwise) while the
 * loop goes on receiving into the next buffer. When every buffer is taken, file_sink_append()
 * answers -EAGAIN and takes nothing; the writable() callback says when to try again.
 *
 * A checkpoint asks the writer to fdatasync() behind the writes queued before it; durable()
 * then reports the offset up to which the file is on disk. Only durable offsets may be recorded.
 *
 * The thread exists only while there is something to write: a file that fits in one buffer is
 * written by file_sink_finish() on the loop, and never costs a thread. The sink writes only to the
 * fd it is given (opened by the owner's file worker); it never opens a path. This module does not
 * include sd-bus. */

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include <systemd/sd-event.h>

#include "macro.h"

#define FILE_SINK_BUFFER_SIZE (1024U * 1024U)
#define FILE_SINK_BUFFERS 4U

typedef struct FileSink FileSink;

typedef struct FileSinkCallbacks {
        /* Buffer space is free again after file_sink_append() answered -EAGAIN. */
        void (*writable)(FileSink *s, void *userdata);
        /* The file is on disk up to offset (a checkpoint completed). May free the sink. */
        void (*durable)(FileSink *s, uint64_t offset, void *userdata);
        /* A write or sync failed (positive errno); the sink takes nothing more. May free the sink. */
        void (*failed)(FileSink *s, int error, void *userdata);
} FileSinkCallbacks;

/* fd: open for writing, stays owned by the caller and must outlive the sink. offset: where the
 * stream continues (the file's durable length). */
int file_sink_new(sd_event *e, int fd, uint64_t offset, const FileSinkCallbacks *cb, void *userdata, FileSink **ret);

/* Waits for the writer to finish what it is doing and stops it; bytes not yet written are dropped
 * (call file_sink_finish() first to keep them). */
FileSink *file_sink_free(FileSink *s);
DEFINE_TRIVIAL_CLEANUP_FUNC(FileSink *, file_sink_free);

/* Takes all n bytes (0), or none: -EAGAIN (every buffer taken: wait for writable()), or the
 * errno of an earlier failure. */
int file_sink_append(FileSink *s, const void *data, size_t n);

/* Asks for everything appended so far to become durable: with partial = false, what filled whole
 * buffers (so writes stay large and aligned); with partial = true, every byte (for slow streams).
 * durable() follows. Returns 0, or 0 without doing anything when nothing new would become
 * durable or a checkpoint is already under way (checkpoint_pending()). */
int file_sink_checkpoint(FileSink *s, bool partial);
bool file_sink_checkpoint_pending(const FileSink *s);

/* Writes everything and fdatasync()s, waiting for it. Returns the durable offset (>= 0) or -errno.
 * No callback is called. */
int64_t file_sink_finish(FileSink *s);

/* Forgets every byte after offset (waiting for writes in flight) and continues from there; the
 * caller truncates the file. */
void file_sink_rewind(FileSink *s, uint64_t offset);

/* Bytes appended (the stream's length), and the offset known to be durable. */
uint64_t file_sink_offset(const FileSink *s);
uint64_t file_sink_durable(const FileSink *s);

/* For tests: whether any write went to the file with O_DIRECT, whether the thread runs, and
 * holding the writer (it starts no new write or sync until released). */
bool file_sink_used_direct_io(const FileSink *s);
bool file_sink_thread_running(const FileSink *s);
void file_sink_hold_writer(FileSink *s, bool hold);
