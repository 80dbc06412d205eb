//! Structure texts from a peer, parsed within the limits on their size and depth
//! (`fdlink::structure_limits`) and on the names they add to the process.
//!
//! GStreamer's parser interns every structure name, field name and caps feature it reads as a
//! GQuark, and GLib keeps quarks for the life of the process. A peer that sends new names in
//! every packet would grow its victim without bound, however small each packet is. So the
//! names a text would add are counted before it is parsed: at most [`MAX_NEW_NAMES_PER_TEXT`]
//! in one text, and at most [`MAX_NEW_NAMES`] names ([`MAX_NEW_NAME_BYTES`] bytes) from all
//! peers in the life of the process. A name this process knows already costs nothing, so
//! streams that repeat their names, as every honest one does, never reach the budget.

use std::ffi::CString;
use std::sync::Mutex;

use fdlink::structure_limits::interned_names;
use gst::glib;

/// Most names new to this process that one text from a peer may bring.
pub const MAX_NEW_NAMES_PER_TEXT: usize = 256;
/// Most names peers may add to this process in its life.
pub const MAX_NEW_NAMES: usize = 65_536;
/// Most bytes of names peers may add to this process in its life.
pub const MAX_NEW_NAME_BYTES: usize = 4 << 20;

/// What peers have added to the process so far.
static PROCESS_BUDGET: NameBudget = NameBudget::new(MAX_NEW_NAMES, MAX_NEW_NAME_BYTES);

/// Parses a structure or caps text from a peer: refused past the size and depth limits, or
/// when it would add more names than allowed; otherwise `parse`'s result.
pub fn parse_from_peer<T>(text: &str, parse: impl FnOnce(&str) -> T) -> Result<T, String> {
    PROCESS_BUDGET.parse(text, parse)
}

/// Interns `name` if the budget allows: for a single name from a peer, such as an error's
/// domain.
pub fn quark_from_peer(name: &str) -> Result<glib::Quark, String> {
    PROCESS_BUDGET.quark(name)
}

/// A count of the names peers added, against its limits.
struct NameBudget {
    max_names: usize,
    max_bytes: usize,
    /// Names and bytes added so far.
    spent: Mutex<(usize, usize)>,
}

impl NameBudget {
    const fn new(max_names: usize, max_bytes: usize) -> Self {
        NameBudget {
            max_names,
            max_bytes,
            spent: Mutex::new((0, 0)),
        }
    }

    fn parse<T>(&self, text: &str, parse: impl FnOnce(&str) -> T) -> Result<T, String> {
        let names = interned_names(text).map_err(|e| e.to_string())?;
        let new = self.admit(&names)?;
        let parsed = parse(text);
        self.charge(&new);
        Ok(parsed)
    }

    fn quark(&self, name: &str) -> Result<glib::Quark, String> {
        let new = self.admit(&[name.as_bytes().to_vec()])?;
        let quark = glib::Quark::from_str(name);
        self.charge(&new);
        Ok(quark)
    }

    /// The names not interned yet, if the text may bring them; refused past the limits.
    fn admit(&self, names: &[Vec<u8>]) -> Result<Vec<CString>, String> {
        let mut new: Vec<CString> = names
            .iter()
            .filter_map(|n| CString::new(n.as_slice()).ok())
            .filter(|n| !is_interned(n))
            .collect();
        new.sort_unstable();
        new.dedup();
        if new.len() > MAX_NEW_NAMES_PER_TEXT {
            return Err(format!(
                "structure brings {} names this process has never seen, more than the limit of \
                 {MAX_NEW_NAMES_PER_TEXT} in one structure (GLib keeps every name for the life \
                 of the process; see docs/protocol.md, Limits on structures)",
                new.len()
            ));
        }
        let bytes: usize = new.iter().map(|n| n.as_bytes().len()).sum();
        let (names_spent, bytes_spent) = *self.spent.lock().unwrap();
        if !new.is_empty()
            && (names_spent + new.len() > self.max_names || bytes_spent + bytes > self.max_bytes)
        {
            return Err(format!(
                "structure brings {} names this process has never seen, and peers have added \
                 {names_spent} names ({bytes_spent} bytes) already, the limit in the life of the \
                 process being {} names or {} bytes (GLib keeps every name; see \
                 docs/protocol.md, Limits on structures)",
                new.len(),
                self.max_names,
                self.max_bytes
            ));
        }
        Ok(new)
    }

    /// Counts those of `new` that parsing interned: a word that was no name costs nothing.
    fn charge(&self, new: &[CString]) {
        let (names, bytes) = new
            .iter()
            .filter(|n| is_interned(n))
            .fold((0, 0), |(c, b), n| (c + 1, b + n.as_bytes().len()));
        let mut spent = self.spent.lock().unwrap();
        spent.0 += names;
        spent.1 += bytes;
    }

    #[cfg(test)]
    fn spent(&self) -> (usize, usize) {
        *self.spent.lock().unwrap()
    }
}

fn is_interned(name: &CString) -> bool {
    // SAFETY: `name` is a NUL-terminated string; g_quark_try_string only looks it up.
    unsafe { glib::ffi::g_quark_try_string(name.as_ptr()) != 0 }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A prefix no other test interns, so the names below are new to the process.
    fn unique(prefix: &str, n: usize) -> Vec<String> {
        (0..n).map(|i| format!("{prefix}-name-{i}")).collect()
    }

    fn structure(name: &str, fields: &[String]) -> String {
        let fields: Vec<String> = fields.iter().map(|f| format!("{f}=(int)1")).collect();
        format!("{name}, {};", fields.join(", "))
    }

    #[test]
    fn names_new_to_the_process_are_counted_once() {
        gst::init().unwrap();
        let budget = NameBudget::new(1000, 1 << 20);
        let fields = unique("counted", 100);
        let text = structure("counted-structure", &fields);
        let s = budget
            .parse(&text, |t| t.parse::<gst::Structure>())
            .unwrap()
            .unwrap();
        assert_eq!(s.n_fields(), 100);
        // The structure's name and its 100 fields: interned by the parse, counted. GStreamer
        // 1.26 keeps them as GstIdStr, not quarks: it interns nothing, nothing is counted.
        let counted = if parser_interns() { 101 } else { 0 };
        assert_eq!(budget.spent().0, counted);
        // Known now: the same text again costs nothing.
        budget
            .parse(&text, |t| t.parse::<gst::Structure>())
            .unwrap()
            .unwrap();
        assert_eq!(budget.spent().0, counted);
        // A quoted string's first word is looked at but, never interned, costs nothing.
        budget
            .parse(
                "counted-structure, counted-name-0=(string)\"counted-plain-word and more\";",
                |t| t.parse::<gst::Structure>(),
            )
            .unwrap()
            .unwrap();
        assert_eq!(budget.spent().0, counted);
    }

    /// Whether this GStreamer's parser interns the names it reads (before 1.26).
    fn parser_interns() -> bool {
        let _ = "probe-structure, parser-interns-probe=(int)1;".parse::<gst::Structure>();
        is_interned(&CString::new("parser-interns-probe").unwrap())
    }

    /// `text` parsed, its names interned as GStreamer before 1.26 interns them, so the
    /// budget's arithmetic is tested on every version.
    fn parse_interning(text: &str) -> gst::Structure {
        for name in interned_names(text).unwrap() {
            glib::Quark::from_str(std::str::from_utf8(&name).unwrap());
        }
        text.parse().unwrap()
    }

    #[test]
    fn too_many_new_names_in_one_text_are_refused_unparsed() {
        gst::init().unwrap();
        let budget = NameBudget::new(100_000, 16 << 20);
        let fields = unique("burst", MAX_NEW_NAMES_PER_TEXT + 1);
        let text = structure("burst-structure", &fields);
        let err = budget.parse(&text, |_| unreachable!()).unwrap_err();
        assert!(err.contains("more than the limit of 256"), "{err}");
        // Nothing was interned.
        assert!(!is_interned(&CString::new(fields[0].as_str()).unwrap()));
        assert_eq!(budget.spent(), (0, 0));
    }

    #[test]
    fn the_process_budget_ends_new_names_but_not_known_ones() {
        gst::init().unwrap();
        let budget = NameBudget::new(250, 1 << 20);
        for round in 0..2 {
            let text = structure(
                &format!("spend-{round}"),
                &unique(&format!("spend{round}"), 99),
            );
            budget.parse(&text, parse_interning).unwrap();
        }
        assert_eq!(budget.spent().0, 200);
        let text = structure("spend-2", &unique("spend2", 99));
        let err = budget.parse(&text, |_| unreachable!()).unwrap_err();
        assert!(err.contains("limit in the life of the process"), "{err}");
        // Known names still parse: an honest stream goes on.
        let known = structure("spend-0", &unique("spend0", 99));
        budget.parse(&known, parse_interning).unwrap();
        // Caps features and nested structures' names are names too.
        let caps = "video/x-raw(memory:spend-feature), nested=(structure)\"spend-inner\\,\\ a\\=\\(int\\)1\\;\"";
        let names = interned_names(caps).unwrap();
        for name in [
            "video/x-raw",
            "memory:spend-feature",
            "nested",
            "spend-inner",
            "a",
        ] {
            assert!(
                names.iter().any(|n| n == name.as_bytes()),
                "{name} not found in {names:?}"
            );
        }
    }

    #[test]
    fn a_single_name_is_counted_and_refused_past_the_budget() {
        gst::init().unwrap();
        let budget = NameBudget::new(1, 1 << 20);
        let quark = budget.quark("single-domain-from-a-peer-quark").unwrap();
        assert_eq!(quark.as_str(), "single-domain-from-a-peer-quark");
        assert_eq!(budget.spent().0, 1);
        let err = budget
            .quark("another-domain-from-a-peer-quark")
            .unwrap_err();
        assert!(err.contains("limit in the life of the process"), "{err}");
        assert!(budget.quark("single-domain-from-a-peer-quark").is_ok());
    }
}
