"""The fdlink Python module against a real producer process (tools/tests/python_consumer.rs
starts the producer and checks what this prints; run it through that test).

    python test_consumer.py stream SOCK EXPECTED_JSON
        Takes every frame and checks it against EXPECTED_JSON (what one GStreamer process
        made of the same source: per frame pts, size, sha1; the video layout): the same
        bytes through bytes(), memoryview() and numpy.asarray(), the latter two mapped from
        the producer's memfd (no copy), each frame released (by `with`, release() or del;
        views made before the release keep the buffer until they go), and no fd left once
        the consumer is closed.
    python test_consumer.py joined SOCK EXPECTED_JSON
        Frames of several memories (from an fdlink.producer in the test process): the
        buffer protocol gives them joined into one block, copied once, with the bytes of all
        memories in order.
    python test_consumer.py peer-gone SOCK
        Takes frames from a slow live producer until it is killed: the wait releases the GIL,
        and the end is fdlink.PeerGone, not the end of the stream.

Plain asserts; the last line printed says what passed.
"""

import gc
import hashlib
import json
import os
import sys
import threading
import time

import numpy

import fdlink


def open_fds():
    """This process's open fds and what they point at (listdir's own fd is gone by then)."""
    fds = {}
    for name in os.listdir("/proc/self/fd"):
        try:
            fds[int(name)] = os.readlink(f"/proc/self/fd/{name}")
        except FileNotFoundError:
            pass
    return fds


def mapping_of(address):
    """The file /proc/self/maps names for the mapping that holds `address`."""
    with open("/proc/self/maps") as maps:
        for line in maps:
            fields = line.split(maxsplit=5)
            start, end = (int(x, 16) for x in fields[0].split("-"))
            if start <= address < end:
                return fields[5].strip() if len(fields) == 6 else ""
    raise AssertionError(f"address {address:#x} is in no mapping")


def connect(sock, timeout=30.0):
    deadline = time.monotonic() + timeout
    while True:
        try:
            return fdlink.Consumer(sock)
        except fdlink.ConnectError:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.02)


def check_frame(i, frame, want, layout):
    size = want["size"]
    assert len(frame) == size, f"frame {i}: {len(frame)} bytes, want {size}"
    assert frame.pts == want["pts"], f"frame {i}: pts {frame.pts}, want {want['pts']}"
    assert frame.format == layout["format"], f"frame {i}: format {frame.format}"
    assert (frame.width, frame.height) == (layout["width"], layout["height"]), frame
    assert frame.planes == [tuple(p) for p in layout["planes"]], f"frame {i}: {frame.planes}"
    assert [m[0] for m in frame.memories] == ["memfd"], f"frame {i}: {frame.memories}"
    assert frame.zero_copy, f"frame {i}: one memory is read in place"

    view = memoryview(frame)
    assert view.readonly and view.format == "B" and view.shape == (size,), view
    array = numpy.asarray(frame)
    assert array.dtype == numpy.uint8 and array.shape == (size,), (array.dtype, array.shape)
    assert not array.flags.writeable, f"frame {i}: the array is read-only"
    # hashlib reads through the buffer protocol too: no copy on the way.
    assert hashlib.sha1(array).hexdigest() == want["sha1"], f"frame {i}: bytes differ (numpy)"
    assert hashlib.sha1(view).hexdigest() == want["sha1"], f"frame {i}: bytes differ (view)"
    assert hashlib.sha1(bytes(frame)).hexdigest() == want["sha1"], f"frame {i}: bytes()"

    # Zero-copy: the array's bytes are the producer's memfd, mapped here.
    address = array.__array_interface__["data"][0]
    where = mapping_of(address)
    assert where.startswith("/memfd:"), f"frame {i}: the array is in {where!r}, not a memfd"
    assert numpy.frombuffer(view, numpy.uint8).__array_interface__["data"][0] == address

    # Planes as numpy views: (height, stride) rows of the luma plane, cropped to the width.
    (y_offset, y_stride) = frame.planes[0]
    luma = array[y_offset : y_offset + y_stride * frame.height].reshape(frame.height, y_stride)
    assert luma[:, : frame.width].shape == (frame.height, frame.width)
    assert luma.__array_interface__["data"][0] == address + y_offset

    del view, array, luma


def stream(sock, expected_path):
    with open(expected_path) as f:
        expected = json.load(f)
    frames, layout = expected["frames"], expected["layout"]
    gc.collect()
    fds_before = open_fds()

    try:
        fdlink.Consumer(sock + ".nobody")
        raise AssertionError("connected to a path where nothing listens")
    except fdlink.ConnectError as e:
        assert isinstance(e, fdlink.Error)

    consumer = connect(sock)
    assert consumer.hold_limit == 8, consumer.hold_limit
    assert consumer.fileno() > 2
    n = 0
    # Frames released but still referenced: were they not given back, the producer would stop
    # at its hold limit (8) and this would wait for the test's timeout.
    kept = []
    for frame in consumer:
        assert n < len(frames), f"more frames than the {len(frames)} sent"
        check_frame(n, frame, frames[n], layout)
        # Each way of releasing, in turn.
        if n % 3 != 2:
            kept.append(frame)
        if n % 3 == 0:
            # Views made in the block outlive it: they keep the producer's buffer until the
            # last goes, and read it as it was.
            with frame:
                array = numpy.asarray(frame)
                view = memoryview(frame)
            assert frame.released and frame.holding, frame
            try:
                bytes(frame)
                raise AssertionError("bytes of a released frame")
            except ValueError:
                pass
            try:
                memoryview(frame)
                raise AssertionError("a view of a released frame")
            except ValueError:
                pass
            assert hashlib.sha1(array).hexdigest() == frames[n]["sha1"], f"frame {n}: after"
            del array
            assert frame.holding, "the memoryview still reads it"
            view.release()
            assert not frame.holding, "the last view gone, the buffer goes back"
            assert frame.pts == frames[n]["pts"], "metadata stays after the release"
        elif n % 3 == 1:
            frame.release()
            frame.release()
            assert frame.released and not frame.holding
        else:
            del frame
        n += 1
    assert n == len(frames), f"{n} frames, want {len(frames)}"
    assert consumer.ended
    assert consumer.poll() is None and consumer.poll(0.05) is None
    try:
        next(consumer)
        raise AssertionError("a frame after the end of the stream")
    except StopIteration:
        pass
    assert len(kept) == 20 and all(f.released for f in kept)
    consumer.close()
    assert consumer.closed
    del kept
    gc.collect()
    fds_after = open_fds()
    assert fds_after == fds_before, f"fds kept: before {fds_before}, after {fds_after}"
    print(f"fds-before {len(fds_before)} fds-after {len(fds_after)}")
    print(f"stream ok: {n} frames, sha1 as one process, zero-copy, released")


def joined(sock, expected_path):
    with open(expected_path) as f:
        expected = json.load(f)
    frames, layout = expected["frames"], expected["layout"]
    consumer = connect(sock)
    n = 0
    for frame in consumer:
        want = frames[n]
        assert len(frame) == want["size"] and frame.pts == want["pts"], frame
        assert frame.memories == [tuple(m) for m in expected["memories"]], frame.memories
        assert frame.planes == [tuple(p) for p in layout["planes"]], frame.planes
        assert (frame.format, frame.width, frame.height) == (
            layout["format"],
            layout["width"],
            layout["height"],
        )
        assert not frame.zero_copy, "several memories are joined in a copy"
        with frame:
            array = numpy.asarray(frame)
            assert array.shape == (want["size"],) and not array.flags.writeable
            assert hashlib.sha1(array).hexdigest() == want["sha1"], f"frame {n}: joined bytes"
            assert hashlib.sha1(bytes(frame)).hexdigest() == want["sha1"], f"frame {n}: bytes()"
            address = array.__array_interface__["data"][0]
            assert not mapping_of(address).startswith("/memfd:"), "a copy, not the memfd"
            again = memoryview(frame)
            assert numpy.frombuffer(again, numpy.uint8).__array_interface__["data"][0] == address, (
                "copied once: every view reads the same block"
            )
            del array, again
        assert not frame.holding
        n += 1
    assert n == len(frames), f"{n} frames, want {len(frames)}"
    consumer.close()
    print(f"joined ok: {n} frames of {len(expected['memories'])} memories")


def peer_gone(sock):
    consumer = connect(sock)
    ticks = 0
    running = True

    def tick():
        nonlocal ticks
        while running:
            ticks += 1
            time.sleep(0.001)

    ticker = threading.Thread(target=tick)
    ticker.start()
    n, waited, ticked = 0, 0.0, 0
    try:
        while True:
            before, start = ticks, time.monotonic()
            frame = next(consumer)
            took = time.monotonic() - start
            if took > waited:
                waited, ticked = took, ticks - before
            n += 1
            frame.release()
            print(f"frame {n}", flush=True)
    except fdlink.PeerGone as e:
        assert isinstance(e, fdlink.Error)
        print(f"peer-gone after {n} frames: {e}")
    except StopIteration:
        raise AssertionError("the end of the stream, from a producer that was killed")
    finally:
        running = False
        ticker.join()
    # The producer sends a frame every 200 ms: the longest wait let the other thread run.
    assert waited > 0.1, f"the longest wait was {waited:.3f} s"
    assert ticked > 10, f"another thread ticked {ticked} times in a {waited:.3f} s wait"
    print(f"gil released: {ticked} ticks in a {waited:.3f} s wait")


if __name__ == "__main__":
    mode = sys.argv[1]
    if mode == "stream":
        stream(sys.argv[2], sys.argv[3])
    elif mode == "joined":
        joined(sys.argv[2], sys.argv[3])
    elif mode == "peer-gone":
        peer_gone(sys.argv[2])
    else:
        sys.exit(f"unknown mode {mode}")
