/*
 * Prints each frame an fdlink producer sends, with a CRC-32 of its bytes, and releases it;
 * exits 0 at the end of the stream. Last it prints how many fds the process had open before
 * it connected and after it freed everything: the same number when nothing leaked.
 *
 *   gst-launch-1.0 videotestsrc num-buffers=100 ! video/x-raw,format=NV12 ! \
 *       fdlinksink socket-path=/tmp/fdlink.sock &
 *   cc -std=c99 consume.c $(pkg-config --cflags --libs fdlink) -o consume
 *   ./consume /tmp/fdlink.sock
 */
#define _POSIX_C_SOURCE 200809L

#include <dirent.h>
#include <inttypes.h>
#include <stdio.h>
#include <time.h>

#include <fdlink.h>

/* CRC-32 (IEEE 802.3, as zlib's crc32), continued over `crc` so that memories chain. */
static uint32_t crc32_update(uint32_t crc, const uint8_t *data, size_t size)
{
    static uint32_t table[256];
    if (table[1] == 0) {
        for (uint32_t i = 0; i < 256; i++) {
            uint32_t c = i;
            for (int k = 0; k < 8; k++)
                c = (c & 1) ? 0xEDB88320u ^ (c >> 1) : c >> 1;
            table[i] = c;
        }
    }
    crc = ~crc;
    for (size_t i = 0; i < size; i++)
        crc = table[(crc ^ data[i]) & 0xFF] ^ (crc >> 8);
    return ~crc;
}

static int open_fds(void)
{
    DIR *dir = opendir("/proc/self/fd");
    if (!dir)
        return -1;
    /* Less the directory's own fd, and "." and "..". */
    int n = -1;
    struct dirent *entry;
    while ((entry = readdir(dir)))
        if (entry->d_name[0] != '.')
            n++;
    closedir(dir);
    return n;
}

/* Connects, retrying for up to 10 s while no producer listens there yet. */
static FdlinkConsumer *connect_when_up(const char *path, FdlinkError **error)
{
    for (int tries = 0;; tries++) {
        FdlinkConsumer *c = fdlink_consumer_connect(path, error);
        if (c || fdlink_error_kind(*error) != FDLINK_ERROR_CONNECT || tries == 500)
            return c;
        fdlink_error_free(*error);
        *error = NULL;
        struct timespec wait = {0, 20 * 1000 * 1000};
        nanosleep(&wait, NULL);
    }
}

/* The CRC-32 of the frame's bytes, mapped (not copied): all at once when they are one
 * window, else memory by memory. */
static bool checksum(FdlinkFrame *frame, uint32_t *crc, size_t *size, FdlinkError **error)
{
    const uint8_t *data;
    size_t n = fdlink_frame_n_memories(frame);
    *crc = 0;
    *size = 0;
    if (n <= 1) {
        if (!fdlink_frame_map(frame, &data, size, error))
            return false;
        *crc = crc32_update(0, data, *size);
        return true;
    }
    for (size_t i = 0; i < n; i++) {
        size_t len;
        if (!fdlink_frame_map_memory(frame, i, &data, &len, error))
            return false;
        *crc = crc32_update(*crc, data, len);
        *size += len;
    }
    return true;
}

int main(int argc, char **argv)
{
    const char *path = argc > 1 ? argv[1] : "/tmp/fdlink.sock";
    int fds_before = open_fds();
    FdlinkError *error = NULL;
    FdlinkConsumer *consumer = connect_when_up(path, &error);
    if (!consumer) {
        fprintf(stderr, "consume: %s\n", fdlink_error_message(error));
        fdlink_error_free(error);
        return 1;
    }
    printf("hold-limit %" PRIu32 "\n", fdlink_consumer_hold_limit(consumer));

    unsigned long n = 0;
    FdlinkFrame *frame;
    FdlinkStatus status;
    while ((status = fdlink_consumer_next_frame(consumer, -1, &frame, &error)) !=
           FDLINK_STATUS_END) {
        if (status == FDLINK_STATUS_ERROR)
            break;
        if (status != FDLINK_STATUS_FRAME)
            continue;
        uint32_t crc;
        size_t size;
        if (!checksum(frame, &crc, &size, &error)) {
            fdlink_frame_release(frame);
            status = FDLINK_STATUS_ERROR;
            break;
        }
        char pts[32] = "none";
        if (fdlink_frame_pts(frame) != FDLINK_TIME_NONE)
            snprintf(pts, sizeof pts, "%" PRIu64, fdlink_frame_pts(frame));
        FdlinkVideoLayout video;
        char layout[48] = "";
        if (fdlink_frame_video_layout(frame, &video))
            snprintf(layout, sizeof layout, " video %" PRIu32 "x%" PRIu32 " planes %" PRIu32,
                     video.width, video.height, video.n_planes);
        printf("frame %lu pts %s size %zu memories %zu kind %d%s crc32 %08" PRIx32 "\n", n, pts,
               size, fdlink_frame_n_memories(frame), (int)fdlink_frame_memory_kind(frame, 0),
               layout, crc);
        n++;
        /* The producer gets its buffer back now. */
        fdlink_frame_release(frame);
    }
    fdlink_consumer_free(consumer);
    if (status == FDLINK_STATUS_ERROR) {
        fprintf(stderr, "consume: after %lu frames: %s\n", n, fdlink_error_message(error));
        fdlink_error_free(error);
        return 1;
    }
    printf("end frames %lu\n", n);
    printf("fds before %d after %d\n", fds_before, open_fds());
    fflush(stdout);
    return 0;
}
