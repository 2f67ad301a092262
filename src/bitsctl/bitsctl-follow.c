/* SPDX-License-Identifier: LGPL-2.1-or-later */

#include <signal.h>
#include <systemd/sd-event.h>

#include "bitsctl-follow.h"
#include "bitsctl-format.h"
#include "bitsctl.h"
#include "macro.h"
#include "time-util.h"

/* The API has no property-change signals (EmitsChangedSignal=false), so we poll. */
#define POLL_INTERVAL_USEC (250 * USEC_PER_MSEC)
#define PLAIN_LINE_INTERVAL_USEC USEC_PER_SEC
/* The rate is measured over the last ~2 s of samples. */
#define RATE_SAMPLES 9

typedef struct Sample {
        usec_t time;
        uint64_t bytes;
} Sample;

typedef struct Follow {
        sd_bus *bus;
        const char *path;
        bool show_progress;
        bool tty;

        char *state;
        uint64_t bytes_transferred;
        uint64_t bytes_total;

        Sample samples[RATE_SAMPLES];
        size_t n_samples;

        bool line_shown;          /* a '\r' line is on the terminal and needs a newline */
        usec_t last_plain;        /* when the last plain line was printed */
        char last_plain_text[256];

        bool interrupted;
        int error;                /* negative errno of a failed poll */
} Follow;


static void follow_add_sample(Follow *f, usec_t t, uint64_t bytes) {
        /* Bytes going backwards means a restart from scratch (e.g. the remote file changed):
         * the old samples say nothing about the new rate. */
        if (f->n_samples > 0 && bytes < f->samples[f->n_samples - 1].bytes)
                f->n_samples = 0;

        if (f->n_samples == RATE_SAMPLES) {
                memmove(f->samples, f->samples + 1, sizeof(Sample) * (RATE_SAMPLES - 1));
                f->n_samples--;
        }
        f->samples[f->n_samples++] = (Sample) { .time = t, .bytes = bytes };
}

static uint64_t follow_rate(const Follow *f) {
        const Sample *a, *b;

        if (f->n_samples < 2)
                return UINT64_MAX;

        a = &f->samples[0];
        b = &f->samples[f->n_samples - 1];
        if (b->time <= a->time)
                return UINT64_MAX;

        return (uint64_t) ((double) (b->bytes - a->bytes) * USEC_PER_SEC / (double) (b->time - a->time));
}

static void follow_format_line(const Follow *f, char *buf, size_t l) {
        char percent[16], done[FORMAT_BYTES_MAX], total[FORMAT_BYTES_MAX], rate[FORMAT_BYTES_MAX];
        uint64_t r = follow_rate(f);

        if (r == UINT64_MAX)
                snprintf(rate, sizeof rate, "-");
        else {
                char b[FORMAT_BYTES_MAX];
                snprintf(rate, sizeof rate, "%s/s", format_bytes(b, sizeof b, r));
        }

        snprintf(buf, l, "%6s  %s / %s  %s  %s",
                 format_percent(percent, sizeof percent, f->bytes_transferred, f->bytes_total),
                 format_bytes(done, sizeof done, f->bytes_transferred),
                 format_bytes(total, sizeof total, f->bytes_total),
                 rate,
                 strempty(f->state));
}

static void follow_show(Follow *f, usec_t t, bool force) {
        char line[256];

        if (!f->show_progress)
                return;

        follow_format_line(f, line, sizeof line);

        if (f->tty) {
                /* \033[K clears what a longer previous line left behind. */
                fprintf(stderr, "\r%s\033[K", line);
                fflush(stderr);
                f->line_shown = true;
                return;
        }

        /* Plain lines: only when something changed, and at most once per second. */
        if (streq(line, f->last_plain_text))
                return;
        if (!force && f->last_plain != 0 && t < usec_add(f->last_plain, PLAIN_LINE_INTERVAL_USEC))
                return;

        fprintf(stderr, "%s\n", line);
        fflush(stderr);
        f->last_plain = t;
        snprintf(f->last_plain_text, sizeof f->last_plain_text, "%s", line);
}

static void follow_end_line(Follow *f) {
        if (f->line_shown) {
                fputc('\n', stderr);
                fflush(stderr);
                f->line_shown = false;
        }
}

static bool follow_done(const char *state) {
        return streq_ptr(state, "transferred") || streq_ptr(state, "error") || job_state_is_final(state);
}

static int follow_poll(Follow *f) {
        _cleanup_(sd_bus_error_free) sd_bus_error error = SD_BUS_ERROR_NULL;
        _cleanup_free_ char *state = NULL;
        uint64_t transferred, total;
        int r;

        r = sd_bus_get_property_string(f->bus, BITS_SERVICE, f->path, BITS_JOB_INTERFACE, "State",
                                       &error, &state);
        if (r < 0)
                return log_bus_error(&error, r, "Failed to get job state");

        r = sd_bus_get_property_trivial(f->bus, BITS_SERVICE, f->path, BITS_JOB_INTERFACE,
                                        "BytesTransferred", &error, 't', &transferred);
        if (r < 0)
                return log_bus_error(&error, r, "Failed to get BytesTransferred");

        r = sd_bus_get_property_trivial(f->bus, BITS_SERVICE, f->path, BITS_JOB_INTERFACE,
                                        "BytesTotal", &error, 't', &total);
        if (r < 0)
                return log_bus_error(&error, r, "Failed to get BytesTotal");

        free(f->state);
        f->state = TAKE_PTR(state);
        f->bytes_transferred = transferred;
        f->bytes_total = total;
        return 0;
}

static int on_timer(sd_event_source *s, uint64_t usec, void *userdata) {
        Follow *f = userdata;
        usec_t t;
        int r;

        r = follow_poll(f);
        if (r < 0) {
                follow_end_line(f);
                f->error = r;
                return sd_event_exit(sd_event_source_get_event(s), r);
        }

        t = now(CLOCK_MONOTONIC);
        follow_add_sample(f, t, f->bytes_transferred);

        if (follow_done(f->state)) {
                follow_show(f, t, /* force= */ true);
                follow_end_line(f);
                return sd_event_exit(sd_event_source_get_event(s), 0);
        }

        follow_show(f, t, /* force= */ false);

        r = sd_event_source_set_time(s, usec_add(t, POLL_INTERVAL_USEC));
        if (r < 0)
                return r;
        return sd_event_source_set_enabled(s, SD_EVENT_ONESHOT);
}

static int on_signal(sd_event_source *s, const struct signalfd_siginfo *si, void *userdata) {
        Follow *f = userdata;

        follow_end_line(f);
        f->interrupted = true;
        return sd_event_exit(sd_event_source_get_event(s), 0);
}

int follow_job(sd_bus *bus, const char *path, bool show_progress, char **ret_state) {
        _cleanup_(sd_event_unrefp) sd_event *event = NULL;
        _cleanup_(sd_event_source_unrefp) sd_event_source *timer = NULL, *sigint = NULL, *sigterm = NULL;
        Follow f = {
                .bus = bus,
                .path = path,
                .show_progress = show_progress,
                .tty = isatty(STDERR_FILENO) > 0,
                .bytes_total = UINT64_MAX,
        };
        sigset_t mask, saved;
        int r;

        r = sd_event_new(&event);
        if (r < 0)
                return log_bus_error(NULL, r, "Failed to allocate event loop");

        /* sd-event wants the signals blocked; they are delivered through a signalfd, so a ^C
         * during a bus call is handled once the call returned. */
        sigemptyset(&mask);
        sigaddset(&mask, SIGINT);
        sigaddset(&mask, SIGTERM);
        if (sigprocmask(SIG_BLOCK, &mask, &saved) < 0)
                return log_bus_error(NULL, -errno, "Failed to block signals");

        r = sd_event_add_signal(event, &sigint, SIGINT, on_signal, &f);
        if (r >= 0)
                r = sd_event_add_signal(event, &sigterm, SIGTERM, on_signal, &f);
        if (r >= 0)
                r = sd_event_add_time(event, &timer, CLOCK_MONOTONIC, 0, 10 * USEC_PER_MSEC, on_timer, &f);
        if (r < 0) {
                (void) sigprocmask(SIG_SETMASK, &saved, NULL);
                return log_bus_error(NULL, r, "Failed to set up event loop");
        }

        r = sd_event_loop(event);

        sigint = sd_event_source_unref(sigint);
        sigterm = sd_event_source_unref(sigterm);
        (void) sigprocmask(SIG_SETMASK, &saved, NULL);

        if (f.interrupted) {
                free(f.state);
                return EXIT_INTERRUPTED;
        }
        if (f.error < 0) {
                free(f.state);
                return f.error;
        }
        if (r < 0) {
                free(f.state);
                return log_bus_error(NULL, r, "Event loop failed");
        }

        *ret_state = f.state;
        return 0;
}
