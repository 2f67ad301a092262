/* SPDX-License-Identifier: LGPL-2.1-or-later */
#include "job.h"
#include "tests.h"

static void test_strings(void) {
        for (int s = 0; s < _JOB_STATE_MAX; s++)
                CHECK_EQ_INT(job_state_from_string(job_state_to_string(s)), s);
        CHECK_STREQ(job_state_to_string(JOB_TRANSIENT_ERROR), "transient-error");
        CHECK_EQ_INT(job_state_from_string("Queued"), -EINVAL);
        CHECK_EQ_INT(job_type_from_string("upload-reply"), JOB_UPLOAD_REPLY);
        CHECK_EQ_INT(job_type_from_string("downloads"), -EINVAL);
        CHECK_EQ_INT(job_priority_from_string("foreground"), JOB_PRIORITY_FOREGROUND);
        CHECK_EQ_INT(job_priority_from_string(""), -EINVAL);
        CHECK_STREQ(error_context_to_string(ERROR_CONTEXT_REMOTE_APPLICATION), "remote-application");
        CHECK(job_state_to_string(_JOB_STATE_MAX) == NULL);
}

static void test_state_machine(void) {
        /* Resume */
        CHECK_EQ_INT(job_state_next(JOB_SUSPENDED, JOB_EVENT_RESUME, true), JOB_QUEUED);
        CHECK_EQ_INT(job_state_next(JOB_ERROR, JOB_EVENT_RESUME, true), JOB_QUEUED);
        CHECK_EQ_INT(job_state_next(JOB_TRANSIENT_ERROR, JOB_EVENT_RESUME, true), JOB_QUEUED);
        CHECK_EQ_INT(job_state_next(JOB_TRANSFERRED, JOB_EVENT_RESUME, false), JOB_TRANSFERRED);
        CHECK_EQ_INT(job_state_next(JOB_TRANSFERRED, JOB_EVENT_RESUME, true), JOB_QUEUED);
        CHECK_EQ_INT(job_state_next(JOB_TRANSFERRING, JOB_EVENT_RESUME, true), JOB_TRANSFERRING);
        CHECK_EQ_INT(job_state_next(JOB_SUSPENDED, JOB_EVENT_RESUME, false), JOB_TRANSFERRED);
        /* Final states accept nothing */
        for (int e = 0; e < _JOB_EVENT_MAX; e++) {
                CHECK_EQ_INT(job_state_next(JOB_ACKNOWLEDGED, e, true), -EBUSY);
                CHECK_EQ_INT(job_state_next(JOB_CANCELLED, e, true), -EBUSY);
        }
        /* Suspend, cancel and complete from anywhere else */
        for (int s = 0; s < _JOB_STATE_MAX; s++) {
                if (job_state_is_final(s))
                        continue;
                CHECK_EQ_INT(job_state_next(s, JOB_EVENT_SUSPEND, true), JOB_SUSPENDED);
                CHECK_EQ_INT(job_state_next(s, JOB_EVENT_CANCEL, true), JOB_CANCELLED);
                CHECK_EQ_INT(job_state_next(s, JOB_EVENT_COMPLETE, true), JOB_ACKNOWLEDGED);
        }
        /* Engine events */
        CHECK_EQ_INT(job_state_next(JOB_QUEUED, JOB_EVENT_START, true), JOB_CONNECTING);
        CHECK_EQ_INT(job_state_next(JOB_SUSPENDED, JOB_EVENT_START, true), -EBUSY);
        CHECK_EQ_INT(job_state_next(JOB_CONNECTING, JOB_EVENT_CONNECTED, true), JOB_TRANSFERRING);
        CHECK_EQ_INT(job_state_next(JOB_TRANSFERRING, JOB_EVENT_TRANSIENT_ERROR, true), JOB_TRANSIENT_ERROR);
        CHECK_EQ_INT(job_state_next(JOB_CONNECTING, JOB_EVENT_FATAL_ERROR, true), JOB_ERROR);
        CHECK_EQ_INT(job_state_next(JOB_SUSPENDED, JOB_EVENT_FATAL_ERROR, true), -EBUSY);
        CHECK_EQ_INT(job_state_next(JOB_TRANSIENT_ERROR, JOB_EVENT_RETRY, true), JOB_QUEUED);
        CHECK_EQ_INT(job_state_next(JOB_QUEUED, JOB_EVENT_RETRY, true), -EBUSY);
        CHECK_EQ_INT(job_state_next(JOB_TRANSFERRING, JOB_EVENT_TRANSFERRED, false), JOB_TRANSFERRED);
        CHECK_EQ_INT(job_state_next(JOB_TRANSFERRING, JOB_EVENT_PREEMPT, true), JOB_QUEUED);
}

static void test_ids(void) {
        char id[37], id2[37], hex[33];

        CHECK_EQ_INT(id_generate(id), 0);
        CHECK_EQ_INT(strlen(id), 36);
        CHECK(id[14] == '4');
        CHECK_EQ_INT(id_normalize(id, id2), 0);
        CHECK_STREQ(id2, id);

        CHECK_EQ_INT(id_normalize("{0123ABCD-89ab-4def-8123-456789ABCDEF}", id), 0);
        CHECK_STREQ(id, "0123abcd-89ab-4def-8123-456789abcdef");
        CHECK_EQ_INT(id_normalize("0123abcd89ab4def8123456789abcdef", id2), 0);
        CHECK_STREQ(id2, id);
        id_to_hex(id, hex);
        CHECK_STREQ(hex, "0123abcd89ab4def8123456789abcdef");
        CHECK_EQ_INT(id_from_hex(hex, id2), 0);
        CHECK_STREQ(id2, id);

        CHECK_EQ_INT(id_normalize("0123abcd-89ab-4def-8123-456789abcdeg", id), -EINVAL);
        CHECK_EQ_INT(id_normalize("0123abcd-89ab-4def-8123456789abcdef0", id), -EINVAL);
        CHECK_EQ_INT(id_normalize("{0123abcd89ab4def8123456789abcdef}", id), -EINVAL);
        CHECK_EQ_INT(id_normalize("", id), -EINVAL);
        CHECK_EQ_INT(id_from_hex("0123ABCD89ab4def8123456789abcdef", id), -EINVAL); /* paths are lowercase */
}

static void expect_invalid(int (*f)(const char *, char **), const char *value, int error, const char *needle) {
        char *msg = NULL;
        int r = f(value, &msg);
        CHECK_EQ_INT(r, error);
        if (needle) {
                CHECK(msg && strstr(msg, needle));
                if (!msg || !strstr(msg, needle))
                        fprintf(stderr, "  message: %s\n", msg ?: "(none)");
        }
        free(msg);
}

static void test_validation(void) {
        char *msg = NULL, big[3000];

        CHECK_EQ_INT(validate_remote_name("http://example.com/a.iso", NULL), 0);
        CHECK_EQ_INT(validate_remote_name("HTTPS://example.com:8443/a?b=c", NULL), 0);
        CHECK_EQ_INT(validate_remote_name("file:///srv/a.iso", NULL), 0);
        CHECK_EQ_INT(validate_remote_name("file://localhost/srv/a%20b.iso", NULL), 0);
        CHECK_EQ_INT(validate_remote_name("/srv/a.iso", NULL), 0);

        expect_invalid(validate_remote_name, "", -EINVAL, "empty");
        expect_invalid(validate_remote_name, "ftp://example.com/x", -EPROTONOSUPPORT, "'ftp://example.com/x'");
        expect_invalid(validate_remote_name, "http://example.com/x\r\nX-Evil: 1", -EINVAL, "\\x0d\\x0a");
        expect_invalid(validate_remote_name, "http:///x", -EINVAL, "no host");
        expect_invalid(validate_remote_name, "relative/path", -EINVAL, "'relative/path'");
        expect_invalid(validate_remote_name, "file://otherhost/x", -EINVAL, "not a local");
        expect_invalid(validate_remote_name, "file:///x%00y", -EINVAL, NULL);
        expect_invalid(validate_remote_name, "http://example.com/a b", -EINVAL, "percent-encode");
        memset(big, 'a', sizeof(big) - 1);
        big[sizeof(big) - 1] = '\0';
        memcpy(big, "http://x/", 9);
        expect_invalid(validate_remote_name, big, -E2BIG, "2200");

        CHECK_EQ_INT(validate_local_path("/home/alice/a.iso", NULL), 0);
        expect_invalid(validate_local_path, "", -EINVAL, "empty");
        expect_invalid(validate_local_path, "a.iso", -EINVAL, "not an absolute path");
        expect_invalid(validate_local_path, "/home/alice/", -EINVAL, "directory");
        expect_invalid(validate_local_path, "/home/../etc/passwd", -EINVAL, "normalized");
        expect_invalid(validate_local_path, "/home//alice", -EINVAL, "normalized");
        expect_invalid(validate_local_path, "/home/./a", -EINVAL, "normalized");
        expect_invalid(validate_local_path, "/tmp/a\nb", -EINVAL, "control");

        CHECK_EQ_INT(validate_display_name("ünïcödé", 7, NULL), 0);
        CHECK_EQ_INT(validate_display_name("ünïcödé!", 7, &msg), -E2BIG);
        CHECK(msg && strstr(msg, "8 characters"));
        free(msg);

        char *p = NULL;
        CHECK_EQ_INT(remote_local_path("file:///a%20b/c", &p), 0);
        CHECK_STREQ(p, "/a b/c");
        free(p);
        CHECK(remote_is_local_file("/x"));
        CHECK(remote_is_local_file("FILE:///x"));
        CHECK(!remote_is_local_file("http://x/"));
        CHECK_STREQ(remote_protocol("https://x/"), "https");
}

static bool valid_utf8(const char *s) {
        for (const unsigned char *p = (const unsigned char *) s; *p;) {
                int n = *p < 0x80 ? 1 : (*p & 0xe0) == 0xc0 ? 2 : (*p & 0xf0) == 0xe0 ? 3 : (*p & 0xf8) == 0xf0 ? 4 : 0;
                if (n == 0)
                        return false;
                for (int i = 1; i < n; i++)
                        if ((p[i] & 0xc0) != 0x80)
                                return false;
                p += n;
        }
        return true;
}

static void test_value_for_message(void) {
        char buf[32], in[600] = "";
        /* Multi-byte characters are never cut in half, whatever the buffer size. */
        for (int i = 0; i < 150; i++)
                strcat(in, i % 3 ? "é" : "€");
        for (size_t size = 8; size <= sizeof(buf); size++) {
                value_for_message(in, buf, size);
                CHECK(valid_utf8(buf));
                CHECK(strlen(buf) < size);
                CHECK(strstr(buf, "...") != NULL);
        }
        CHECK_STREQ(value_for_message("a\r\nb", buf, sizeof(buf)), "a\\x0d\\x0ab");
        CHECK_STREQ(value_for_message("short", buf, sizeof(buf)), "short");
        char *msg = NULL;
        CHECK_EQ_INT(validate_local_path("ööööööööööööööööööööööööööööööööööööööööööööööööööööööööööööööööööö/x", &msg), -EINVAL);
        CHECK(msg && valid_utf8(msg));
        free(msg);
}

static void test_retry(void) {
        usec_t since = 0, retry_at, give_up;
        bool fatal;
        const usec_t t0 = 1000 * USEC_PER_SEC;

        /* First error: the no-progress clock starts, retry after the minimum delay. */
        job_retry_plan(t0, &since, 600, 3600, 0, &fatal, &retry_at, &give_up);
        CHECK(!fatal);
        CHECK_EQ_INT(since, t0);
        CHECK_EQ_INT(retry_at, t0 + 600 * USEC_PER_SEC);
        CHECK_EQ_INT(give_up, t0 + 3600 * USEC_PER_SEC);

        /* Retry-After larger than the delay wins; smaller does not. */
        job_retry_plan(t0 + 10, &since, 600, 3600, 900, &fatal, &retry_at, &give_up);
        CHECK_EQ_INT(retry_at, t0 + 10 + 900 * USEC_PER_SEC);
        CHECK_EQ_INT(since, t0); /* unchanged: no progress in between */
        job_retry_plan(t0, &since, 600, 3600, 30, &fatal, &retry_at, &give_up);
        CHECK_EQ_INT(retry_at, t0 + 600 * USEC_PER_SEC);

        /* Past the no-progress timeout: fatal. */
        job_retry_plan(t0 + 3600 * USEC_PER_SEC, &since, 600, 3600, 0, &fatal, &retry_at, &give_up);
        CHECK(fatal);

        /* Timeout 0: every error is fatal. Delay longer than the timeout: fatal. */
        since = 0;
        job_retry_plan(t0, &since, 600, 0, 0, &fatal, &retry_at, &give_up);
        CHECK(fatal);
        since = 0;
        job_retry_plan(t0, &since, 600, 300, 0, &fatal, &retry_at, &give_up);
        CHECK(fatal);

        /* The minimum delay is at least 5 s. */
        since = 0;
        job_retry_plan(t0, &since, 0, 3600, 0, &fatal, &retry_at, &give_up);
        CHECK(!fatal);
        CHECK_EQ_INT(retry_at, t0 + 5 * USEC_PER_SEC);

        CHECK(!http_status_is_transient(404));
        CHECK(!http_status_is_transient(403));
        CHECK(http_status_is_transient(503));
        CHECK(http_status_is_transient(500));
        CHECK(!http_status_is_transient(501));
        CHECK(!http_status_is_transient(505));
        CHECK(http_status_is_transient(408));
        CHECK(http_status_is_transient(429));
        CHECK(!http_status_is_transient(301));
}

static void test_mountinfo_fuse(void) {
        const char *mi =
                "22 1 254:0 / / rw,relatime shared:1 - ext4 /dev/vda rw\n"
                "40 22 0:40 / /home/alice/remote rw,nosuid,nodev shared:20 - fuse.sshfs alice@host:/ rw,user_id=4001,group_id=4001\n"
                "41 22 0:41 / /home/bob/my\\040files rw,nosuid,nodev - fuse bob rw,user_id=4002,group_id=4002\n"
                "42 22 0:42 / /mnt/shared rw - fuse.gvfsd-fuse gvfsd rw,user_id=0,group_id=0\n";
        char *mp = NULL;

        CHECK_EQ_INT(mountinfo_fuse_of_user(mi, "/home/alice/remote/a.iso", 4001, &mp), 1);
        CHECK_STREQ(mp, "/home/alice/remote");
        free(mp);
        mp = NULL;
        CHECK_EQ_INT(mountinfo_fuse_of_user(mi, "/home/alice/remotely/a.iso", 4001, &mp), 0);
        CHECK_EQ_INT(mountinfo_fuse_of_user(mi, "/home/alice/remote/a.iso", 4002, &mp), 0); /* not bob's */
        CHECK_EQ_INT(mountinfo_fuse_of_user(mi, "/home/bob/my files/x", 4002, &mp), 1);    /* \040 = blank */
        CHECK_STREQ(mp, "/home/bob/my files");
        free(mp);
        mp = NULL;
        CHECK_EQ_INT(mountinfo_fuse_of_user(mi, "/srv/x", 4001, &mp), 0);
        CHECK_EQ_INT(mountinfo_fuse_of_user("", "/srv/x", 4001, &mp), 0);
        CHECK_EQ_INT(mountinfo_fuse_of_user("garbage without fields\n", "/srv/x", 4001, &mp), 0);
}

static void test_files(void) {
        Job *j = job_new("0123abcd-89ab-4def-8123-456789abcdef", JOB_DOWNLOAD, 4001, 5);
        BitsFile *f[2];

        CHECK(j != NULL);
        CHECK_STREQ(j->object_path, "/org/freedesktop/bits1/job/0123abcd89ab4def8123456789abcdef");
        CHECK_EQ_INT(j->state, JOB_SUSPENDED);
        CHECK_EQ_INT(j->notify_flags, 0x3);
        CHECK_EQ_INT(j->minimum_retry_delay, 600);
        CHECK_EQ_INT(job_bytes_total(j), 0);

        f[0] = bits_file_new("http://x/a", "/tmp/a", "/tmp/.BIT1.TMP");
        f[1] = bits_file_new("http://x/b", "/tmp/b", "/tmp/.BIT2.TMP");
        CHECK_EQ_INT(job_append_files(j, f, 2), 0);
        CHECK_EQ_INT(f[1]->index, 1);
        CHECK_EQ_INT(job_bytes_total(j), BYTES_UNKNOWN);
        CHECK(job_next_pending_file(j) == f[0]);
        f[0]->bytes_total = f[0]->bytes_transferred = 10;
        CHECK(job_next_pending_file(j) == f[1]);
        f[1]->bytes_total = 20;
        f[1]->bytes_transferred = 5;
        CHECK_EQ_INT(job_bytes_total(j), 30);
        CHECK_EQ_INT(job_bytes_transferred(j), 15);
        CHECK_EQ_INT(job_files_transferred(j), 1);

        CHECK_EQ_INT(job_set_error(j, ERROR_CONTEXT_REMOTE_FILE, "http:404", "http", 1, "HTTP %d", 404), 0);
        CHECK_STREQ(j->error.code, "http:404");
        CHECK_STREQ(j->error.message, "HTTP 404");
        job_free(j);
}

int main(void) {
        test_strings();
        test_state_machine();
        test_ids();
        test_validation();
        test_value_for_message();
        test_retry();
        test_files();
        test_mountinfo_fuse();
        return tests_finish("test-job");
}
