/* SPDX-License-Identifier: LGPL-2.1-or-later */
/* The file sink on a real file system: every byte lands where it belongs, whatever the chunk
 * sizes; a file is cut back to its checkpoint before it continues; checkpoints report only what
 * fdatasync() covered; a full sink pushes back; failures are reported once; and a writer that
 * does not return is left behind without holding up the loop. */
#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <signal.h>
#include <stdlib.h>
#include <string.h>
#include <sys/resource.h>
#include <sys/stat.h>
#include <unistd.h>

#include "file-sink.h"
#include "tests.h"

#define MiB (1024U * 1024U)
#define CLOSE_TIMEOUT (5 * USEC_PER_SEC)

typedef struct Watch {
        unsigned prepared_calls, writable, durable_calls, completed_calls, failed_calls, source_calls, copied_calls;
        int64_t prepared, completed, copied;
        int source_error;
        off_t source_size;
        bool copy_write_failed;
        uint64_t durable;        /* last durable offset reported */
        bool durable_went_back;
        int error;
} Watch;

static void on_prepared(FileSink *s, int64_t offset, void *userdata) {
        Watch *w = userdata;
        w->prepared_calls++;
        w->prepared = offset;
}

static void on_writable(FileSink *s, void *userdata) {
        ((Watch *) userdata)->writable++;
}

static void on_durable(FileSink *s, uint64_t offset, void *userdata) {
        Watch *w = userdata;
        if (offset < w->durable)
                w->durable_went_back = true;
        w->durable = offset;
        w->durable_calls++;
}

static void on_completed(FileSink *s, int64_t result, void *userdata) {
        Watch *w = userdata;
        w->completed_calls++;
        w->completed = result;
}

static void on_failed(FileSink *s, int error, void *userdata) {
        Watch *w = userdata;
        w->failed_calls++;
        w->error = error;
}

static void on_source_ready(FileSink *s, int error, const struct stat *st, void *userdata) {
        Watch *w = userdata;
        w->source_calls++;
        w->source_error = error;
        w->source_size = error == 0 ? st->st_size : -1;
}

static void on_copied(FileSink *s, int64_t n, bool write_failed, void *userdata) {
        Watch *w = userdata;
        w->copied_calls++;
        w->copied = n;
        w->copy_write_failed = write_failed;
}

static const FileSinkCallbacks callbacks = {
        .source_ready = on_source_ready,
        .copied = on_copied,
        .prepared = on_prepared,
        .writable = on_writable,
        .durable = on_durable,
        .completed = on_completed,
        .failed = on_failed,
};

static char *pattern(size_t n, unsigned seed) {
        char *p = malloc(n);
        uint32_t x = seed * 2654435761U + 1;
        for (size_t i = 0; i < n; i++) {
                x = x * 1103515245U + 12345U;
                p[i] = (char) (x >> 16);
        }
        return p;
}

static bool file_equals(const char *path, const char *want, size_t n) {
        int fd = open(path, O_RDONLY | O_CLOEXEC);
        if (fd < 0)
                return false;
        char *got = malloc(n + 1);
        ssize_t k = 0, r;
        while ((r = read(fd, got + k, n + 1 - (size_t) k)) > 0)
                k += r;
        close(fd);
        bool eq = (size_t) k == n && memcmp(got, want, n) == 0;
        if (!eq) {
                size_t i = 0;
                while (i < n && i < (size_t) k && got[i] == want[i])
                        i++;
                fprintf(stderr, "%s: %zd bytes, expected %zu; first difference at %zu\n", path, k, n, i);
        }
        free(got);
        return eq;
}

static unsigned open_fds(void) {
        unsigned n = 0;
        DIR *d = opendir("/proc/self/fd");
        if (!d)
                return 0;
        while (readdir(d))
                n++;
        closedir(d);
        return n;
}

static void run_once(sd_event *e) {
        (void) sd_event_run(e, 100 * 1000);
}

#define RUN_UNTIL(e, cond)                                                       \
        do {                                                                     \
                for (unsigned _spins = 0; !(cond) && _spins < 1000; _spins++)    \
                        run_once(e);                                             \
                CHECK(cond);                                                     \
        } while (0)

/* An empty file DIR/NAME to stream into; its path in path. */
static int create_file(const char *dir, const char *name, char path[static 4096]) {
        snprintf(path, 4096, "%s/%s", dir, name);
        int fd = open(path, O_RDWR | O_CREAT | O_TRUNC | O_CLOEXEC, 0600);
        CHECK(fd >= 0);
        return fd;
}

/* A sink on fd, prepared to continue after checkpoint; the offset it continues at in w->prepared. */
static FileSink *sink_on(sd_event *e, int fd, uint64_t checkpoint, Watch *w) {
        FileSink *s = NULL;
        CHECK_EQ_INT(file_sink_new(e, fd, &callbacks, w, &s), 0);
        CHECK_EQ_INT(file_sink_prepare(s, checkpoint), 0);
        RUN_UNTIL(e, w->prepared_calls == 1);
        return s;
}

/* Appends data[from..n) in chunks of varying size, waiting whenever the sink pushes back, asking
 * for a whole-buffer checkpoint every few chunks. Returns false on an unexpected error. */
static bool stream(sd_event *e, FileSink *s, Watch *w, const char *data, size_t from, size_t n) {
        size_t at = from, i = 0;
        while (at < n) {
                size_t k = MIN((size_t) (1 + (i * 7919U) % (512U * 1024U)), n - at);
                int r = file_sink_append(s, data + at, k);
                if (r == -EAGAIN) {
                        unsigned before = w->writable;
                        for (unsigned spins = 0; w->writable == before && spins < 1000; spins++)
                                run_once(e);
                        if (w->writable == before)
                                return false;
                        continue;
                }
                if (r < 0)
                        return false;
                at += k;
                if (++i % 5 == 0)
                        (void) file_sink_checkpoint(s, false);
        }
        return true;
}

/* The end of every stream: complete (every byte durable), close, and the file holds exactly data. */
static void complete_and_compare(sd_event *e, FileSink *s, Watch *w, const char *path, const char *data, size_t n) {
        unsigned before = w->completed_calls;
        CHECK_EQ_INT(file_sink_complete(s, 0), 0);
        RUN_UNTIL(e, w->completed_calls == before + 1);
        CHECK_EQ_INT(w->completed, n);
        CHECK_EQ_INT(file_sink_durable(s), n);
        CHECK_EQ_INT(file_sink_close(s, CLOSE_TIMEOUT, NULL), n);
        CHECK(file_equals(path, data, n));
        unlink(path);
}

static bool direct_io_supported(const char *dir) {
        char path[4096];
        snprintf(path, sizeof(path), "%s/probe", dir);
        int fd = open(path, O_WRONLY | O_CREAT | O_DIRECT | O_CLOEXEC, 0600);
        if (fd >= 0)
                close(fd);
        unlink(path);
        return fd >= 0;
}

static void test_big_stream(sd_event *e, const char *dir) {
        char path[4096];
        size_t n = 21 * MiB + 12345;
        _cleanup_free_ char *data = pattern(n, 1);
        Watch w = {};
        unsigned fds = open_fds();

        int fd = create_file(dir, "big", path);
        FileSink *s = sink_on(e, fd, 0, &w);
        CHECK_EQ_INT(w.prepared, 0);
        CHECK(stream(e, s, &w, data, 0, n));
        CHECK_EQ_INT(file_sink_offset(s), n);

        /* Whole-buffer checkpoints: what they report is a buffer boundary and never goes back. */
        RUN_UNTIL(e, !file_sink_checkpoint_pending(s));
        CHECK(w.durable_calls > 0);
        CHECK(!w.durable_went_back);
        CHECK_EQ_INT(w.durable % FILE_SINK_BUFFER_SIZE, 0);
        CHECK(w.durable <= n);
        CHECK_EQ_INT(file_sink_durable(s), w.durable);
        if (direct_io_supported(dir))
                CHECK(file_sink_used_direct_io(s));

        complete_and_compare(e, s, &w, path, data, n);
        CHECK_EQ_INT(w.failed_calls, 0);
        /* The sink closed the file and its own descriptors. */
        CHECK_EQ_INT(open_fds(), fds);
}

static void test_small_file(sd_event *e, const char *dir) {
        char path[4096];
        _cleanup_free_ char *data = pattern(16000, 2);
        Watch w = {};

        int fd = create_file(dir, "small", path);
        FileSink *s = sink_on(e, fd, 0, &w);
        CHECK_EQ_INT(file_sink_append(s, data, 16000), 0);
        complete_and_compare(e, s, &w, path, data, 16000);
}

/* Continuing after an unaligned checkpoint: bytes past it (never proven durable) are cut off, the
 * first buffer only reaches the next boundary, the bytes before are left alone. */
static void test_continue_unaligned(sd_event *e, const char *dir) {
        char path[4096];
        size_t keep = 1000, n = 3 * MiB + 777;
        _cleanup_free_ char *data = pattern(n, 3), *junk = pattern(5000, 33);
        Watch w = {};

        int fd = create_file(dir, "cont", path);
        CHECK_EQ_INT(pwrite(fd, data, keep, 0), (ssize_t) keep);
        CHECK_EQ_INT(pwrite(fd, junk, 5000, keep), 5000);
        FileSink *s = sink_on(e, fd, keep, &w);
        CHECK_EQ_INT(w.prepared, keep);
        CHECK_EQ_INT(file_sink_offset(s), keep);
        CHECK(stream(e, s, &w, data, keep, n));
        complete_and_compare(e, s, &w, path, data, n);
}

/* A file shorter than its recorded checkpoint starts again from 0. */
static void test_continue_short_file(sd_event *e, const char *dir) {
        char path[4096];
        _cleanup_free_ char *data = pattern(300000, 4);
        Watch w = {};
        struct stat st;

        int fd = create_file(dir, "short", path);
        CHECK_EQ_INT(pwrite(fd, data, 100, 0), 100);
        FileSink *s = sink_on(e, fd, 1000, &w);
        CHECK_EQ_INT(w.prepared, 0);
        CHECK(stat(path, &st) == 0 && st.st_size == 0);
        CHECK(stream(e, s, &w, data, 0, 300000));
        complete_and_compare(e, s, &w, path, data, 300000);
}

/* A slow stream: a partial checkpoint makes the bytes of an unfilled buffer durable. */
static void test_partial_checkpoint(sd_event *e, const char *dir) {
        char path[4096];
        _cleanup_free_ char *data = pattern(2 * MiB, 5);
        Watch w = {};

        int fd = create_file(dir, "partial", path);
        FileSink *s = sink_on(e, fd, 0, &w);
        CHECK_EQ_INT(file_sink_append(s, data, 100), 0);

        /* A whole-buffer checkpoint has nothing to make durable yet. */
        CHECK_EQ_INT(file_sink_checkpoint(s, false), 0);
        CHECK(!file_sink_checkpoint_pending(s));

        CHECK_EQ_INT(file_sink_checkpoint(s, true), 0);
        CHECK(file_sink_checkpoint_pending(s));
        RUN_UNTIL(e, w.durable_calls == 1);
        CHECK_EQ_INT(w.durable, 100);
        CHECK(!file_sink_checkpoint_pending(s));

        /* The stream goes on from the unaligned offset and realigns. */
        CHECK_EQ_INT(file_sink_append(s, data + 100, 2 * MiB - 100), 0);
        complete_and_compare(e, s, &w, path, data, 2 * MiB);
}

/* Starting over from 0 (the remote file changed): nothing of the old stream survives, and no
 * checkpoint of the old stream is reported after the rewind. */
static void test_rewind(sd_event *e, const char *dir) {
        char path[4096];
        size_t n_old = 5 * MiB + 3, n_new = 2 * MiB + 5;
        _cleanup_free_ char *old = pattern(n_old, 6), *new = pattern(n_new, 7);
        Watch w = {};

        int fd = create_file(dir, "rewind", path);
        FileSink *s = sink_on(e, fd, 0, &w);
        CHECK(stream(e, s, &w, old, 0, n_old));
        CHECK_EQ_INT(file_sink_checkpoint(s, true), 0);
        CHECK_EQ_INT(file_sink_rewind(s, 0), 0);
        CHECK_EQ_INT(file_sink_offset(s), 0);
        CHECK_EQ_INT(file_sink_durable(s), 0);
        w.durable = 0;
        CHECK(stream(e, s, &w, new, 0, n_new));
        CHECK(w.durable <= n_new);
        complete_and_compare(e, s, &w, path, new, n_new);
}

/* A write that fails (here: past RLIMIT_FSIZE) is reported once, and the sink takes nothing more. */
static void test_write_failure(sd_event *e, const char *dir) {
        char path[4096];
        size_t n = 6 * MiB;
        _cleanup_free_ char *data = pattern(n, 8);
        struct rlimit old, small;
        Watch w = {};
        int r = 0;

        CHECK_EQ_INT(getrlimit(RLIMIT_FSIZE, &old), 0);
        small = (struct rlimit) { .rlim_cur = 2 * MiB, .rlim_max = old.rlim_max };
        int fd = create_file(dir, "fail", path);
        FileSink *s = sink_on(e, fd, 0, &w);
        CHECK_EQ_INT(setrlimit(RLIMIT_FSIZE, &small), 0);

        for (size_t at = 0; at < n && r != -EFBIG;) {
                r = file_sink_append(s, data + at, 256 * 1024);
                if (r == 0)
                        at += 256 * 1024;
                else if (r == -EAGAIN)
                        for (unsigned spins = 0; w.failed_calls == 0 && w.writable == 0 && spins < 1000; spins++)
                                run_once(e);
                w.writable = 0;
        }
        RUN_UNTIL(e, w.failed_calls == 1);
        CHECK_EQ_INT(w.error, EFBIG);
        CHECK_EQ_INT(file_sink_append(s, data, 10), -EFBIG);
        CHECK_EQ_INT(file_sink_checkpoint(s, true), -EFBIG);
        CHECK_EQ_INT(file_sink_complete(s, 0), -EFBIG);
        /* Reported once only. */
        run_once(e);
        CHECK_EQ_INT(w.failed_calls, 1);
        CHECK_EQ_INT(file_sink_close(s, CLOSE_TIMEOUT, NULL), -EFBIG);
        CHECK_EQ_INT(setrlimit(RLIMIT_FSIZE, &old), 0);
        unlink(path);
}

/* A failure after the stream was declared complete goes to completed(), not failed(). */
static void test_failure_while_completing(sd_event *e, const char *dir) {
        char path[4096];
        size_t n = 3 * MiB;
        _cleanup_free_ char *data = pattern(n, 9);
        struct rlimit old, small;
        Watch w = {};

        CHECK_EQ_INT(getrlimit(RLIMIT_FSIZE, &old), 0);
        small = (struct rlimit) { .rlim_cur = 1 * MiB, .rlim_max = old.rlim_max };
        int fd = create_file(dir, "fail2", path);
        FileSink *s = sink_on(e, fd, 0, &w);
        CHECK_EQ_INT(setrlimit(RLIMIT_FSIZE, &small), 0);
        CHECK_EQ_INT(file_sink_append(s, data, n), 0);
        CHECK_EQ_INT(file_sink_complete(s, 0), 0);
        RUN_UNTIL(e, w.completed_calls == 1);
        CHECK_EQ_INT(w.completed, -EFBIG);
        CHECK_EQ_INT(w.failed_calls, 0);
        CHECK_EQ_INT(file_sink_close(s, CLOSE_TIMEOUT, NULL), -EFBIG);
        CHECK_EQ_INT(setrlimit(RLIMIT_FSIZE, &old), 0);
        unlink(path);
}

/* A disk slower than the network: with every buffer waiting for the writer, the sink takes
 * nothing (all or nothing) and says when it has room again. */
static void test_pushback(sd_event *e, const char *dir) {
        char path[4096];
        size_t chunk = 300 * 1024, at = 0;
        _cleanup_free_ char *data = pattern(8 * MiB, 10);
        Watch w = {};
        int r;

        int fd = create_file(dir, "pushback", path);
        FileSink *s = sink_on(e, fd, 0, &w);
        file_sink_hold_writer(s, true);
        while ((r = file_sink_append(s, data + at, chunk)) == 0)
                at += chunk;
        CHECK_EQ_INT(r, -EAGAIN);
        /* Four buffers' worth taken (the last one partly), not a byte of the refused chunk. */
        CHECK(at > (FILE_SINK_BUFFERS - 1) * FILE_SINK_BUFFER_SIZE);
        CHECK(at + chunk > FILE_SINK_BUFFERS * FILE_SINK_BUFFER_SIZE);
        CHECK_EQ_INT(file_sink_offset(s), at);
        run_once(e);
        CHECK_EQ_INT(w.writable, 0);
        CHECK_EQ_INT(file_sink_append(s, data + at, chunk), -EAGAIN);

        file_sink_hold_writer(s, false);
        RUN_UNTIL(e, w.writable == 1);
        CHECK_EQ_INT(file_sink_append(s, data + at, chunk), 0);
        at += chunk;
        complete_and_compare(e, s, &w, path, data, at);
}

/* A file system that does not answer: the writer sits in one operation. Closing waits no longer
 * than its timeout (not at all once the operation is stuck for longer), leaves the sink to its
 * writer, and the writer cleans up everything when the operation returns. */
static void test_stuck_writer_left_behind(sd_event *e, const char *dir) {
        char path[4096];
        _cleanup_free_ char *data = pattern(3 * MiB, 11);
        FileSinkOrphan *o = NULL;
        Watch w = {};
        unsigned fds = open_fds();

        int fd = create_file(dir, "stuck", path);
        FileSink *s = sink_on(e, fd, 0, &w);
        CHECK_EQ_INT(file_sink_stuck_usec(s), 0);
        file_sink_hold_writer(s, true);
        CHECK_EQ_INT(file_sink_append(s, data, 3 * MiB), 0);
        for (unsigned i = 0; i < 200 && file_sink_stuck_usec(s) < 300 * USEC_PER_MSEC; i++)
                usleep(10 * 1000);
        CHECK(file_sink_stuck_usec(s) >= 300 * USEC_PER_MSEC);

        usec_t t0 = now(CLOCK_MONOTONIC);
        CHECK_EQ_INT(file_sink_close(s, 200 * USEC_PER_MSEC, &o), -ETIMEDOUT);
        CHECK(now(CLOCK_MONOTONIC) - t0 < 100 * USEC_PER_MSEC);
        CHECK(o != NULL);
        /* No callback for a sink that is gone. */
        run_once(e);
        CHECK_EQ_INT(w.durable_calls + w.failed_calls + w.completed_calls, 0);

        /* The operation returns (here: released by the close); the writer goes, with everything. */
        for (unsigned i = 0; i < 500 && o && !file_sink_orphan_done(o); i++)
                usleep(10 * 1000);
        CHECK(o && file_sink_orphan_done(o));
        o = file_sink_orphan_unref(o);
        CHECK_EQ_INT(open_fds(), fds);
        unlink(path);
}

/* A writer that is merely slow is waited for, up to the timeout: nothing is left behind. */
static void test_slow_writer_waited_for(sd_event *e, const char *dir) {
        char path[4096];
        _cleanup_free_ char *data = pattern(2 * MiB + 10, 12);
        FileSinkOrphan *o = NULL;
        Watch w = {};

        int fd = create_file(dir, "slow", path);
        FileSink *s = sink_on(e, fd, 0, &w);
        CHECK_EQ_INT(file_sink_append(s, data, 2 * MiB + 10), 0);
        CHECK_EQ_INT(file_sink_close(s, CLOSE_TIMEOUT, &o), 2 * MiB + 10);
        CHECK(o == NULL);
        CHECK(file_equals(path, data, 2 * MiB + 10));
        unlink(path);
}

/* A local source: the writer sizes it and copies it chunk by chunk; a source that ends early says
 * so (0 bytes); the sink closes the source too. */
static void test_copy(sd_event *e, const char *dir) {
        char path[4096], src_path[4096];
        size_t n = 9 * MiB + 4321, chunk = 4 * MiB;
        _cleanup_free_ char *data = pattern(n, 13);
        Watch w = {};
        unsigned fds = open_fds();

        int src = create_file(dir, "copy-src", src_path);
        CHECK_EQ_INT(pwrite(src, data, n, 0), (ssize_t) n);
        int fd = create_file(dir, "copy-dst", path);
        FileSink *s = sink_on(e, fd, 0, &w);
        CHECK_EQ_INT(file_sink_set_source(s, src), 0);
        RUN_UNTIL(e, w.source_calls == 1);
        CHECK_EQ_INT(w.source_error, 0);
        CHECK_EQ_INT(w.source_size, n);

        for (uint64_t at = 0; at < n;) {
                unsigned before = w.copied_calls;
                CHECK_EQ_INT(file_sink_copy(s, chunk), 0);
                /* One copy at a time. */
                CHECK_EQ_INT(file_sink_copy(s, chunk), -EINVAL);
                RUN_UNTIL(e, w.copied_calls == before + 1);
                CHECK(w.copied > 0);
                if (w.copied <= 0)
                        break;
                at += (uint64_t) w.copied;
                CHECK_EQ_INT(file_sink_offset(s), at);
        }
        /* The source ends here. */
        CHECK_EQ_INT(file_sink_copy(s, chunk), 0);
        RUN_UNTIL(e, w.copied_calls > 0 && w.copied == 0);
        CHECK(!w.copy_write_failed);
        complete_and_compare(e, s, &w, path, data, n);
        CHECK_EQ_INT(open_fds(), fds);
        unlink(src_path);
}

static void run_all(sd_event *e, const char *dir) {
        test_big_stream(e, dir);
        test_small_file(e, dir);
        test_continue_unaligned(e, dir);
        test_continue_short_file(e, dir);
        test_partial_checkpoint(e, dir);
        test_rewind(e, dir);
        test_write_failure(e, dir);
        test_failure_while_completing(e, dir);
        test_pushback(e, dir);
        test_stuck_writer_left_behind(e, dir);
        test_slow_writer_waited_for(e, dir);
        test_copy(e, dir);
}

int main(void) {
        sd_event *e = NULL;
        char disk[] = "/var/tmp/test-file-sink.XXXXXX", mem[] = "/dev/shm/test-file-sink.XXXXXX";

        signal(SIGXFSZ, SIG_IGN); /* past RLIMIT_FSIZE: EFBIG, not a signal */
        CHECK_EQ_INT(sd_event_new(&e), 0);

        /* A disk file system (direct I/O), and tmpfs (whatever it supports). */
        CHECK(mkdtemp(disk) != NULL);
        run_all(e, disk);
        rmdir(disk);
        if (mkdtemp(mem)) {
                run_all(e, mem);
                rmdir(mem);
        }
        sd_event_unref(e);
        return tests_finish("test-file-sink");
}
