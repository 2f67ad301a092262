/* SPDX-License-Identifier: LGPL-2.1-or-later */
#pragma once

/* The transfer engine: fetches one file of a job at a time into its temporary file.
 *
 * HTTP(S) runs on curl's multi socket interface driven by sd-event, so any number of transfers
 * costs no threads. Received data goes to a file sink (file-sink.h): its writer thread alone
 * touches the temporary file (large direct writes while the loop keeps receiving; truncating,
 * syncing, dating, closing); when the sink is full, curl is paused. A writer stuck for
 * StallTimeoutSec in a file system that does not answer ends the attempt with a transient error,
 * and its file is left alone until the writer returns. A checkpoint (whenever CheckpointBytes or CheckpointIntervalMSec passed) makes
 * the data durable with fdatasync() before the byte count is handed up to be recorded, so
 * recorded progress is never ahead of the disk. Resuming uses Range with If-Range; a changed remote file restarts from 0.
 * file:// and path sources are opened as the job owner and copied in bounded chunks from an
 * event source, so a large local copy never blocks the loop. */

#include <systemd/sd-event.h>

#include "config.h"
#include "file-ops.h"
#include "job.h"

typedef struct TransferEngine TransferEngine;
typedef struct Transfer Transfer;

typedef enum TransferOutcome {
        TRANSFER_DONE,       /* the file is complete and durable */
        TRANSFER_TRANSIENT,  /* job->error filled in; retry later */
        TRANSFER_FATAL,      /* job->error filled in */
} TransferOutcome;

typedef struct TransferCallbacks {
        /* The server answered and data flows (connecting -> transferring). */
        void (*connected)(Transfer *t, Job *j, void *userdata);
        /* Bytes arrived (called for every chunk: keep it cheap). */
        void (*progress)(Transfer *t, Job *j, void *userdata);
        /* file->bytes_checkpoint advanced (or went back to 0): record it. */
        void (*checkpoint)(Transfer *t, Job *j, BitsFile *f, void *userdata);
        /* Finished. The callback must call transfer_free(). retry_after: seconds the server asked for. */
        void (*finished)(Transfer *t, Job *j, BitsFile *f, TransferOutcome o, uint32_t retry_after, void *userdata);
} TransferCallbacks;

int transfer_engine_new(sd_event *e, const Config *config, FileOps *ops, const TransferCallbacks *cb,
                        void *userdata, TransferEngine **ret);
TransferEngine *transfer_engine_free(TransferEngine *e);

/* Starts fetching f (the job's next pending file) with id's credentials for the temporary file
 * and source_id's for a file:// or path source. On
 * failure to even start (e.g. the temporary file cannot be created), job->error is filled in
 * and a negative errno returned; *ret_transient tells whether retrying may help. */
int transfer_start(TransferEngine *e, Job *j, BitsFile *f, const Identity *id, const Identity *source_id,
                   Transfer **ret, bool *ret_transient);

/* Stops a running transfer: received data is flushed and made durable, the checkpoint updated
 * in memory (the caller records it), the temporary file closed. NULL is fine. */
Transfer *transfer_free(Transfer *t);

Job *transfer_job(Transfer *t);
