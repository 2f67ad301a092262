/* SPDX-License-Identifier: LGPL-2.1-or-later */
/* The file sink on a real file system: every byte lands where it belongs, whatever the chunk
 * sizes; checkpoints report only what fdatasync() covered; a full sink pushes back; failures
 * are reported; small files cost no thread. */
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

typedef struct Watch {
        unsigned writable, durable_calls, failed_calls;
        uint64_t durable;        /* last durable offset reported */
        bool durable_went_back;
        int error;
} Watch;

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

static void on_failed(FileSink *s, int error, void *userdata) {
        Watch *w = userdata;
        w->failed_calls++;
        w->error = error;
}

static const FileSinkCallbacks callbacks = {
        .writable = on_writable,
        .durable = on_durable,
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
                size_t j = i;
                while (j < n && j < (size_t) k && got[j] != want[j])
                        j++;
                fprintf(stderr, "%s: %zd bytes, expected %zu; first difference at %zu, differs until %zu, got %02x %02x %02x\n", path, k, n, i, j, (unsigned char) got[i], (unsigned char) got[i+1], (unsigned char) got[i+2]);
        }
        free(got);
        return eq;
}

static void run_once(sd_event *e) {
        (void) sd_event_run(e, 100 * 1000);
}

/* Appends data[from..n) in chunks of varying size, waiting whenever the sink pushes back, asking
 * for a whole-buffer checkpoint every few chunks. Returns false on an unexpected error. */
static bool stream(sd_event *e, FileSink *s, Watch *w, const char *data, size_t from, size_t n, unsigned *pushbacks) {
        size_t at = from, i = 0;
        while (at < n) {
                size_t k = MIN((size_t) (1 + (i * 7919U) % (512U * 1024U)), n - at);
                int r = file_sink_append(s, data + at, k);
                if (r == -EAGAIN) {
                        unsigned before = w->writable;
                        (*pushbacks)++;
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

/* The end of every stream: finish (all n bytes durable), free, and the file holds exactly data. */
static void finish_and_compare(FileSink *s, int fd, const char *path, const char *data, size_t n) {
        CHECK_EQ_INT(file_sink_finish(s), n);
        file_sink_free(s);
        /* The fd is back to normal I/O for whoever uses it next. */
        CHECK((fcntl(fd, F_GETFL) & O_DIRECT) == 0);
        close(fd);
        CHECK(file_equals(path, data, n));
        unlink(path);
}

/* An empty file DIR/NAME to stream into; its path in path. */
static int create_file(const char *dir, const char *name, char path[static 4096]) {
        snprintf(path, 4096, "%s/%s", dir, name);
        int fd = open(path, O_RDWR | O_CREAT | O_TRUNC | O_CLOEXEC, 0600);
        CHECK(fd >= 0);
        return fd;
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
        unsigned pushbacks = 0;
        FileSink *s = NULL;

        int fd = create_file(dir, "big", path);
        CHECK_EQ_INT(file_sink_new(e, fd, 0, &callbacks, &w, &s), 0);

        CHECK(stream(e, s, &w, data, 0, n, &pushbacks));
        CHECK_EQ_INT(file_sink_offset(s), n);

        /* Whole-buffer checkpoints: what they report is a buffer boundary and never goes back. */
        for (unsigned spins = 0; file_sink_checkpoint_pending(s) && spins < 1000; spins++)
                run_once(e);
        CHECK(w.durable_calls > 0);
        CHECK(!w.durable_went_back);
        CHECK_EQ_INT(w.durable % FILE_SINK_BUFFER_SIZE, 0);
        CHECK(w.durable <= n);
        CHECK_EQ_INT(file_sink_durable(s), w.durable);

        CHECK_EQ_INT(file_sink_finish(s), n);
        CHECK(file_sink_thread_running(s));
        if (direct_io_supported(dir))
                CHECK(file_sink_used_direct_io(s));
        CHECK_EQ_INT(w.failed_calls, 0);
        s = file_sink_free(s);

        /* The fd is back to normal I/O for whoever uses it next. */
        CHECK((fcntl(fd, F_GETFL) & O_DIRECT) == 0);
        close(fd);
        CHECK(file_equals(path, data, n));
        unlink(path);
}

static void test_small_file_no_thread(sd_event *e, const char *dir) {
        char path[4096];
        _cleanup_free_ char *data = pattern(16000, 2);
        Watch w = {};
        FileSink *s = NULL;

        int fd = create_file(dir, "small", path);
        CHECK_EQ_INT(file_sink_new(e, fd, 0, &callbacks, &w, &s), 0);
        CHECK_EQ_INT(file_sink_append(s, data, 16000), 0);
        CHECK_EQ_INT(file_sink_finish(s), 16000);
        CHECK(!file_sink_thread_running(s));
        /* Nothing new: finishing again changes nothing. */
        finish_and_compare(s, fd, path, data, 16000);
}

/* Continuing after an unaligned checkpoint: the first buffer only reaches the next boundary,
 * the bytes before the offset are left alone. */
static void test_continue_unaligned(sd_event *e, const char *dir) {
        char path[4096];
        size_t keep = 1000, n = 3 * MiB + 777;
        _cleanup_free_ char *data = pattern(n, 3);
        Watch w = {};
        unsigned pushbacks = 0;
        FileSink *s = NULL;

        int fd = create_file(dir, "cont", path);
        CHECK_EQ_INT(pwrite(fd, data, keep, 0), (ssize_t) keep);
        CHECK_EQ_INT(file_sink_new(e, fd, keep, &callbacks, &w, &s), 0);
        CHECK_EQ_INT(file_sink_offset(s), keep);
        CHECK(stream(e, s, &w, data, keep, n, &pushbacks));
        finish_and_compare(s, fd, path, data, n);
}

/* A slow stream: a partial checkpoint makes the bytes of an unfilled buffer durable. */
static void test_partial_checkpoint(sd_event *e, const char *dir) {
        char path[4096];
        _cleanup_free_ char *data = pattern(2 * MiB, 4);
        Watch w = {};
        FileSink *s = NULL;

        int fd = create_file(dir, "partial", path);
        CHECK_EQ_INT(file_sink_new(e, fd, 0, &callbacks, &w, &s), 0);
        CHECK_EQ_INT(file_sink_append(s, data, 100), 0);

        /* A whole-buffer checkpoint has nothing to make durable yet. */
        CHECK_EQ_INT(file_sink_checkpoint(s, false), 0);
        CHECK(!file_sink_checkpoint_pending(s));

        CHECK_EQ_INT(file_sink_checkpoint(s, true), 0);
        CHECK(file_sink_checkpoint_pending(s));
        for (unsigned spins = 0; w.durable_calls == 0 && spins < 1000; spins++)
                run_once(e);
        CHECK_EQ_INT(w.durable, 100);
        CHECK(!file_sink_checkpoint_pending(s));

        /* The stream goes on from the unaligned offset and realigns. */
        CHECK_EQ_INT(file_sink_append(s, data + 100, 2 * MiB - 100), 0);
        finish_and_compare(s, fd, path, data, 2 * MiB);
}

/* Starting over from 0 (the remote file changed): nothing of the old stream survives. */
static void test_rewind(sd_event *e, const char *dir) {
        char path[4096];
        size_t n_old = 5 * MiB + 3, n_new = 2 * MiB + 5;
        _cleanup_free_ char *old = pattern(n_old, 5), *new = pattern(n_new, 6);
        Watch w = {};
        unsigned pushbacks = 0;
        FileSink *s = NULL;

        int fd = create_file(dir, "rewind", path);
        CHECK_EQ_INT(file_sink_new(e, fd, 0, &callbacks, &w, &s), 0);
        CHECK(stream(e, s, &w, old, 0, n_old, &pushbacks));
        file_sink_rewind(s, 0);
        CHECK_EQ_INT(file_sink_offset(s), 0);
        CHECK_EQ_INT(file_sink_durable(s), 0);
        CHECK_EQ_INT(ftruncate(fd, 0), 0);
        CHECK(stream(e, s, &w, new, 0, n_new, &pushbacks));
        finish_and_compare(s, fd, path, new, n_new);
}

/* A write that fails (here: past RLIMIT_FSIZE) is reported once, and the sink takes nothing more. */
static void test_write_failure(sd_event *e, const char *dir) {
        char path[4096];
        size_t n = 6 * MiB;
        _cleanup_free_ char *data = pattern(n, 7);
        struct rlimit old, small = { .rlim_cur = 2 * MiB, .rlim_max = RLIM_INFINITY };
        Watch w = {};
        FileSink *s = NULL;
        int r = 0;

        int fd = create_file(dir, "fail", path);
        CHECK_EQ_INT(getrlimit(RLIMIT_FSIZE, &old), 0);
        small.rlim_max = old.rlim_max;
        CHECK_EQ_INT(setrlimit(RLIMIT_FSIZE, &small), 0);

        CHECK_EQ_INT(file_sink_new(e, fd, 0, &callbacks, &w, &s), 0);
        for (size_t at = 0; at < n && r != -EFBIG;) {
                r = file_sink_append(s, data + at, 256 * 1024);
                if (r == 0)
                        at += 256 * 1024;
                else if (r == -EAGAIN || r == -EFBIG)
                        for (unsigned spins = 0; w.failed_calls == 0 && w.writable == 0 && spins < 1000; spins++)
                                run_once(e);
                w.writable = 0;
        }
        for (unsigned spins = 0; w.failed_calls == 0 && spins < 1000; spins++)
                run_once(e);
        CHECK_EQ_INT(w.failed_calls, 1);
        CHECK_EQ_INT(w.error, EFBIG);
        CHECK_EQ_INT(file_sink_append(s, data, 10), -EFBIG);
        CHECK_EQ_INT(file_sink_checkpoint(s, true), -EFBIG);
        CHECK_EQ_INT(file_sink_finish(s), -EFBIG);
        /* Reported once only. */
        run_once(e);
        CHECK_EQ_INT(w.failed_calls, 1);
        s = file_sink_free(s);
        CHECK_EQ_INT(setrlimit(RLIMIT_FSIZE, &old), 0);
        close(fd);
        unlink(path);
}

/* Freeing a sink with writes queued returns promptly and leaves the fd usable. */
static void test_free_while_busy(sd_event *e, const char *dir) {
        char path[4096];
        size_t n = 4 * MiB;
        _cleanup_free_ char *data = pattern(n, 8);
        Watch w = {};
        FileSink *s = NULL;

        int fd = create_file(dir, "busy", path);
        CHECK_EQ_INT(file_sink_new(e, fd, 0, &callbacks, &w, &s), 0);
        for (size_t at = 0; at < n; at += 512 * 1024)
                if (file_sink_append(s, data + at, 512 * 1024) < 0)
                        break;
        s = file_sink_free(s);
        CHECK((fcntl(fd, F_GETFL) & O_DIRECT) == 0);
        CHECK_EQ_INT(pwrite(fd, "x", 1, 0), 1);
        close(fd);
        unlink(path);
}

/* A disk slower than the network: with every buffer waiting for the writer, the sink takes
 * nothing (all or nothing) and says when it has room again. */
static void test_pushback(sd_event *e, const char *dir) {
        char path[4096];
        size_t chunk = 300 * 1024, at = 0;
        _cleanup_free_ char *data = pattern(8 * MiB, 9);
        Watch w = {};
        FileSink *s = NULL;
        int r;

        int fd = create_file(dir, "pushback", path);
        CHECK_EQ_INT(file_sink_new(e, fd, 0, &callbacks, &w, &s), 0);
        CHECK_EQ_INT(file_sink_append(s, data, chunk), 0);
        at = chunk;
        CHECK_EQ_INT(file_sink_finish(s), chunk); /* starts nothing: no thread yet */
        CHECK_EQ_INT(file_sink_append(s, data + at, FILE_SINK_BUFFER_SIZE - chunk), 0);
        at = FILE_SINK_BUFFER_SIZE;
        CHECK(file_sink_thread_running(s));
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
        for (unsigned spins = 0; w.writable == 0 && spins < 1000; spins++)
                run_once(e);
        CHECK_EQ_INT(w.writable, 1);
        CHECK_EQ_INT(file_sink_append(s, data + at, chunk), 0);
        at += chunk;
        finish_and_compare(s, fd, path, data, at);
}

static void run_all(sd_event *e, const char *dir) {
        test_pushback(e, dir);
        test_big_stream(e, dir);
        test_small_file_no_thread(e, dir);
        test_continue_unaligned(e, dir);
        test_partial_checkpoint(e, dir);
        test_rewind(e, dir);
        test_write_failure(e, dir);
        test_free_while_busy(e, dir);
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
