//! `--render-log`: one `render` line per buffer each fakesink renders, saying how late it was
//! rendered against its running time: what A/V sync is made of.

use gst::prelude::*;
use gst_base::prelude::*;

use crate::report::print_line;

/// Makes every fakesink of `pipeline` print `render NAME pts=P late-us=L` as it renders a
/// buffer: L is the running time of the clock at render minus the buffer's running time, in
/// µs (a sink that syncs renders at its running time plus the pipeline's latency). The
/// handoff signal comes after the sink waited for the clock, which a pad probe (before the
/// wait) cannot see.
pub(crate) fn add_render_log(pipeline: &gst::Pipeline) -> usize {
    let sinks: Vec<gst::Element> = pipeline
        .iterate_recurse()
        .into_iter()
        .filter_map(Result::ok)
        .filter(|e| e.factory().is_some_and(|f| f.name() == "fakesink"))
        .collect();
    for sink in &sinks {
        sink.set_property("signal-handoffs", true);
        sink.connect("handoff", false, |args| {
            let sink = args[0].get::<gst_base::BaseSink>().ok()?;
            let pts = args[1].get::<gst::Buffer>().ok()?.pts()?;
            let (clock, base) = (sink.clock()?, sink.base_time()?);
            let segment = sink.segment();
            let running = segment
                .downcast_ref::<gst::ClockTime>()?
                .to_running_time(pts)?;
            let now = clock.time().nseconds() as i128 - base.nseconds() as i128;
            let late_us = (now - running.nseconds() as i128) / 1000;
            print_line(&format!(
                "render {} pts={} late-us={late_us}",
                sink.name(),
                pts.nseconds()
            ));
            None
        });
    }
    sinks.len()
}
