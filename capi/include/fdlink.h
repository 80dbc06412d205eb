/*
 * fdlink.h - take frames from an fdlink producer (a GStreamer pipeline's fdlinksink in
 * another process) without GStreamer.
 *
 * Frames arrive as files (sealed memfds, or dmabufs) that the producer passes over a Unix
 * socket; nothing is copied. A frame is the producer's buffer until the consumer releases
 * it (fdlink_frame_release): hold a frame only as long as its bytes are needed, as the
 * producer lets a consumer hold only fdlink_consumer_hold_limit() frames at once.
 *
 *     FdlinkError *err = NULL;
 *     FdlinkConsumer *c = fdlink_consumer_connect("/tmp/fdlink.sock", &err);
 *     if (!c) { fprintf(stderr, "%s\n", fdlink_error_message(err)); fdlink_error_free(err); }
 *     FdlinkFrame *f;
 *     while (fdlink_consumer_next_frame(c, -1, &f, &err) == FDLINK_STATUS_FRAME) {
 *         const uint8_t *data; size_t size;
 *         if (fdlink_frame_map(f, &data, &size, &err)) use(data, size);
 *         fdlink_frame_release(f);
 *     }
 *     fdlink_consumer_free(c);
 *
 * Build: cc app.c $(pkg-config --cflags --libs fdlink)
 *
 * Conventions: every pointer argument may be NULL; the call then fails (or does nothing,
 * or gives the documented default). An `FdlinkError **error` argument may be NULL when the
 * caller does not want the error; otherwise a failing call stores a new error there, which
 * the caller frees with fdlink_error_free. Objects are opaque and owned by the caller until
 * freed. A consumer is used by one thread at a time; a frame may be used and released on
 * any thread, also after its consumer is freed. C99.
 */
#ifndef FDLINK_H
#define FDLINK_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#ifdef __cplusplus
extern "C" {
#endif

/* A timestamp the frame does not have (GStreamer's GST_CLOCK_TIME_NONE). */
#define FDLINK_TIME_NONE UINT64_MAX

/* Most planes a video layout describes. */
#define FDLINK_MAX_PLANES 4

/* GstBufferFlags bits of fdlink_frame_flags. */
#define FDLINK_FRAME_FLAG_DISCONT (1u << 6)
/* Not a keyframe. */
#define FDLINK_FRAME_FLAG_DELTA_UNIT (1u << 13)

/* A connection to a producer. */
typedef struct FdlinkConsumer FdlinkConsumer;
/* A frame from the producer: its buffer until released. */
typedef struct FdlinkFrame FdlinkFrame;
/* What went wrong: a kind and a message. */
typedef struct FdlinkError FdlinkError;

/* What fdlink_consumer_next_frame found. */
typedef enum FdlinkStatus {
    /* A frame, stored in *frame. */
    FDLINK_STATUS_FRAME = 0,
    /* No frame within the timeout (packets other than frames may have come). */
    FDLINK_STATUS_PENDING = 1,
    /* The end of the stream: the producer sent EOS. Every later call gives END too. */
    FDLINK_STATUS_END = 2,
    /* The link failed, see *error: free the consumer and connect again. */
    FDLINK_STATUS_ERROR = 3
} FdlinkStatus;

typedef enum FdlinkErrorKind {
    /* A NULL or out-of-range argument, or a frame that cannot be mapped as asked. */
    FDLINK_ERROR_INVALID_ARGUMENT = 1,
    /* The socket could not be reached: no producer there (yet), or no permission. */
    FDLINK_ERROR_CONNECT = 2,
    /* The hello failed, e.g. a protocol version mismatch (the message names both). */
    FDLINK_ERROR_HANDSHAKE = 3,
    /* The producer closed the connection without an end of stream. */
    FDLINK_ERROR_PEER_GONE = 4,
    /* The producer sent an error before it closed; the message is its text. */
    FDLINK_ERROR_PEER_ERROR = 5,
    /* The producer sent a packet that does not decode (it was told why). */
    FDLINK_ERROR_BAD_PACKET = 6,
    /* The producer sent a frame whose files do not check out (it was told why). */
    FDLINK_ERROR_BAD_FRAME = 7,
    /* Socket I/O failed. */
    FDLINK_ERROR_TRANSPORT = 8,
    /* mmap (or a dmabuf's CPU-access sync) failed. */
    FDLINK_ERROR_MAP = 9,
    /* A bug in fdlink; the message says so. */
    FDLINK_ERROR_INTERNAL = 10
} FdlinkErrorKind;

/* What kind of file a memory is in. */
typedef enum FdlinkMemoryKind {
    /* No such memory (an index past the last). */
    FDLINK_MEMORY_NONE = 0,
    /* A sealed memfd. */
    FDLINK_MEMORY_MEMFD = 1,
    /* A dmabuf of the producer's device. */
    FDLINK_MEMORY_DMABUF = 2
} FdlinkMemoryKind;

/* The producer's video layout of a frame's bytes (GstVideoMeta). */
typedef struct FdlinkVideoLayout {
    /* A GstVideoFormat value (GST_VIDEO_FORMAT_NV12 is 23). */
    uint32_t format;
    /* GstVideoFrameFlags. */
    uint32_t flags;
    uint32_t width;
    uint32_t height;
    uint32_t n_planes;
    /* Each plane's start, in bytes from the start of the frame's bytes. */
    uint64_t offsets[FDLINK_MAX_PLANES];
    /* Each plane's row stride in bytes. */
    int32_t strides[FDLINK_MAX_PLANES];
} FdlinkVideoLayout;

/* ---- consumer ---- */

/* Connects to the producer listening on the socket at `path` and exchanges hellos.
 * NULL on failure (*error says why: FDLINK_ERROR_CONNECT when no producer listens yet). */
FdlinkConsumer *fdlink_consumer_connect(const char *path, FdlinkError **error);

/* As fdlink_consumer_connect, over a connected AF_UNIX SOCK_SEQPACKET socket `fd` whose
 * other end is a producer (a socketpair end, an inherited fd). Takes `fd` in every case:
 * it is closed on failure and by fdlink_consumer_free. */
FdlinkConsumer *fdlink_consumer_from_fd(int fd, FdlinkError **error);

/* The consumer's socket, for poll/epoll: readable when a packet is waiting; then call
 * fdlink_consumer_next_frame with timeout 0. The consumer keeps the fd (do not close it).
 * -1 for NULL. */
int fdlink_consumer_fd(const FdlinkConsumer *consumer);

/* How many frames the producer lets this consumer hold at once (0: no limit). Holding that
 * many makes it skip frames for this consumer (live) or wait (not live). 0 for NULL. */
uint32_t fdlink_consumer_hold_limit(const FdlinkConsumer *consumer);

/* The next frame. `timeout_ms` < 0 waits for a frame or the end; 0 reads only what is
 * already on the socket (for event loops); > 0 waits at most that long. Stores the frame in
 * *frame (NULL unless FDLINK_STATUS_FRAME); release it with fdlink_frame_release. */
FdlinkStatus fdlink_consumer_next_frame(FdlinkConsumer *consumer, int timeout_ms,
                                        FdlinkFrame **frame, FdlinkError **error);

/* Closes the connection. Frames not yet released stay valid, and are released to the
 * producer (if it is still there) by fdlink_frame_release. NULL does nothing. */
void fdlink_consumer_free(FdlinkConsumer *consumer);

/* ---- frame ---- */

/* The stream's caps when the frame was sent, GStreamer's caps text (e.g.
 * "video/x-raw, format=(string)NV12, width=(int)320, ..."). Valid until the frame is
 * released. "" for NULL. */
const char *fdlink_frame_caps(const FdlinkFrame *frame);

/* Timestamps in nanoseconds in the producer's segment, or FDLINK_TIME_NONE. */
uint64_t fdlink_frame_pts(const FdlinkFrame *frame);
uint64_t fdlink_frame_dts(const FdlinkFrame *frame);
uint64_t fdlink_frame_duration(const FdlinkFrame *frame);

/* GstBufferFlags bits (FDLINK_FRAME_FLAG_*). 0 for NULL. */
uint32_t fdlink_frame_flags(const FdlinkFrame *frame);

/* How many memories (windows of files) the frame's bytes are in, in order; 0 for a frame
 * without bytes. */
size_t fdlink_frame_n_memories(const FdlinkFrame *frame);

/* Memory `index`: its file, the window's offset in it and size, and the file's kind. The fd
 * is the frame's: valid until the frame is released, not to be closed (dup it to keep it).
 * Out of range or NULL: -1, 0, 0, FDLINK_MEMORY_NONE. */
int fdlink_frame_memory_fd(const FdlinkFrame *frame, size_t index);
uint64_t fdlink_frame_memory_offset(const FdlinkFrame *frame, size_t index);
uint64_t fdlink_frame_memory_size(const FdlinkFrame *frame, size_t index);
FdlinkMemoryKind fdlink_frame_memory_kind(const FdlinkFrame *frame, size_t index);

/* Fills *layout and returns true when the producer sent a video layout with the frame. */
bool fdlink_frame_video_layout(const FdlinkFrame *frame, FdlinkVideoLayout *layout);

/* Maps the frame's bytes read-only, without a copy: *data and *size cover every memory.
 * Works when the frame has one memory, or several that are adjacent windows of one file
 * (the usual case); otherwise fails with FDLINK_ERROR_INVALID_ARGUMENT: map each memory
 * with fdlink_frame_map_memory. A frame without bytes gives data NULL, size 0. The bytes
 * stay mapped until the frame is released; mapping again gives the same bytes. A dmabuf is
 * bracketed by DMA_BUF_IOCTL_SYNC so the CPU sees what the device wrote. */
bool fdlink_frame_map(FdlinkFrame *frame, const uint8_t **data, size_t *size,
                      FdlinkError **error);

/* As fdlink_frame_map, for memory `index` alone. */
bool fdlink_frame_map_memory(FdlinkFrame *frame, size_t index, const uint8_t **data,
                             size_t *size, FdlinkError **error);

/* Unmaps the frame, frees it, and gives its buffer back to the producer. NULL does
 * nothing. */
void fdlink_frame_release(FdlinkFrame *frame);

/* ---- errors ---- */

/* The error's message, naming the cause. Valid until the error is freed. */
const char *fdlink_error_message(const FdlinkError *error);

/* What the error is about. FDLINK_ERROR_INVALID_ARGUMENT for NULL. */
FdlinkErrorKind fdlink_error_kind(const FdlinkError *error);

/* Frees an error. NULL does nothing. */
void fdlink_error_free(FdlinkError *error);

#ifdef __cplusplus
}
#endif

#endif /* FDLINK_H */
