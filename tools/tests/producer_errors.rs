//! A producer's error reaches its consumers: real producer and consumer processes, the
//! producer's pipeline failing (`identity error-after=60`). Every consumer, independent or
//! following, fails with the producer's error text and origin (`producer (pid P)` and the
//! element's path in the producer's pipeline), not with a bare "disconnected without EOS":
//! the producer sends it as an error packet, behind the frames queued for that consumer,
//! before it closes the connection.

mod common;

use std::time::Duration;

use common::*;

const T: Duration = Duration::from_secs(60);

/// What `identity error-after` says when it fails, and where it sits in the producer.
const IDENTITY_ERROR: &str = "Failed after iterations as requested";
const IDENTITY_PATH: &str = "/GstPipeline:pipeline0/GstIdentity:identity0";

/// The consumer exits with an error that names the producer (its pid), the failing element
/// in the producer's pipeline and its text, and never says "without EOS". Returns its errors.
fn assert_fails_with_producers_error(consumer: &mut Peer, producer: &Peer, who: &str) -> String {
    assert_eq!(
        consumer.wait(T).code(),
        Some(1),
        "{who}: {}",
        consumer.errors()
    );
    let errors = consumer.errors();
    let first = errors
        .lines()
        .find(|l| l.starts_with("error: "))
        .unwrap_or_default();
    let pid = format!("producer (pid {})", producer.pid());
    assert!(
        first.contains(&pid) && first.contains(IDENTITY_PATH) && first.contains(IDENTITY_ERROR),
        "{who}: the error names the producer, the element and its text: {errors}"
    );
    assert!(
        !errors.contains("without EOS"),
        "{who}: not a bare disconnection: {errors}"
    );
    errors
}

/// The producer fails with identity's error.
fn assert_producer_fails(producer: &mut Peer) {
    assert_eq!(producer.wait(T).code(), Some(1), "{}", producer.errors());
    assert!(
        producer.errors().contains(IDENTITY_ERROR),
        "the producer fails: {}",
        producer.errors()
    );
}

/// The producer's pipeline fails upstream of its fdlinksink (a non-live `identity
/// error-after=60` before it, once both consumers joined): a consumer that encodes (behind a
/// queue, into x264enc) and one that plays in sync both fail with the producer's error.
#[test]
fn an_error_before_the_sink_reaches_independent_consumers() {
    init_gst();
    let dir = TempDir::new("producer-error");
    let sock = dir.socket();
    let mut encoding = Peer::spawn(&[
        "consume",
        &format!(
            "fdlinksrc socket-path={sock} timeout=30000 ! queue ! x264enc speed-preset=ultrafast ! fakesink"
        ),
    ]);
    let mut playing = Peer::spawn(&[
        "consume",
        &format!("fdlinksrc socket-path={sock} timeout=30000 ! fakesink sync=true"),
    ]);
    let mut producer = Peer::spawn(&[
        "produce",
        "--wait-clients",
        "2",
        &format!(
            "videotestsrc pattern=ball ! video/x-raw,format=I420,width=320,height=240,framerate=30/1 ! identity error-after=60 ! fdlinksink socket-path={sock}"
        ),
    ]);
    assert_producer_fails(&mut producer);
    assert_fails_with_producers_error(&mut encoding, &producer, "x264enc consumer");
    assert_fails_with_producers_error(&mut playing, &producer, "sync=true consumer");
}

/// The producer's pipeline fails in another branch (`audiotestsrc ! identity error-after=50`
/// beside the live video into fdlinksink), so no EOS follows the error to the sink. Consumers
/// that post none of the producer's messages (forward-messages=false), one independent, one
/// following its state (mode=follow), learn of it from the error packet that ends their
/// stream.
#[test]
fn an_error_elsewhere_reaches_independent_and_following_consumers() {
    init_gst();
    let dir = TempDir::new("producer-error-branch");
    let sock = dir.socket();
    let mut independent = Peer::spawn(&[
        "consume",
        &format!(
            "fdlinksrc socket-path={sock} timeout=30000 forward-messages=false ! queue ! fakesink"
        ),
    ]);
    let mut follower = Peer::spawn(&[
        "consume",
        "--start-paused",
        &format!(
            "fdlinksrc socket-path={sock} timeout=30000 mode=follow forward-messages=false ! queue ! fakesink"
        ),
    ]);
    let mut producer = Peer::spawn(&[
        "produce",
        "--wait-clients",
        "2",
        &format!(
            "videotestsrc is-live=true pattern=ball ! video/x-raw,format=I420,width=320,height=240,framerate=30/1 ! fdlinksink socket-path={sock} \
             audiotestsrc is-live=true samplesperbuffer=1024 ! identity error-after=50 ! fakesink"
        ),
    ]);
    assert_producer_fails(&mut producer);
    let reported = format!(
        "at {sock} reported an error: its pipeline failed in {IDENTITY_PATH}: {IDENTITY_ERROR}"
    );
    for (consumer, who) in [
        (&mut independent, "independent consumer"),
        (&mut follower, "following consumer"),
    ] {
        let errors = assert_fails_with_producers_error(consumer, &producer, who);
        assert!(
            errors.contains(&reported),
            "{who}: the error packet says what failed: {errors}"
        );
    }
}
