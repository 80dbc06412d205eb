"""fdlink.Producer against a real consumer process (tools/tests/python_producer.rs starts it).

    test_producer.py SOCKET FRAMES

Publishes FRAMES frames of 64x48 GRAY8, frame n filled by `pattern(n)`, from bytes, a
bytearray and a numpy array in turn; waits for the consumer first; ends the stream; then
checks the stats: every frame sent to the one consumer, none copied at the link, every one
released. Prints `published N` and `released N`.
"""

import sys
import time

import numpy

import fdlink

WIDTH, HEIGHT = 64, 48
CAPS = f"video/x-raw, format=(string)GRAY8, width=(int){WIDTH}, height=(int){HEIGHT}, framerate=(fraction)30/1"


def pattern(n: int) -> bytes:
    return bytes((i * 7 + n * 13) % 256 for i in range(WIDTH * HEIGHT))


def main() -> None:
    sock, frames = sys.argv[1], int(sys.argv[2])
    with fdlink.Producer(sock, CAPS) as producer:
        assert producer.wait_for_consumer(30.0), "no consumer came"
        for n in range(frames):
            data = pattern(n)
            if n % 3 == 1:
                data = bytearray(data)
            elif n % 3 == 2:
                data = numpy.frombuffer(data, dtype=numpy.uint8).reshape(HEIGHT, WIDTH)
            given = producer.publish(data, pts=n * 1_000_000_000 // 30, duration=33_333_333)
            assert given == 1, f"frame {n} went to {given} consumers"
        print(f"published {frames}", flush=True)
        producer.end_of_stream()
        deadline = time.monotonic() + 30
        while producer.stats["releases"] < frames:
            assert time.monotonic() < deadline, f"releases: {producer.stats}"
            time.sleep(0.01)
        stats = producer.stats
        assert stats["frames-sent"] == frames, stats
        assert stats["frames-copied"] == 0, stats
        assert stats["buffers-held"] == 0, stats
        print(f"released {stats['releases']}", flush=True)
    try:
        producer.publish(b"x")
    except ValueError:
        pass
    else:
        raise AssertionError("a closed producer published")


if __name__ == "__main__":
    main()
