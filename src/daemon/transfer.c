/* SPDX-License-Identifier: LGPL-2.1-or-later */
#include <curl/curl.h>
#include <fcntl.h>
#include <inttypes.h>
#include <strings.h>
#include <sys/stat.h>

#include "file-sink.h"
#include "log.h"
#include "transfer.h"

#define CURL_BUFFER_SIZE (512L * 1024L)
#define COPY_CHUNK (8U * 1024U * 1024U)    /* file:// bytes copied per loop iteration */
#define RESTARTS_MAX 3U

/* Failures of the worker itself (stopped, hung file system, too busy): worth retrying later. */
#define IN_SET_RETRYABLE(r) ((r) == -ETIMEDOUT || (r) == -ECONNRESET || (r) == -EAGAIN || (r) == -ENOSPC || (r) == -EDQUOT || \
                             (r) == -EBUSY)

/* How long stopping a download waits for its file to be written and synced. A file system that
 * takes longer is left to the writer thread (see file_sink_close()). */
#define SINK_CLOSE_TIMEOUT_USEC (2 * USEC_PER_SEC)
/* Files whose writer is left waiting for a file system that does not answer, per user, before
 * that user's downloads are refused until one of them returns. */
#define ORPHANS_PER_USER_MAX 8U

typedef struct Orphan {
        char *temp_name;
        uid_t uid;
        FileSinkOrphan *sink;
} Orphan;

struct TransferEngine {
        sd_event *event;
        const Config *config;
        FileOps *ops;
        TransferCallbacks cb;
        void *userdata;
        CURLM *multi;
        sd_event_source *timer;
        Orphan *orphans;   /* files whose writer was left behind: not to be touched until it returns */
        size_t n_orphans;
};

struct Transfer {
        TransferEngine *engine;
        Job *job;
        BitsFile *file;
        Identity id;          /* for the temporary file */
        Identity source_id;   /* for a file:// or path source */
        int fd;                 /* the temporary file, until the sink takes it over */
        uint64_t written;       /* bytes received into the temporary file (not all durable yet) */
        FileSink *sink;         /* HTTP: where received bytes go */
        bool paused;            /* HTTP: curl paused until the sink has room */
        usec_t last_checkpoint; /* CLOCK_MONOTONIC, when the last checkpoint was asked for */
        sd_event_source *checkpoint_timer;
        bool connected;
        int local_error;        /* errno of a failed write or sync */
        unsigned restarts;

        /* HTTP */
        CURL *easy;
        struct curl_slist *headers;
        char *url;
        uint64_t range_start;   /* 0: no Range sent */
        long status;
        bool headers_done;
        bool restart;           /* abort this response and start again from 0 */
        char *etag;
        char *last_modified;
        uint64_t content_length;
        uint64_t cr_start, cr_end, cr_total;
        bool have_content_range;
        uint32_t retry_after;

        /* The file operation in flight in the owner's worker, if any. */
        FileOpsRequest *request;
        FileOp opening;
        bool retried_open;

        /* file:// */
        uint64_t src_size;
        time_t src_mtime;
};

Job *transfer_job(Transfer *t) {
        return t->job;
}

static void transfer_finish(Transfer *t, TransferOutcome o, uint32_t retry_after);
static TransferOutcome fail_local(Transfer *t, int error, const char *what);
static void engine_add_orphan(TransferEngine *e, Transfer *t, FileSinkOrphan *sink);

/* ---- writing and checkpoints ---- */

static void transfer_record_checkpoint(Transfer *t, uint64_t durable) {
        t->file->bytes_checkpoint = durable;
        t->engine->cb.checkpoint(t, t->job, t->file, t->engine->userdata);
}

/* A checkpoint without waiting: the sink's writer syncs, and its durable() records the count.
 * partial: also the bytes that do not fill a whole buffer yet. */
static int transfer_checkpoint(Transfer *t, bool partial) {
        t->last_checkpoint = now(CLOCK_MONOTONIC);
        return file_sink_checkpoint(t->sink, partial);
}

static bool checkpoint_bytes_due(Transfer *t) {
        return t->written - t->file->bytes_checkpoint >= t->engine->config->checkpoint_bytes;
}

/* The bytes-based checkpoint of a stream: whole buffers only, unless a checkpoint is wanted more
 * often than a buffer fills. */
static int transfer_stream_checkpoint(Transfer *t) {
        if (!checkpoint_bytes_due(t) || file_sink_checkpoint_pending(t->sink))
                return 0;
        return transfer_checkpoint(t, t->engine->config->checkpoint_bytes < FILE_SINK_BUFFER_SIZE);
}

static void on_sink_writable(FileSink *s, void *userdata) {
        Transfer *t = userdata;
        if (t->paused && t->easy) {
                t->paused = false;
                (void) curl_easy_pause(t->easy, CURLPAUSE_CONT); /* may call on_write() right away */
        }
}

static void on_sink_durable(FileSink *s, uint64_t offset, void *userdata) {
        Transfer *t = userdata;
        int r;

        transfer_record_checkpoint(t, offset);
        r = transfer_stream_checkpoint(t);
        if (r < 0 && t->local_error == 0)
                t->local_error = -r;
}

static void on_sink_failed(FileSink *s, int error, void *userdata) {
        Transfer *t = userdata;
        if (t->local_error == 0)
                t->local_error = error; /* on_write() refuses the next bytes: curl ends the transfer */
        on_sink_writable(s, t);
}

/* Throw away what we have and start the file from byte 0. The store learns about it right away,
 * before any new byte lands, so a crash can never splice old and new content. */
static int transfer_reset_to_zero(Transfer *t) {
        int r = file_sink_rewind(t->sink, 0); /* the writer truncates, behind what is queued */
        if (r < 0)
                return r;
        t->written = 0;
        t->file->bytes_transferred = 0;
        t->file->bytes_total = BYTES_UNKNOWN;
        if (t->file->bytes_checkpoint != 0)
                transfer_record_checkpoint(t, 0);
        return 0;
}

/* Every CheckpointIntervalMSec at least: what a slow stream received is made durable too. And a
 * file system that stops answering ends the attempt after StallTimeoutSec, like a silent server. */
static int on_checkpoint_timer(sd_event_source *s, uint64_t usec, void *userdata) {
        Transfer *t = userdata;
        const Config *c = t->engine->config;
        usec_t interval = (usec_t) c->checkpoint_interval_msec * USEC_PER_MSEC;
        usec_t due = t->last_checkpoint + interval, n = now(CLOCK_MONOTONIC);

        if (t->sink && file_sink_stuck_usec(t->sink) >= (usec_t) c->stall_timeout_sec * USEC_PER_SEC) {
                if (remote_is_local_file(t->file->remote_name))
                        (void) job_set_error(t->job, ERROR_CONTEXT_LOCAL_FILE, "errno:ETIMEDOUT", "file", (int) t->file->index,
                                             "Copying '%s' to '%s' has not returned for %u s: a file system does not answer",
                                             t->file->remote_name, t->file->temp_name, c->stall_timeout_sec);
                else
                        (void) job_set_error(t->job, ERROR_CONTEXT_LOCAL_FILE, "errno:ETIMEDOUT", remote_protocol(t->file->remote_name),
                                             (int) t->file->index, "The file system of '%s' has not answered for %u s",
                                             t->file->temp_name, c->stall_timeout_sec);
                transfer_finish(t, TRANSFER_TRANSIENT, 0); /* frees t; its writer is left behind */
                return 0;
        }

        if (due > n) {
                /* A checkpoint was asked for meanwhile: count from that one. */
                (void) sd_event_source_set_time(s, due);
                return 0;
        }
        if (t->written > t->file->bytes_checkpoint) {
                int r = transfer_checkpoint(t, true);
                if (r < 0 && t->local_error == 0)
                        t->local_error = -r; /* reported when the transfer ends */
        }
        (void) sd_event_source_set_time(s, n + interval);
        return 0;
}

/* ---- error reporting ---- */

static const char *errno_name(int e) {
        const char *n = strerrorname_np(e);
        return n ?: "EIO";
}

static TransferOutcome fail_local(Transfer *t, int error, const char *what) {
        char code[48];
        snprintf(code, sizeof(code), "errno:%s", errno_name(error));
        (void) job_set_error(t->job, ERROR_CONTEXT_LOCAL_FILE, code, remote_protocol(t->file->remote_name),
                             (int) t->file->index, "Cannot %s '%s': %s", what, t->file->temp_name, strerror(error));
        return IN_SET_RETRYABLE(-error) ? TRANSFER_TRANSIENT : TRANSFER_FATAL;
}

static const char *curl_code_name(CURLcode c) {
        switch (c) {
        case CURLE_UNSUPPORTED_PROTOCOL: return "UNSUPPORTED_PROTOCOL";
        case CURLE_URL_MALFORMAT: return "URL_MALFORMAT";
        case CURLE_COULDNT_RESOLVE_PROXY: return "COULDNT_RESOLVE_PROXY";
        case CURLE_COULDNT_RESOLVE_HOST: return "COULDNT_RESOLVE_HOST";
        case CURLE_COULDNT_CONNECT: return "COULDNT_CONNECT";
        case CURLE_WEIRD_SERVER_REPLY: return "WEIRD_SERVER_REPLY";
        case CURLE_HTTP2: return "HTTP2";
        case CURLE_PARTIAL_FILE: return "PARTIAL_FILE";
        case CURLE_HTTP_RETURNED_ERROR: return "HTTP_RETURNED_ERROR";
        case CURLE_WRITE_ERROR: return "WRITE_ERROR";
        case CURLE_READ_ERROR: return "READ_ERROR";
        case CURLE_OUT_OF_MEMORY: return "OUT_OF_MEMORY";
        case CURLE_OPERATION_TIMEDOUT: return "OPERATION_TIMEDOUT";
        case CURLE_RANGE_ERROR: return "RANGE_ERROR";
        case CURLE_SSL_CONNECT_ERROR: return "SSL_CONNECT_ERROR";
        case CURLE_TOO_MANY_REDIRECTS: return "TOO_MANY_REDIRECTS";
        case CURLE_GOT_NOTHING: return "GOT_NOTHING";
        case CURLE_SEND_ERROR: return "SEND_ERROR";
        case CURLE_RECV_ERROR: return "RECV_ERROR";
        case CURLE_PEER_FAILED_VERIFICATION: return "PEER_FAILED_VERIFICATION";
        case CURLE_SSL_CACERT_BADFILE: return "SSL_CACERT_BADFILE";
        case CURLE_BAD_CONTENT_ENCODING: return "BAD_CONTENT_ENCODING";
        case CURLE_FILESIZE_EXCEEDED: return "FILESIZE_EXCEEDED";
        case CURLE_HTTP2_STREAM: return "HTTP2_STREAM";
        case CURLE_ABORTED_BY_CALLBACK: return "ABORTED_BY_CALLBACK";
        default: return NULL;
        }
}

static bool curl_code_is_fatal(CURLcode c) {
        switch (c) {
        case CURLE_UNSUPPORTED_PROTOCOL:
        case CURLE_URL_MALFORMAT:
        case CURLE_TOO_MANY_REDIRECTS:
        case CURLE_PEER_FAILED_VERIFICATION:
        case CURLE_SSL_CACERT_BADFILE:
        case CURLE_BAD_CONTENT_ENCODING:
        case CURLE_FILESIZE_EXCEEDED:
                return true;
        default:
                return false;
        }
}

/* ---- HTTP ---- */

static void http_reset_response(Transfer *t) {
        t->status = 0;
        t->headers_done = false;
        t->etag = mfree(t->etag);
        t->last_modified = mfree(t->last_modified);
        t->content_length = BYTES_UNKNOWN;
        t->have_content_range = false;
        t->retry_after = 0;
}

static char *header_value(const char *line, size_t n, const char *name) {
        size_t k = strlen(name);
        if (n <= k + 1 || strncasecmp(line, name, k) != 0 || line[k] != ':')
                return NULL;
        const char *v = line + k + 1, *e = line + n;
        while (v < e && (*v == ' ' || *v == '\t'))
                v++;
        while (e > v && (e[-1] == '\r' || e[-1] == '\n' || e[-1] == ' ' || e[-1] == '\t'))
                e--;
        return strndup(v, (size_t) (e - v));
}

static uint32_t parse_retry_after(const char *v) {
        char *end;
        if (*v >= '0' && *v <= '9') {
                unsigned long long x = strtoull(v, &end, 10);
                return *end == '\0' ? (uint32_t) MIN(x, (unsigned long long) UINT32_MAX) : 0;
        }
        time_t when = curl_getdate(v, NULL);
        time_t t = time(NULL);
        return when > t ? (uint32_t) MIN((uint64_t) (when - t), (uint64_t) UINT32_MAX) : 0;
}

/* The body of a final 2xx response starts: decide whether it continues our bytes or replaces them. */
static void http_begin_body(Transfer *t) {
        BitsFile *f = t->file;
        int r;

        if (t->status == 206) {
                if (!t->have_content_range || t->range_start == 0 || t->cr_start != t->range_start ||
                    (f->bytes_total != BYTES_UNKNOWN && t->cr_total != f->bytes_total)) {
                        /* Not the continuation we asked for: never splice, start over. */
                        log_info("Job %s: file %u: the server's range does not continue our %" PRIu64 " bytes, restarting it from 0.",
                                 t->job->id, f->index, t->range_start);
                        t->restart = true;
                        return;
                }
                f->bytes_total = t->cr_total;
        } else {
                if (t->range_start > 0) {
                        /* If-Range did not match (or ranges are unsupported): the whole entity follows. */
                        log_info("Job %s: file %u: the remote file changed (or ignores ranges), fetching it again from 0.",
                                 t->job->id, f->index);
                        r = transfer_reset_to_zero(t);
                        if (r < 0) {
                                t->local_error = -r;
                                return;
                        }
                        t->range_start = 0;
                }
                f->bytes_total = t->content_length;
        }

        /* Remember what identifies this version of the file, for If-Range next time. A weak ETag
         * cannot be used in If-Range: fall back to the date. */
        const char *v = t->etag && strncmp(t->etag, "W/", 2) != 0 ? t->etag : t->last_modified;
        if (!streq_ptr(v, f->validator) && free_and_strdup(&f->validator, v) < 0)
                t->local_error = ENOMEM;

        if (!t->connected) {
                t->connected = true;
                t->engine->cb.connected(t, t->job, t->engine->userdata);
        }
}

static size_t on_header(char *line, size_t size, size_t n, void *userdata) {
        Transfer *t = userdata;
        char *v;

        n *= size;
        if (n >= 5 && strncmp(line, "HTTP/", 5) == 0) {
                /* A new response (after a redirect or a 100 Continue): forget the previous one. */
                http_reset_response(t);
                const char *sp = memchr(line, ' ', n);
                if (sp)
                        t->status = strtol(sp + 1, NULL, 10);
                return n;
        }
        if (n <= 2 && (line[0] == '\r' || line[0] == '\n')) {
                long code = 0;
                char *location = NULL;
                (void) curl_easy_getinfo(t->easy, CURLINFO_RESPONSE_CODE, &code);
                (void) curl_easy_getinfo(t->easy, CURLINFO_REDIRECT_URL, &location);
                if (t->status >= 100 && t->status < 200)
                        return n;
                if (t->status >= 300 && t->status < 400 && location)
                        return n; /* curl follows it */
                t->headers_done = true;
                if (t->status >= 200 && t->status < 300)
                        http_begin_body(t);
                return n;
        }
        if ((v = header_value(line, n, "ETag"))) {
                free(t->etag);
                t->etag = v;
        } else if ((v = header_value(line, n, "Last-Modified"))) {
                free(t->last_modified);
                t->last_modified = v;
        } else if ((v = header_value(line, n, "Content-Length"))) {
                char *end;
                unsigned long long x = strtoull(v, &end, 10);
                if (*v && *end == '\0')
                        t->content_length = x;
                free(v);
        } else if ((v = header_value(line, n, "Content-Range"))) {
                unsigned long long a, b, total;
                if (sscanf(v, "bytes %llu-%llu/%llu", &a, &b, &total) == 3 && a <= b && b < total) {
                        t->have_content_range = true;
                        t->cr_start = a;
                        t->cr_end = b;
                        t->cr_total = total;
                }
                free(v);
        } else if ((v = header_value(line, n, "Retry-After"))) {
                t->retry_after = parse_retry_after(v);
                free(v);
        }
        return n;
}

static size_t on_write(char *data, size_t size, size_t n, void *userdata) {
        Transfer *t = userdata;
        int r;

        n *= size;
        if (!t->headers_done || t->status < 200 || t->status >= 300)
                return n; /* an error page: not ours to keep */
        if (t->restart || t->local_error != 0)
                return 0; /* abort: curl reports CURLE_WRITE_ERROR */
        if (t->file->bytes_total != BYTES_UNKNOWN && t->written + n > t->file->bytes_total) {
                t->restart = true; /* more than the server announced */
                return 0;
        }
        r = file_sink_append(t->sink, data, n);
        if (r == -EAGAIN) {
                /* Every buffer is on its way to the disk: curl keeps these bytes until writable(). */
                t->paused = true;
                return CURL_WRITEFUNC_PAUSE;
        }
        if (r >= 0) {
                t->written = file_sink_offset(t->sink);
                t->file->bytes_transferred = t->written;
                t->engine->cb.progress(t, t->job, t->engine->userdata);
                r = transfer_stream_checkpoint(t);
        }
        if (r < 0) {
                t->local_error = -r;
                return 0;
        }
        return n;
}

static int http_setup(Transfer *t) {
        TransferEngine *e = t->engine;
        BitsFile *f = t->file;
        char range[64];

        t->easy = curl_easy_init();
        if (!t->easy)
                return -ENOMEM;
        http_reset_response(t);

        curl_easy_setopt(t->easy, CURLOPT_URL, t->url);
        curl_easy_setopt(t->easy, CURLOPT_PRIVATE, t);
        curl_easy_setopt(t->easy, CURLOPT_NOSIGNAL, 1L);
        curl_easy_setopt(t->easy, CURLOPT_PROTOCOLS_STR, "http,https");
        curl_easy_setopt(t->easy, CURLOPT_REDIR_PROTOCOLS_STR, "http,https");
        curl_easy_setopt(t->easy, CURLOPT_FOLLOWLOCATION, 1L);
        curl_easy_setopt(t->easy, CURLOPT_MAXREDIRS, 10L);
        curl_easy_setopt(t->easy, CURLOPT_BUFFERSIZE, CURL_BUFFER_SIZE);
        curl_easy_setopt(t->easy, CURLOPT_CONNECTTIMEOUT, (long) e->config->connect_timeout_sec);
        curl_easy_setopt(t->easy, CURLOPT_LOW_SPEED_LIMIT, 1L);
        curl_easy_setopt(t->easy, CURLOPT_LOW_SPEED_TIME, (long) e->config->stall_timeout_sec);
        curl_easy_setopt(t->easy, CURLOPT_FILETIME, 1L);
        curl_easy_setopt(t->easy, CURLOPT_USERAGENT, "bitsd/" PACKAGE_VERSION);
        curl_easy_setopt(t->easy, CURLOPT_HEADERFUNCTION, on_header);
        curl_easy_setopt(t->easy, CURLOPT_HEADERDATA, t);
        curl_easy_setopt(t->easy, CURLOPT_WRITEFUNCTION, on_write);
        curl_easy_setopt(t->easy, CURLOPT_WRITEDATA, t);

        /* Continue only when we can prove it is the same file: Range with If-Range. */
        t->range_start = 0;
        if (t->written > 0 && f->validator) {
                _cleanup_free_ char *hdr = NULL;
                if (asprintf(&hdr, "If-Range: %s", f->validator) < 0)
                        return -ENOMEM;
                struct curl_slist *l = curl_slist_append(NULL, hdr);
                if (!l)
                        return -ENOMEM;
                t->headers = l;
                curl_easy_setopt(t->easy, CURLOPT_HTTPHEADER, t->headers);
                snprintf(range, sizeof(range), "%" PRIu64 "-", t->written);
                curl_easy_setopt(t->easy, CURLOPT_RANGE, range);
                t->range_start = t->written;
        } else if (t->written > 0) {
                int r = transfer_reset_to_zero(t);
                if (r < 0)
                        return r;
        }

        if (curl_multi_add_handle(e->multi, t->easy) != CURLM_OK)
                return -ENOMEM;
        return 0;
}

static void http_teardown(Transfer *t) {
        t->paused = false;
        if (t->easy) {
                curl_multi_remove_handle(t->engine->multi, t->easy);
                curl_easy_cleanup(t->easy);
                t->easy = NULL;
        }
        curl_slist_free_all(t->headers);
        t->headers = NULL;
}

static void transfer_finish(Transfer *t, TransferOutcome o, uint32_t retry_after) {
        t->engine->cb.finished(t, t->job, t->file, o, retry_after, t->engine->userdata);
}

/* Did every byte arrive? A connection closed early is a transient error; what arrived is kept. */
static bool transfer_check_length(Transfer *t) {
        if (t->file->bytes_total == BYTES_UNKNOWN)
                t->file->bytes_total = t->written;
        if (t->written == t->file->bytes_total)
                return true;
        (void) job_set_error(t->job, ERROR_CONTEXT_TRANSPORT, "curl:PARTIAL_FILE", remote_protocol(t->file->remote_name),
                             (int) t->file->index, "Connection closed after %" PRIu64 " of %" PRIu64 " bytes of '%s'",
                             t->written, t->file->bytes_total, t->file->remote_name);
        return false;
}

/* The attempt ends early, but what arrived is good: the sink writes it out, syncs and closes
 * (waiting a bounded time), and the count is recorded as progress. */
static void transfer_keep_received(Transfer *t) {
        FileSinkOrphan *orphan = NULL;

        if (!t->sink)
                return;
        int64_t d = file_sink_close(t->sink, SINK_CLOSE_TIMEOUT_USEC, &orphan);
        t->sink = NULL;
        if (orphan)
                engine_add_orphan(t->engine, t, orphan);
        if (d >= 0 && (uint64_t) d != t->file->bytes_checkpoint)
                transfer_record_checkpoint(t, (uint64_t) d);
}

/* HTTP: the response is complete. The writer makes the file durable and dates it like the remote
 * file; on_sink_completed() records it. */
static void http_complete_file(Transfer *t, time_t mtime) {
        if (!transfer_check_length(t)) {
                transfer_keep_received(t);
                transfer_finish(t, TRANSFER_TRANSIENT, 0);
                return;
        }
        int r = file_sink_complete(t->sink, mtime);
        if (r < 0)
                transfer_finish(t, fail_local(t, -r, "write"), 0);
}

static void on_sink_completed(FileSink *s, int64_t result, void *userdata) {
        Transfer *t = userdata;

        if (result < 0) {
                transfer_finish(t, fail_local(t, (int) -result, "write"), 0);
                return;
        }
        /* Recorded as complete, a zero-length file too. */
        transfer_record_checkpoint(t, (uint64_t) result);
        transfer_finish(t, TRANSFER_DONE, 0);
}

static void http_done(Transfer *t, CURLcode result) {
        BitsFile *f = t->file;
        const char *proto = remote_protocol(f->remote_name);
        int r;

        if (t->restart && t->local_error == 0) {
                if (++t->restarts > RESTARTS_MAX) {
                        (void) job_set_error(t->job, ERROR_CONTEXT_REMOTE_FILE, "bits:RemoteFileChanged", proto, (int) f->index,
                                             "'%s' keeps changing while it is downloaded", f->remote_name);
                        transfer_finish(t, TRANSFER_TRANSIENT, 0);
                        return;
                }
                http_teardown(t);
                t->restart = false;
                r = transfer_reset_to_zero(t);
                if (r >= 0)
                        r = http_setup(t);
                if (r < 0)
                        transfer_finish(t, fail_local(t, -r, "restart"), 0);
                return;
        }
        if (t->local_error != 0) {
                transfer_finish(t, fail_local(t, t->local_error, "write"), 0);
                return;
        }
        if (result == CURLE_OK && t->status >= 200 && t->status < 300) {
                curl_off_t ft = -1;
                (void) curl_easy_getinfo(t->easy, CURLINFO_FILETIME_T, &ft);
                http_complete_file(t, ft > 0 ? (time_t) ft : 0);
                return;
        }

        /* Whatever we received is still good: keep it. */
        transfer_keep_received(t);

        if (result == CURLE_OK) {
                char code[16];
                bool transient = http_status_is_transient(t->status);
                snprintf(code, sizeof(code), "http:%ld", t->status);
                (void) job_set_error(t->job, ERROR_CONTEXT_REMOTE_FILE, code, proto, (int) f->index,
                                     "The server answered HTTP %ld for '%s'", t->status, f->remote_name);
                transfer_finish(t, transient ? TRANSFER_TRANSIENT : TRANSFER_FATAL, t->retry_after);
                return;
        }

        char code[64];
        const char *name = curl_code_name(result);
        if (name)
                snprintf(code, sizeof(code), "curl:%s", name);
        else
                snprintf(code, sizeof(code), "curl:%d", (int) result);
        (void) job_set_error(t->job, ERROR_CONTEXT_TRANSPORT, code, proto, (int) f->index,
                             "Transfer of '%s' failed: %s", f->remote_name, curl_easy_strerror(result));
        transfer_finish(t, curl_code_is_fatal(result) ? TRANSFER_FATAL : TRANSFER_TRANSIENT, 0);
}

static void engine_check_messages(TransferEngine *e) {
        CURLMsg *msg;
        int left;
        while ((msg = curl_multi_info_read(e->multi, &left))) {
                Transfer *t = NULL;
                if (msg->msg != CURLMSG_DONE)
                        continue;
                (void) curl_easy_getinfo(msg->easy_handle, CURLINFO_PRIVATE, (char **) &t);
                if (t)
                        http_done(t, msg->data.result);
        }
}

static int on_curl_io(sd_event_source *s, int fd, uint32_t revents, void *userdata) {
        TransferEngine *e = userdata;
        int action = 0, running;

        if (revents & (EPOLLIN | EPOLLHUP))
                action |= CURL_CSELECT_IN;
        if (revents & EPOLLOUT)
                action |= CURL_CSELECT_OUT;
        if (revents & EPOLLERR)
                action |= CURL_CSELECT_ERR;
        (void) curl_multi_socket_action(e->multi, fd, action, &running);
        engine_check_messages(e);
        return 0;
}

static int on_curl_timer(sd_event_source *s, uint64_t usec, void *userdata) {
        TransferEngine *e = userdata;
        int running;
        (void) curl_multi_socket_action(e->multi, CURL_SOCKET_TIMEOUT, 0, &running);
        engine_check_messages(e);
        return 0;
}

static int curl_socket_cb(CURL *easy, curl_socket_t fd, int what, void *userp, void *socketp) {
        TransferEngine *e = userp;
        sd_event_source *io = socketp;
        uint32_t events = 0;

        if (what == CURL_POLL_REMOVE) {
                if (io) {
                        sd_event_source_disable_unref(io);
                        curl_multi_assign(e->multi, fd, NULL);
                }
                return 0;
        }
        if (what & CURL_POLL_IN)
                events |= EPOLLIN;
        if (what & CURL_POLL_OUT)
                events |= EPOLLOUT;
        if (io)
                return sd_event_source_set_io_events(io, events) < 0 ? -1 : 0;
        if (sd_event_add_io(e->event, &io, fd, events, on_curl_io, e) < 0)
                return -1;
        (void) sd_event_source_set_description(io, "curl-io");
        curl_multi_assign(e->multi, fd, io);
        return 0;
}

static int curl_timer_cb(CURLM *multi, long timeout_ms, void *userp) {
        TransferEngine *e = userp;
        if (timeout_ms < 0)
                return sd_event_source_set_enabled(e->timer, SD_EVENT_OFF) < 0 ? -1 : 0;
        if (sd_event_source_set_time_relative(e->timer, (usec_t) timeout_ms * USEC_PER_MSEC) < 0 ||
            sd_event_source_set_enabled(e->timer, SD_EVENT_ONESHOT) < 0)
                return -1;
        return 0;
}

/* ---- file:// and path sources ---- */

/* The next chunk of a local copy, carried out by the sink's writer; or, at the end, the file made
 * durable and dated like the source (on_sink_completed() finishes). */
static void file_copy_next(Transfer *t) {
        uint64_t left = t->src_size - t->written;
        int r;

        if (left == 0)
                r = file_sink_complete(t->sink, t->src_mtime);
        else
                r = file_sink_copy(t->sink, (size_t) MIN(left, (uint64_t) COPY_CHUNK));
        if (r < 0)
                transfer_finish(t, fail_local(t, -r, "write"), 0);
}

static void on_sink_copied(FileSink *s, int64_t n, bool write_failed, void *userdata) {
        Transfer *t = userdata;
        int r;

        if (n < 0 && write_failed) {
                transfer_finish(t, fail_local(t, (int) -n, "write"), 0);
                return;
        }
        if (n < 0) {
                int error = (int) -n;
                char code[48];
                snprintf(code, sizeof(code), "errno:%s", errno_name(error));
                (void) job_set_error(t->job, ERROR_CONTEXT_REMOTE_FILE, code, "file", (int) t->file->index,
                                     "Cannot read '%s': %s", t->file->remote_name, strerror(error));
                transfer_finish(t, IN_SET_RETRYABLE(n) ? TRANSFER_TRANSIENT : TRANSFER_FATAL, 0);
                return;
        }
        if (n == 0) {
                (void) job_set_error(t->job, ERROR_CONTEXT_REMOTE_FILE, "bits:RemoteFileChanged", "file", (int) t->file->index,
                                     "'%s' shrank while it was copied", t->file->remote_name);
                transfer_finish(t, TRANSFER_TRANSIENT, 0);
                return;
        }
        t->written = file_sink_offset(s);
        t->file->bytes_transferred = t->written;
        t->engine->cb.progress(t, t->job, t->engine->userdata);
        r = transfer_stream_checkpoint(t);
        if (r < 0) {
                transfer_finish(t, fail_local(t, -r, "sync"), 0);
                return;
        }
        file_copy_next(t);
}

/* The writer looked at the source: size it, decide whether our bytes still belong to it, copy. */
static void on_sink_source_ready(FileSink *s, int error, const struct stat *st, void *userdata) {
        Transfer *t = userdata;
        BitsFile *f = t->file;
        char validator[128];
        int r;

        if (error != 0) {
                transfer_finish(t, fail_local(t, error, "prepare"), 0);
                return;
        }
        /* The same identity as a Last-Modified: size, inode and modification time. */
        snprintf(validator, sizeof(validator), "file:%" PRIu64 ":%" PRIu64 ":%" PRIu64 ":%" PRId64 ".%09ld",
                 (uint64_t) st->st_dev, (uint64_t) st->st_ino, (uint64_t) st->st_size,
                 (int64_t) st->st_mtim.tv_sec, st->st_mtim.tv_nsec);
        r = 0;
        if (t->written > 0 && (!streq_ptr(f->validator, validator) || t->written > (uint64_t) st->st_size))
                r = transfer_reset_to_zero(t);
        if (r >= 0 && free_and_strdup(&f->validator, validator) < 0)
                r = -ENOMEM;
        if (r < 0) {
                transfer_finish(t, fail_local(t, -r, "prepare"), 0);
                return;
        }
        t->src_size = (uint64_t) st->st_size;
        t->src_mtime = st->st_mtim.tv_sec;
        f->bytes_total = t->src_size;

        t->connected = true;
        t->engine->cb.connected(t, t->job, t->engine->userdata);
        file_copy_next(t);
}

static void on_source_opened(FileOpsRequest *req, int result, void *userdata) {
        Transfer *t = userdata;
        BitsFile *f = t->file;
        int r;

        t->request = NULL;
        if (result < 0) {
                char code[48];
                _cleanup_free_ char *path = NULL;
                (void) remote_local_path(f->remote_name, &path);
                snprintf(code, sizeof(code), "errno:%s", errno_name(-result));
                (void) job_set_error(t->job, ERROR_CONTEXT_REMOTE_FILE, code, "file", (int) f->index,
                                     "Cannot open '%s' as uid %u: %s", strempty(path), (unsigned) t->source_id.uid,
                                     strerror(-result));
                transfer_finish(t, IN_SET_RETRYABLE(result) ? TRANSFER_TRANSIENT : TRANSFER_FATAL, 0);
                return;
        }
        /* From here on only the writer touches the source too. */
        r = file_sink_set_source(t->sink, result);
        if (r < 0) {
                safe_close(result);
                transfer_finish(t, fail_local(t, -r, "prepare"), 0);
        }
}

/* The temporary file was cut back to keep bytes (the last checkpoint, or 0 if the file turned out
 * shorter than recorded): continue from there. */
static void transfer_continue_at(Transfer *t, uint64_t keep) {
        BitsFile *f = t->file;
        if (keep != f->bytes_checkpoint) {
                log_info("Job %s: file %u: temporary file is shorter than recorded, starting it again.", t->job->id, f->index);
                transfer_record_checkpoint(t, 0);
        }
        t->written = keep;
        f->bytes_transferred = keep;
}

/* The writer cut the file back to the last checkpoint: fetch (or copy) the rest. */
static void on_sink_prepared(FileSink *s, int64_t offset, void *userdata) {
        Transfer *t = userdata;
        BitsFile *f = t->file;
        int r;

        if (offset < 0) {
                transfer_finish(t, fail_local(t, (int) -offset, "start"), 0);
                return;
        }
        transfer_continue_at(t, (uint64_t) offset);
        if (remote_is_local_file(f->remote_name)) {
                _cleanup_free_ char *path = NULL;
                r = remote_local_path(f->remote_name, &path);
                if (r >= 0)
                        r = file_ops_submit(t->engine->ops, &t->source_id, FILE_OP_OPEN_READ, path, NULL, on_source_opened, t,
                                            &t->request);
        } else {
                t->url = strdup(f->remote_name);
                r = t->url ? http_setup(t) : -ENOMEM;
        }
        if (r < 0)
                transfer_finish(t, fail_local(t, -r, "start"), 0);
}

/* The temporary file is open: it goes to a sink, whose writer alone touches it from now on. */
static int temp_ready(Transfer *t) {
        TransferEngine *e = t->engine;
        static const FileSinkCallbacks sink_callbacks = {
                .prepared = on_sink_prepared,
                .writable = on_sink_writable,
                .durable = on_sink_durable,
                .completed = on_sink_completed,
                .failed = on_sink_failed,
                .source_ready = on_sink_source_ready,
                .copied = on_sink_copied,
        };
        int r;

        r = sd_event_add_time_relative(e->event, &t->checkpoint_timer, CLOCK_MONOTONIC,
                                       (usec_t) e->config->checkpoint_interval_msec * USEC_PER_MSEC, 0,
                                       on_checkpoint_timer, t);
        if (r < 0)
                return r;
        (void) sd_event_source_set_enabled(t->checkpoint_timer, SD_EVENT_ON);

        r = file_sink_new(e->event, t->fd, &sink_callbacks, t, &t->sink);
        if (r < 0)
                return r;
        t->fd = -EBADF; /* the sink's now */
        return file_sink_prepare(t->sink, t->file->bytes_checkpoint);
}

/* Opening the temporary file as the owner: reopen it to continue after a checkpoint, create it
 * otherwise; a file already at our name with nothing recorded is ours from before a crash. */
static void on_temp_opened(FileOpsRequest *req, int result, void *userdata) {
        Transfer *t = userdata;
        TransferEngine *e = t->engine;
        BitsFile *f = t->file;
        int r;

        t->request = NULL;
        if (result == -ENOENT && t->opening == FILE_OP_OPEN_WRITE && f->bytes_checkpoint > 0) {
                f->bytes_checkpoint = f->bytes_transferred = 0;
                t->opening = FILE_OP_CREATE;
        } else if (result == -EEXIST && t->opening == FILE_OP_CREATE && f->bytes_checkpoint == 0 && !t->retried_open) {
                t->opening = FILE_OP_OPEN_WRITE;
                t->retried_open = true;
        } else if (result < 0) {
                transfer_finish(t, fail_local(t, -result, "open the temporary file"), 0);
                return;
        } else {
                t->fd = result;
                f->temp_created = true;
                r = temp_ready(t);
                if (r < 0)
                        transfer_finish(t, fail_local(t, -r, "start"), 0);
                return;
        }
        r = file_ops_submit(e->ops, &t->id, t->opening, f->temp_name, NULL, on_temp_opened, t, &t->request);
        if (r < 0)
                transfer_finish(t, fail_local(t, -r, "open the temporary file"), 0);
}

/* ---- writers left behind ---- */

static void engine_prune_orphans(TransferEngine *e) {
        size_t k = 0;
        for (size_t i = 0; i < e->n_orphans; i++) {
                Orphan *o = &e->orphans[i];
                if (file_sink_orphan_done(o->sink)) {
                        log_info("The writer left behind on '%s' has returned.", o->temp_name);
                        free(o->temp_name);
                        file_sink_orphan_unref(o->sink);
                } else
                        e->orphans[k++] = *o;
        }
        e->n_orphans = k;
}

/* A file whose writer was left behind is not touched until that writer returned (it could still
 * write or truncate). A user with many such files gets no new downloads for now: each one holds a
 * thread. */
static bool engine_file_busy(TransferEngine *e, const char *temp_name, uid_t uid, bool *ret_this_file) {
        unsigned of_user = 0;

        engine_prune_orphans(e);
        *ret_this_file = false;
        for (size_t i = 0; i < e->n_orphans; i++) {
                if (streq(e->orphans[i].temp_name, temp_name)) {
                        *ret_this_file = true;
                        return true;
                }
                if (e->orphans[i].uid == uid)
                        of_user++;
        }
        return of_user >= ORPHANS_PER_USER_MAX;
}

static void engine_add_orphan(TransferEngine *e, Transfer *t, FileSinkOrphan *sink) {
        Orphan *n = reallocarray(e->orphans, e->n_orphans + 1, sizeof(Orphan));
        char *name = strdup(t->file->temp_name);

        if (n)
                e->orphans = n;
        if (!n || !name) {
                log_error("Job %s: out of memory: cannot keep track of the writer left behind on '%s'.", t->job->id,
                          t->file->temp_name);
                free(name);
                file_sink_orphan_unref(sink);
                return;
        }
        e->orphans[e->n_orphans++] = (Orphan) { .temp_name = name, .uid = t->id.uid, .sink = sink };
        log_warning("Job %s: the file system of '%s' does not answer: its writer is left behind, the file is not "
                    "touched until it returns.", t->job->id, t->file->temp_name);
}

int transfer_start(TransferEngine *e, Job *j, BitsFile *f, const Identity *id, const Identity *source_id,
                   Transfer **ret, bool *ret_transient) {
        Transfer *t;
        int r;

        *ret_transient = false;
        t = calloc(1, sizeof(Transfer));
        if (!t)
                return -ENOMEM;
        *t = (Transfer) {
                .engine = e, .job = j, .file = f, .id = *id, .source_id = *source_id, .fd = -EBADF,
                .last_checkpoint = now(CLOCK_MONOTONIC),
                .opening = f->bytes_checkpoint > 0 ? FILE_OP_OPEN_WRITE : FILE_OP_CREATE,
        };

        bool this_file;
        if (engine_file_busy(e, f->temp_name, id->uid, &this_file)) {
                *ret_transient = true;
                if (this_file)
                        (void) job_set_error(j, ERROR_CONTEXT_LOCAL_FILE, "errno:EBUSY", remote_protocol(f->remote_name),
                                             (int) f->index, "An earlier write to '%s' has not returned: its file system does not answer",
                                             f->temp_name);
                else
                        (void) job_set_error(j, ERROR_CONTEXT_LOCAL_FILE, "errno:EBUSY", remote_protocol(f->remote_name),
                                             (int) f->index, "%u earlier writes of uid %u have not returned: their file systems do not answer",
                                             ORPHANS_PER_USER_MAX, (unsigned) id->uid);
                transfer_free(t);
                return -EBUSY;
        }

        /* Everything that touches the file system happens in the owner's worker, answered later. */
        r = file_ops_submit(e->ops, &t->id, t->opening, f->temp_name, NULL, on_temp_opened, t, &t->request);
        if (r < 0) {
                *ret_transient = IN_SET_RETRYABLE(r);
                (void) fail_local(t, -r, "open the temporary file");
                transfer_free(t);
                return r;
        }
        *ret = t;
        return 0;
}

Transfer *transfer_free(Transfer *t) {
        if (!t)
                return NULL;
        t->request = file_ops_request_cancel(t->request);
        http_teardown(t);
        t->checkpoint_timer = sd_event_source_disable_unref(t->checkpoint_timer);
        /* Keep every byte received: written out and made durable (the caller records it). */
        if (t->sink) {
                FileSinkOrphan *orphan = NULL;
                int64_t d = file_sink_close(t->sink, SINK_CLOSE_TIMEOUT_USEC, &orphan);
                t->sink = NULL;
                if (d >= 0)
                        t->file->bytes_checkpoint = (uint64_t) d;
                if (orphan)
                        engine_add_orphan(t->engine, t, orphan);
        }
        /* What is not durable does not count. */
        t->file->bytes_transferred = t->file->bytes_checkpoint;
        safe_close(t->fd);
        free(t->url);
        free(t->etag);
        free(t->last_modified);
        return mfree(t);
}

int transfer_engine_new(sd_event *event, const Config *config, FileOps *ops, const TransferCallbacks *cb,
                        void *userdata, TransferEngine **ret) {
        TransferEngine *e;
        int r;

        e = calloc(1, sizeof(TransferEngine));
        if (!e)
                return -ENOMEM;
        *e = (TransferEngine) {
                .event = sd_event_ref(event), .config = config, .ops = ops, .cb = *cb, .userdata = userdata,
        };
        e->multi = curl_multi_init();
        if (!e->multi) {
                transfer_engine_free(e);
                return -ENOMEM;
        }
        curl_multi_setopt(e->multi, CURLMOPT_SOCKETFUNCTION, curl_socket_cb);
        curl_multi_setopt(e->multi, CURLMOPT_SOCKETDATA, e);
        curl_multi_setopt(e->multi, CURLMOPT_TIMERFUNCTION, curl_timer_cb);
        curl_multi_setopt(e->multi, CURLMOPT_TIMERDATA, e);

        r = sd_event_add_time(event, &e->timer, CLOCK_MONOTONIC, UINT64_MAX, 0, on_curl_timer, e);
        if (r < 0) {
                transfer_engine_free(e);
                return r;
        }
        (void) sd_event_source_set_enabled(e->timer, SD_EVENT_OFF);
        (void) sd_event_source_set_description(e->timer, "curl-timer");
        *ret = e;
        return 0;
}

TransferEngine *transfer_engine_free(TransferEngine *e) {
        if (!e)
                return NULL;
        for (size_t i = 0; i < e->n_orphans; i++) {
                free(e->orphans[i].temp_name);
                file_sink_orphan_unref(e->orphans[i].sink);
        }
        free(e->orphans);
        if (e->multi)
                curl_multi_cleanup(e->multi);
        sd_event_source_disable_unref(e->timer);
        sd_event_unref(e->event);
        return mfree(e);
}
