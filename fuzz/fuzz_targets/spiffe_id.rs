//! SPIFFE IDs, trust domains, selectors and selector sets from arbitrary text.
//!
//! Each line of the input is tried as every kind of value. Properties: nothing panics;
//! whatever parses prints back to exactly its input (the parsers are strict, so the
//! accepted form is the canonical one) and parses again to the same value; the same holds
//! through every other constructor and through serde.
#![no_main]

use common::{Selector, SelectorSet, SpiffeId, TrustDomain};
use libfuzzer_sys::fuzz_target;

fn check_spiffe_id(line: &str) {
    let Ok(id) = SpiffeId::new(line) else {
        return;
    };
    assert_eq!(id.as_str(), line, "a SPIFFE ID is kept exactly as given");
    assert_eq!(id.to_string(), line);
    assert_eq!(SpiffeId::new(id.as_str()).as_ref(), Ok(&id));
    let td = id.trust_domain();
    assert_eq!(td.name(), id.trust_domain_name());
    assert_eq!(TrustDomain::new(td.name()).as_ref(), Ok(&td));
    assert!(id.is_member_of(&td));
    assert_eq!(SpiffeId::from_parts(&td, id.path()).as_ref(), Ok(&id));
    assert_eq!(id.is_trust_domain_id(), id.path().is_empty());
    if id.is_trust_domain_id() {
        assert_eq!(TrustDomain::new(line).as_ref(), Ok(&td));
        assert_eq!(td.id(), id);
    }
    let json = serde_json::to_string(&id).expect("a SPIFFE ID serialises");
    let back: SpiffeId = serde_json::from_str(&json).expect("and deserialises");
    assert_eq!(back, id);
}

fn check_trust_domain(line: &str) {
    let Ok(td) = TrustDomain::new(line) else {
        return;
    };
    assert_eq!(TrustDomain::new(td.name()).as_ref(), Ok(&td));
    assert_eq!(TrustDomain::new(&td.id_string()).as_ref(), Ok(&td));
    assert_eq!(td.to_string(), td.name());
    let id = SpiffeId::new(&td.id_string()).expect("a trust domain's ID parses");
    assert_eq!(id, td.id());
    assert!(id.is_trust_domain_id());
    assert!(
        line == td.name() || line == td.id_string(),
        "{line:?} accepted as trust domain {td}: only the bare name or its ID may parse"
    );
}

fn check_selector(line: &str) -> Option<Selector> {
    let selector: Selector = line.parse().ok()?;
    assert_eq!(
        selector.to_string(),
        line,
        "a selector prints as it was given"
    );
    assert_eq!(line.parse::<Selector>().as_ref(), Ok(&selector));
    assert_eq!(
        Selector::new(selector.key(), selector.value()).as_ref(),
        Ok(&selector)
    );
    assert_eq!(selector.key().kind(), selector.kind());
    Some(selector)
}

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let mut selectors = Vec::new();
    for line in text.split('\n') {
        check_spiffe_id(line);
        check_trust_domain(line);
        selectors.extend(check_selector(line));
    }
    let set: SelectorSet = selectors.iter().cloned().collect();
    assert!(set.len() <= selectors.len());
    for s in &selectors {
        assert!(set.contains(s));
    }
    let json = serde_json::to_string(&set).expect("a selector set serialises");
    let back: SelectorSet = serde_json::from_str(&json).expect("and deserialises");
    assert_eq!(back, set);
    let half: SelectorSet = selectors.iter().step_by(2).cloned().collect();
    assert!(half.is_subset_of(&set));
    assert_eq!(half.entry_matches(&set), !half.is_empty());
    assert!(
        !SelectorSet::new().entry_matches(&set),
        "an empty entry matches nobody"
    );
});
