//! BaseSink's preroll as `prepare` sees it, which is all fdlinksink needs of it (gstreamer-rs
//! binds no `preroll`).
//!
//! In GStreamer 1.22's libs/gst/base/gstbasesink.c, `gst_base_sink_chain_unlocked` handles a
//! buffer with BaseSink's PREROLL_LOCK held. As gstreamer-rs always sets `prepare`, it first
//! runs `gst_base_sink_do_preroll`, which, while `need_preroll` is set, calls `prepare` and
//! `preroll` with the buffer, commits the state (ASYNC_DONE) and waits for PLAYING. Then it
//! drops the buffer if it is late (only with `max-lateness` set; counted in `dropped`), or
//! calls `prepare` again, syncs on the clock (`do_sync`, where a PLAYING → PAUSED change wakes
//! it to preroll on that buffer: `prepare` with `need_preroll` set once more) and calls
//! `render`. So `prepare` with `need_preroll` set is BaseSink prerolling on the buffer, and the
//! next `render` is given that buffer unless `dropped` changed in between.

use gst::glib;
use gst::prelude::*;
use gst_base::prelude::*;

/// Whether BaseSink calls `prepare` to preroll on the buffer (true) or to render it (false).
///
/// # Safety
///
/// Call only from `prepare`: BaseSink calls it with its PREROLL_LOCK held, the lock that
/// guards `need_preroll`.
pub(super) unsafe fn prerolls(sink: &gst_base::BaseSink) -> bool {
    // SAFETY: `sink` is a live GstBaseSink, so its instance struct is valid for reads;
    // `need_preroll` is a protected field of that public struct, written only with
    // PREROLL_LOCK held, and the caller holds it (see # Safety).
    unsafe { (*sink.as_ptr()).need_preroll != glib::ffi::GFALSE }
}

/// The preroll frame went out from `prepare`: the render of that buffer must not send it again.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) struct PrerollSent {
    /// BaseSink's `dropped` count when BaseSink prerolled on the buffer.
    dropped: u64,
}

impl PrerollSent {
    /// Marks the buffer BaseSink prerolls on now as sent.
    pub(super) fn now(sink: &gst_base::BaseSink) -> PrerollSent {
        PrerollSent {
            dropped: dropped(sink),
        }
    }

    /// Whether the buffer `render` is given now, the first render since `self`, is the one
    /// that was sent: it is, unless BaseSink dropped that one as late.
    pub(super) fn is_rendered_now(self, sink: &gst_base::BaseSink) -> bool {
        dropped(sink) == self.dropped
    }
}

/// Buffers BaseSink dropped as late since it last reset its QoS counters (a flush, a pause).
fn dropped(sink: &gst_base::BaseSink) -> u64 {
    sink.stats().get::<u64>("dropped").unwrap_or(0)
}

#[cfg(test)]
mod tests {
    use std::sync::Mutex;

    use gst::glib;
    use gst::prelude::*;
    use gst::subclass::prelude::*;
    use gst_base::subclass::prelude::*;

    mod imp {
        use super::*;

        /// Records, for each `prepare`, whether BaseSink prerolls.
        #[derive(Default)]
        pub struct PrepareRecorder {
            pub prerolls: Mutex<Vec<bool>>,
        }

        #[glib::object_subclass]
        impl ObjectSubclass for PrepareRecorder {
            const NAME: &'static str = "FdlinkTestPrepareRecorder";
            type Type = super::PrepareRecorder;
            type ParentType = gst_base::BaseSink;
        }

        impl ObjectImpl for PrepareRecorder {}
        impl GstObjectImpl for PrepareRecorder {}

        impl ElementImpl for PrepareRecorder {
            fn pad_templates() -> &'static [gst::PadTemplate] {
                static TEMPLATES: std::sync::LazyLock<Vec<gst::PadTemplate>> =
                    std::sync::LazyLock::new(|| {
                        vec![
                            gst::PadTemplate::new(
                                "sink",
                                gst::PadDirection::Sink,
                                gst::PadPresence::Always,
                                &gst::Caps::new_any(),
                            )
                            .unwrap(),
                        ]
                    });
                TEMPLATES.as_ref()
            }
        }

        impl BaseSinkImpl for PrepareRecorder {
            fn prepare(&self, _: &gst::Buffer) -> Result<gst::FlowSuccess, gst::FlowError> {
                // SAFETY: this is prepare, called with BaseSink's PREROLL_LOCK held.
                let prerolls = unsafe { super::super::prerolls(self.obj().upcast_ref()) };
                self.prerolls.lock().unwrap().push(prerolls);
                Ok(gst::FlowSuccess::Ok)
            }

            fn render(&self, _: &gst::Buffer) -> Result<gst::FlowSuccess, gst::FlowError> {
                Ok(gst::FlowSuccess::Ok)
            }
        }
    }

    glib::wrapper! {
        pub struct PrepareRecorder(ObjectSubclass<imp::PrepareRecorder>)
            @extends gst_base::BaseSink, gst::Element, gst::Object;
    }

    /// BaseSink prerolls on the first buffer in `prepare` (with `need_preroll` set), then
    /// calls `prepare` for it again when it plays, and once for every later buffer.
    #[test]
    fn prepare_tells_the_preroll_from_the_render() {
        gst::init().unwrap();
        let pipeline = gst::Pipeline::new();
        let src = gst::ElementFactory::make("fakesrc")
            .property("num-buffers", 2)
            .build()
            .unwrap();
        let sink = glib::Object::new::<PrepareRecorder>();
        pipeline.add_many([&src, sink.upcast_ref()]).unwrap();
        src.link(&sink).unwrap();

        pipeline.set_state(gst::State::Paused).unwrap();
        let (paused, _, _) = pipeline.state(gst::ClockTime::from_seconds(5));
        assert_eq!(paused, Ok(gst::StateChangeSuccess::Success));
        assert_eq!(*sink.imp().prerolls.lock().unwrap(), [true]);
        // Prerolled: the next render is the prerolled buffer's, and nothing was dropped.
        let sent = super::PrerollSent::now(sink.upcast_ref());

        pipeline.set_state(gst::State::Playing).unwrap();
        let bus = pipeline.bus().unwrap();
        let eos = bus.timed_pop_filtered(
            gst::ClockTime::from_seconds(5),
            &[gst::MessageType::Eos, gst::MessageType::Error],
        );
        assert_eq!(eos.map(|m| m.type_()), Some(gst::MessageType::Eos));
        assert!(sent.is_rendered_now(sink.upcast_ref()));
        pipeline.set_state(gst::State::Null).unwrap();
        assert_eq!(*sink.imp().prerolls.lock().unwrap(), [true, false, false]);
    }
}
