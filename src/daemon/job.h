/* SPDX-License-Identifier: LGPL-2.1-or-later */
#pragma once

/* The job model: plain data, the state machine, validation and retry arithmetic. Nothing here
 * talks to the bus, the network or the database, so unit tests drive it directly. */

#include <stdbool.h>
#include <stdint.h>
#include <sys/types.h>

#include "macro.h"
#include "time-util.h"

typedef enum JobState {
        JOB_SUSPENDED,
        JOB_QUEUED,
        JOB_CONNECTING,
        JOB_TRANSFERRING,
        JOB_TRANSIENT_ERROR,
        JOB_ERROR,
        JOB_TRANSFERRED,
        JOB_ACKNOWLEDGED,
        JOB_CANCELLED,
        _JOB_STATE_MAX,
        _JOB_STATE_INVALID = -EINVAL,
} JobState;

typedef enum JobType {
        JOB_DOWNLOAD,
        JOB_UPLOAD,
        JOB_UPLOAD_REPLY,
        _JOB_TYPE_MAX,
        _JOB_TYPE_INVALID = -EINVAL,
} JobType;

/* Ordered from most to least urgent, so a smaller value runs first. */
typedef enum JobPriority {
        JOB_PRIORITY_FOREGROUND,
        JOB_PRIORITY_HIGH,
        JOB_PRIORITY_NORMAL,
        JOB_PRIORITY_LOW,
        _JOB_PRIORITY_MAX,
        _JOB_PRIORITY_INVALID = -EINVAL,
} JobPriority;

typedef enum ErrorContext {
        ERROR_CONTEXT_NONE,
        ERROR_CONTEXT_UNKNOWN,
        ERROR_CONTEXT_QUEUE_MANAGER,
        ERROR_CONTEXT_NOTIFICATION,
        ERROR_CONTEXT_LOCAL_FILE,
        ERROR_CONTEXT_REMOTE_FILE,
        ERROR_CONTEXT_TRANSPORT,
        ERROR_CONTEXT_REMOTE_APPLICATION,
        _ERROR_CONTEXT_MAX,
        _ERROR_CONTEXT_INVALID = -EINVAL,
} ErrorContext;

typedef enum JobEvent {
        JOB_EVENT_RESUME,
        JOB_EVENT_SUSPEND,
        JOB_EVENT_CANCEL,
        JOB_EVENT_COMPLETE,
        JOB_EVENT_START,          /* the scheduler picked it */
        JOB_EVENT_CONNECTED,      /* the server answered with data */
        JOB_EVENT_PREEMPT,        /* stopped to let another job run, or the owner left */
        JOB_EVENT_TRANSFERRED,    /* the last file is done */
        JOB_EVENT_TRANSIENT_ERROR,
        JOB_EVENT_FATAL_ERROR,
        JOB_EVENT_RETRY,          /* retry delay over */
        _JOB_EVENT_MAX,
} JobEvent;

const char *job_state_to_string(JobState s) _pure_;
JobState job_state_from_string(const char *s) _pure_;
const char *job_type_to_string(JobType t) _pure_;
JobType job_type_from_string(const char *s) _pure_;
const char *job_priority_to_string(JobPriority p) _pure_;
JobPriority job_priority_from_string(const char *s) _pure_;
const char *error_context_to_string(ErrorContext c) _pure_;
ErrorContext error_context_from_string(const char *s) _pure_;

static inline bool job_state_is_final(JobState s) {
        return s == JOB_ACKNOWLEDGED || s == JOB_CANCELLED;
}
static inline bool job_state_is_active(JobState s) {
        return s == JOB_CONNECTING || s == JOB_TRANSFERRING;
}

/* The state the job moves to on an event, or -EBUSY when the event is not allowed in this state
 * (InvalidState on the bus). has_pending_files: the job has files not yet transferred. A result
 * equal to `from` means "allowed, nothing changes". */
int job_state_next(JobState from, JobEvent event, bool has_pending_files);

/* Defaults and limits (BITS values). */
#define JOB_DISPLAY_NAME_MAX 256U
#define JOB_DESCRIPTION_MAX 1024U
#define JOB_URL_MAX 2200U
#define JOB_PATH_MAX 4095U
#define JOB_NOTIFY_FLAGS_DEFAULT 0x3U
#define JOB_NOTIFY_FLAGS_VALID 0x3fU
#define JOB_MIN_RETRY_DELAY_DEFAULT 600U
#define JOB_MIN_RETRY_DELAY_MIN 5U
#define JOB_NO_PROGRESS_TIMEOUT_DEFAULT 1209600U
#define JOB_MAX_DOWNLOAD_TIME_DEFAULT 7776000U
#define JOB_NOTIFY_INTERVAL_DEFAULT_MSEC 500U
#define HELPER_TOKEN_LOCAL_FILE 0x1U
#define HELPER_TOKEN_NETWORK 0x2U
#define HELPER_TOKEN_FLAGS_VALID 0x3U
#define BYTES_UNKNOWN UINT64_MAX

typedef struct JobErrorInfo {
        ErrorContext context;
        char *code;       /* "http:404", "curl:COULDNT_CONNECT", "errno:ENOSPC", "bits:<Name>" */
        char *message;
        char *protocol;   /* "http", "https", "file" or "" */
        int file_index;   /* -1 when the error concerns no file */
} JobErrorInfo;

void job_error_info_clear(JobErrorInfo *e);

typedef struct Job Job;

typedef struct BitsFile {
        Job *job;
        unsigned index;
        char *remote_name;
        char *local_name;
        char *temp_name;
        uint64_t bytes_total;        /* BYTES_UNKNOWN until the server said */
        uint64_t bytes_transferred;  /* received so far (live) */
        uint64_t bytes_checkpoint;   /* durable on disk and recorded in the store */
        bool completed;              /* renamed to local_name by Complete */
        bool temp_created;           /* the temporary file may exist on disk */
        char *validator;             /* ETag or Last-Modified (If-Range), or a file source's identity */
} BitsFile;

struct Job {
        void *manager;               /* back pointer for the layer that owns jobs */
        char id[37];                 /* canonical lowercase UUID */
        char hex[33];                /* the same without dashes: object path component */
        char *object_path;
        JobType type;
        JobState state;
        uid_t owner;
        char *display_name;
        char *description;
        JobPriority priority;
        uint32_t notify_flags;
        uint32_t minimum_retry_delay;
        uint32_t no_progress_timeout;
        uint32_t maximum_download_time;
        uint32_t minimum_notification_interval_msec;
        usec_t creation_time;
        usec_t modification_time;
        usec_t transfer_completion_time;
        uint32_t error_count;
        JobErrorInfo error;

        BitsFile **files;
        unsigned n_files;

        /* SetNotifyCmdLine(): program ("" = none) and argv, run as notify_uid. */
        char *notify_program;
        char **notify_argv;
        uid_t notify_uid;

        /* HelperTokenFlags: which work uses the helper token's identity (not the token itself,
         * which is never stored). */
        uint32_t helper_token_flags;

        /* Retry bookkeeping, in CLOCK_REALTIME µs so it survives restarts. */
        usec_t no_progress_since;    /* first transient error without progress since, or 0 */
        usec_t retry_time;           /* when a transient-error job goes back to queued, or 0 */
        usec_t active_usec;          /* time spent connecting/transferring since the last Resume */

        /* Runtime only. */
        usec_t active_since;         /* CLOCK_MONOTONIC when it became active, or 0 */
        usec_t queued_seq;           /* order in which jobs were queued, for fairness */
        usec_t final_time;           /* CLOCK_MONOTONIC when it became final */
        void *runtime;               /* owned by the layer that runs jobs */
};

Job *job_new(const char *id, JobType type, uid_t owner, usec_t now_realtime);
Job *job_free(Job *j);
DEFINE_TRIVIAL_CLEANUP_FUNC(Job *, job_free);

BitsFile *bits_file_new(const char *remote, const char *local, const char *temp);
BitsFile *bits_file_free(BitsFile *f);
DEFINE_TRIVIAL_CLEANUP_FUNC(BitsFile *, bits_file_free);

/* Appends files (the job takes ownership of all or, on -ENOMEM, of none). */
int job_append_files(Job *j, BitsFile **files, unsigned n);
/* The first file that is not fully transferred, or NULL. */
BitsFile *job_next_pending_file(const Job *j);
bool bits_file_is_transferred(const BitsFile *f);
uint64_t job_bytes_total(const Job *j);
uint64_t job_bytes_transferred(const Job *j);
unsigned job_files_transferred(const Job *j);
int job_set_error(Job *j, ErrorContext ctx, const char *code, const char *protocol, int file_index,
                  const char *format, ...) _printf_(6, 7);

/* UUIDs. */
int id_generate(char ret[static 37]);
/* Accepts canonical, {braced} and 32 bare hex digits, any case; writes the canonical form. */
int id_normalize(const char *s, char ret[static 37]);
void id_to_hex(const char id[static 37], char ret[static 33]);
int id_from_hex(const char *hex, char ret[static 37]);

/* Validation. Each returns 0 or a negative errno and, on error, a message naming the value
 * (caller frees). -EINVAL: malformed; -E2BIG: too long; -EPROTONOSUPPORT: unsupported scheme. */
int validate_display_name(const char *s, unsigned max_chars, char **ret_message);
int validate_remote_name(const char *s, char **ret_message);
int validate_local_path(const char *s, char **ret_message);
/* For a validated remote name: is it served from the local file system (file:// or a path)? */
bool remote_is_local_file(const char *remote);
/* The local path a file:// URL or bare path points to (percent-decoded). */
int remote_local_path(const char *remote, char **ret);
/* "http", "https" or "file". */
const char *remote_protocol(const char *remote);
size_t utf8_length(const char *s);
/* A user value quoted for an error message: escaped, bounded, still valid UTF-8. */
const char *value_for_message(const char *s, char *buf, size_t size);

/* Retry arithmetic for a transient error at `now` (all CLOCK_REALTIME µs, delays in seconds).
 * Sets *ret_fatal when the job must go to error instead (no-progress timeout used up, or the
 * retry delay is longer than the timeout). Otherwise *ret_retry_at is when to retry and
 * *ret_give_up_at when the no-progress timeout ends (the job goes to error then, if it had not
 * progressed). `no_progress_since` is updated (set to now on the first error). */
void job_retry_plan(usec_t now, usec_t *no_progress_since, uint32_t min_retry_delay, uint32_t no_progress_timeout,
                    uint32_t retry_after, bool *ret_fatal, usec_t *ret_retry_at, usec_t *ret_give_up_at);

/* In mountinfo text (the format of /proc/self/mountinfo), the mount point of the FUSE file system
 * mounted by `uid` (option user_id=) that contains path, if any: 1 and *ret_mount_point (caller
 * frees), 0 when there is none. Such a mount is seen differently, or not at all, by other users. */
int mountinfo_fuse_of_user(const char *mountinfo, const char *path, uid_t uid, char **ret_mount_point);

/* HTTP status classification for downloads: true when retrying may help. */
bool http_status_is_transient(long status);
