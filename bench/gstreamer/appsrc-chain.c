/*
 * GStreamer peer of the engine chain in benches/engine.rs, timed the way the engine is:
 *
 *   appsrc ! QUEUES x queue max-size-buffers=4 ! fakesink sync=false signal-handoffs=true
 *
 * The main thread pushes ONE shared GstBuffer of BYTES bytes N times (a new reference
 * each time, like the engine's synthetic source sharing one `Bytes`), so no buffer is
 * allocated or written per message. appsrc's own queue (max-buffers=4, block=true) is
 * the first edge, so with 8 queues a buffer crosses 9 bounded 4-place edges, as a
 * message crosses 9 mailboxes in the engine chain.
 *
 * Clock (inside the process, start-up and state changes excluded): rate = N / (last
 * arrival at the sink - push of the first buffer); per-hop latency = (arrival - push of
 * that buffer) / (QUEUES + 1), p50 and p99. RATE > 0 paces the pushes (msg/s). The sink
 * counts buffers whose memory is not the shared buffer's (payload copies).
 *
 *   appsrc-chain N BYTES [QUEUES=8] [RATE=0]
 *   -> rate=<buffers/s> p50_us=<hop> p99_us=<hop> copies=<n> buffers=<n>
 *
 * Build: gcc -O2 appsrc-chain.c $(pkg-config --cflags --libs gstreamer-1.0 gstreamer-app-1.0)
 */
#include <gst/app/gstappsrc.h>
#include <gst/gst.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

static uint64_t now_ns(void) {
    struct timespec t;
    clock_gettime(CLOCK_MONOTONIC, &t);
    return (uint64_t)t.tv_sec * 1000000000u + (uint64_t)t.tv_nsec;
}

struct run {
    uint64_t n, seen, copies, last;
    uint64_t *pushed, *ages;
    GstMemory *shared_mem;
};

/* fakesink's streaming thread: one call per buffer, in push order (FIFO chain). */
static void on_handoff(GstElement *sink, GstBuffer *buf, GstPad *pad, gpointer data) {
    (void)sink;
    (void)pad;
    struct run *r = data;
    uint64_t t = now_ns();
    if (r->seen < r->n) {
        r->ages[r->seen] = t - r->pushed[r->seen];
    }
    if (gst_buffer_n_memory(buf) != 1 || gst_buffer_peek_memory(buf, 0) != r->shared_mem) {
        r->copies++;
    }
    r->seen++;
    r->last = t;
}

static int cmp_u64(const void *a, const void *b) {
    uint64_t x = *(const uint64_t *)a, y = *(const uint64_t *)b;
    return (x > y) - (x < y);
}

int main(int argc, char **argv) {
    if (argc < 3) {
        fprintf(stderr, "usage: %s N BYTES [QUEUES=8] [RATE=0]\n", argv[0]);
        return 2;
    }
    gst_init(&argc, &argv);
    uint64_t n = strtoull(argv[1], NULL, 10);
    size_t bytes = strtoull(argv[2], NULL, 10);
    int queues = argc > 3 ? atoi(argv[3]) : 8;
    double rate = argc > 4 ? atof(argv[4]) : 0.0;

    GString *desc = g_string_new("appsrc name=src block=true max-buffers=4 max-bytes=0 "
                                 "is-live=false stream-type=stream format=bytes");
    for (int i = 0; i < queues; i++) {
        g_string_append(desc, " ! queue max-size-buffers=4 max-size-bytes=0 max-size-time=0");
    }
    g_string_append(desc, " ! fakesink name=sink sync=false signal-handoffs=true");
    GError *err = NULL;
    GstElement *pipe = gst_parse_launch(desc->str, &err);
    if (!pipe) {
        fprintf(stderr, "pipeline: %s\n", err ? err->message : "?");
        return 1;
    }
    g_string_free(desc, TRUE);

    struct run r = {.n = n};
    r.pushed = calloc(n, sizeof(uint64_t));
    r.ages = calloc(n, sizeof(uint64_t));
    GstBuffer *shared = gst_buffer_new_allocate(NULL, bytes, NULL);
    gst_buffer_memset(shared, 0, 0xA5, bytes);
    r.shared_mem = gst_buffer_peek_memory(shared, 0);

    GstElement *src = gst_bin_get_by_name(GST_BIN(pipe), "src");
    GstElement *sink = gst_bin_get_by_name(GST_BIN(pipe), "sink");
    g_signal_connect(sink, "handoff", G_CALLBACK(on_handoff), &r);
    gst_element_set_state(pipe, GST_STATE_PLAYING);
    if (gst_element_get_state(pipe, NULL, NULL, 10 * GST_SECOND) == GST_STATE_CHANGE_FAILURE) {
        fprintf(stderr, "pipeline did not start\n");
        return 1;
    }

    uint64_t period = rate > 0 ? (uint64_t)(1e9 / rate) : 0, next_at = now_ns();
    for (uint64_t i = 0; i < n; i++) {
        if (period) {
            uint64_t t = now_ns();
            if (next_at > t) {
                struct timespec d = {(time_t)((next_at - t) / 1000000000u), (long)((next_at - t) % 1000000000u)};
                nanosleep(&d, NULL);
            }
            next_at += period;
        }
        r.pushed[i] = now_ns();
        if (gst_app_src_push_buffer(GST_APP_SRC(src), gst_buffer_ref(shared)) != GST_FLOW_OK) {
            fprintf(stderr, "push %" G_GUINT64_FORMAT " refused\n", i);
            return 1;
        }
    }
    gst_app_src_end_of_stream(GST_APP_SRC(src));
    GstBus *bus = gst_element_get_bus(pipe);
    GstMessage *msg = gst_bus_timed_pop_filtered(bus, GST_CLOCK_TIME_NONE, GST_MESSAGE_EOS | GST_MESSAGE_ERROR);
    if (GST_MESSAGE_TYPE(msg) == GST_MESSAGE_ERROR) {
        GError *e = NULL;
        gst_message_parse_error(msg, &e, NULL);
        fprintf(stderr, "error: %s\n", e->message);
        return 1;
    }
    gst_message_unref(msg);
    gst_object_unref(bus);
    gst_element_set_state(pipe, GST_STATE_NULL);
    if (r.seen != n) {
        fprintf(stderr, "the sink saw %" G_GUINT64_FORMAT " of %" G_GUINT64_FORMAT " buffers\n", r.seen, n);
        return 1;
    }

    qsort(r.ages, n, sizeof(uint64_t), cmp_u64);
    double hops = queues + 1;
    double p50 = r.ages[(size_t)((n - 1) * 0.50 + 0.5)] / 1e3 / hops;
    double p99 = r.ages[(size_t)((n - 1) * 0.99 + 0.5)] / 1e3 / hops;
    printf("rate=%.0f p50_us=%.1f p99_us=%.1f copies=%" G_GUINT64_FORMAT " buffers=%" G_GUINT64_FORMAT "\n",
           n / ((r.last - r.pushed[0]) / 1e9), p50, p99, r.copies, r.seen);
    gst_buffer_unref(shared);
    gst_object_unref(src);
    gst_object_unref(sink);
    gst_object_unref(pipe);
    free(r.pushed);
    free(r.ages);
    return 0;
}
