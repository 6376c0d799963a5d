//! Domain verification (`server::domains`) against a real DNS server (dnsmasq, see
//! `tests/src/dns.rs`): the TXT lookup, every verification outcome, no caching between
//! checks, and a bounded failure when the server is gone or silent.
#![allow(
    missing_docs,
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    reason = "test code"
)]

use std::net::{Ipv4Addr, SocketAddr, UdpSocket};
use std::time::Duration;

use server::domains::{
    Challenge, DnsResolver, DomainName, LookupError, Verification, record_name, verify,
};
use tests::dns::DnsServer;
use tests::{runtime, wait_for};
use tokio::time::Instant;

/// A failed lookup must end well within this (2 attempts of 3 s, plus set-up).
const FAILURE_BOUND: Duration = Duration::from_secs(10);

fn domain(s: &str) -> DomainName {
    s.parse().unwrap()
}

fn resolver(dns: &DnsServer) -> DnsResolver {
    DnsResolver::new(Some(dns.addr())).unwrap()
}

/// Waits (briefly: dnsmasq writes its log after answering) until `n` queries for `name`
/// reached `dns`, and fails the test with the count otherwise.
fn assert_queries(dns: &DnsServer, name: &str, n: usize) {
    let reached = wait_for(Duration::from_secs(2), || {
        (dns.queries(name) == n).then_some(())
    });
    assert!(
        reached.is_some(),
        "expected {n} queries for {name}, dnsmasq logged {}",
        dns.queries(name)
    );
}

#[test]
fn the_published_challenge_verifies() {
    let d = domain("example.org");
    let challenge = Challenge::generate();
    let record = record_name(&d);
    let dns = DnsServer::start(&[
        (record.as_str(), challenge.as_str()),
        // Other values at the record (a previous challenge, say) do not matter.
        (record.as_str(), "tessera-domain-verification=old"),
    ]);
    let rt = runtime();
    let r = resolver(&dns);
    assert_eq!(
        rt.block_on(verify(&r, &d, challenge.as_str())),
        Verification::Verified
    );
    let mut values = rt.block_on(r.txt(&record)).unwrap();
    values.sort();
    let mut expected = vec![
        challenge.to_string(),
        "tessera-domain-verification=old".to_owned(),
    ];
    expected.sort();
    assert_eq!(values, expected);
}

#[test]
fn another_value_is_a_mismatch() {
    let d = domain("example.org");
    let published = Challenge::generate();
    let expected = Challenge::generate();
    let record = record_name(&d);
    let dns = DnsServer::start(&[(record.as_str(), published.as_str())]);
    let rt = runtime();
    let r = resolver(&dns);
    let outcome = rt.block_on(verify(&r, &d, expected.as_str()));
    assert_eq!(outcome, Verification::Mismatch { found: 1 });
    assert_eq!(
        outcome.describe(&d),
        "TXT record _tessera-challenge.example.org has 1 value, none equal to the challenge"
    );

    // A prefix or an extension of the challenge is not the challenge.
    let longer = format!("{expected}x");
    let shorter = &expected.as_str()[..expected.as_str().len() - 1];
    let mut dns = dns;
    dns.set_records(&[(record.as_str(), &longer), (record.as_str(), shorter)]);
    assert_eq!(
        rt.block_on(verify(&r, &d, expected.as_str())),
        Verification::Mismatch { found: 2 }
    );
}

#[test]
fn no_record_is_missing() {
    let d = domain("example.org");
    let challenge = Challenge::generate();
    // A record for another domain, and one for a subdomain: neither is ours.
    let dns = DnsServer::start(&[
        ("_tessera-challenge.example.net", challenge.as_str()),
        ("_tessera-challenge.a.example.org", challenge.as_str()),
    ]);
    let rt = runtime();
    let r = resolver(&dns);
    let outcome = rt.block_on(verify(&r, &d, challenge.as_str()));
    assert_eq!(outcome, Verification::Missing);
    assert_eq!(
        outcome.describe(&d),
        "TXT record _tessera-challenge.example.org not found"
    );
    // A name that exists (records under it) but has no TXT record of its own is empty too.
    assert_eq!(
        rt.block_on(r.txt("a.example.org")).unwrap(),
        Vec::<String>::new()
    );
}

#[test]
fn character_strings_of_one_record_are_joined() {
    let d = domain("example.org");
    let challenge = Challenge::generate();
    let (head, tail) = challenge.as_str().split_at(20);
    let record = record_name(&d);
    // One record with two character-strings (dnsmasq splits the value at the comma).
    let both = format!("{head},{tail}");
    let dns = DnsServer::start(&[(record.as_str(), &both)]);
    let rt = runtime();
    let r = resolver(&dns);
    assert_eq!(
        rt.block_on(r.txt(&record)).unwrap(),
        vec![challenge.to_string()]
    );
    assert_eq!(
        rt.block_on(verify(&r, &d, challenge.as_str())),
        Verification::Verified
    );
}

#[test]
fn every_check_asks_the_server_again() {
    let d = domain("team.example.org");
    let challenge = Challenge::generate();
    let record = record_name(&d);
    let mut dns = DnsServer::start(&[(record.as_str(), challenge.as_str())]);
    let rt = runtime();
    let r = resolver(&dns);

    assert_eq!(
        rt.block_on(verify(&r, &d, challenge.as_str())),
        Verification::Verified
    );
    assert_eq!(
        rt.block_on(verify(&r, &d, challenge.as_str())),
        Verification::Verified
    );
    // Both checks reached the server although the answer's TTL is an hour.
    assert_queries(&dns, &record, 2);

    // The record is removed: the next check says so at once.
    dns.set_records(&[]);
    assert_eq!(
        rt.block_on(verify(&r, &d, challenge.as_str())),
        Verification::Missing
    );
    assert_eq!(
        rt.block_on(verify(&r, &d, challenge.as_str())),
        Verification::Missing
    );
    assert_queries(&dns, &record, 4);

    // Published again (negative answers are not cached either), then replaced.
    dns.set_records(&[(record.as_str(), challenge.as_str())]);
    assert_eq!(
        rt.block_on(verify(&r, &d, challenge.as_str())),
        Verification::Verified
    );
    dns.set_records(&[(record.as_str(), "something else")]);
    assert_eq!(
        rt.block_on(verify(&r, &d, challenge.as_str())),
        Verification::Mismatch { found: 1 }
    );
    assert_queries(&dns, &record, 6);
}

#[test]
fn a_server_that_is_down_fails_within_seconds() {
    let d = domain("example.org");
    let challenge = Challenge::generate();
    let record = record_name(&d);
    let mut dns = DnsServer::start(&[(record.as_str(), challenge.as_str())]);
    let rt = runtime();
    let r = resolver(&dns);
    assert_eq!(
        rt.block_on(verify(&r, &d, challenge.as_str())),
        Verification::Verified
    );

    dns.stop();
    let started = Instant::now();
    let outcome = rt.block_on(verify(&r, &d, challenge.as_str()));
    let took = started.elapsed();
    let Verification::Failed(why) = &outcome else {
        panic!("expected a failure with the server down, got {outcome:?}");
    };
    assert!(!why.is_empty());
    assert!(took < FAILURE_BOUND, "took {took:?}");
    assert!(
        outcome
            .describe(&d)
            .starts_with("could not check TXT record _tessera-challenge.example.org: "),
        "{}",
        outcome.describe(&d)
    );
    let err = rt.block_on(r.txt(&record)).unwrap_err();
    assert!(
        err.to_string()
            .contains("DNS lookup of TXT _tessera-challenge.example.org"),
        "{err}"
    );

    // Back up: verified again.
    dns.set_records(&[(record.as_str(), challenge.as_str())]);
    assert_eq!(
        rt.block_on(verify(&r, &d, challenge.as_str())),
        Verification::Verified
    );
}

#[test]
fn a_silent_server_times_out_within_seconds() {
    // A UDP socket that receives queries and never answers.
    let silent = UdpSocket::bind((Ipv4Addr::LOCALHOST, 0)).unwrap();
    let addr: SocketAddr = silent.local_addr().unwrap();
    let rt = runtime();
    let r = DnsResolver::new(Some(addr)).unwrap();
    let started = Instant::now();
    let outcome = rt.block_on(verify(&r, &domain("example.org"), "x"));
    let took = started.elapsed();
    assert!(matches!(outcome, Verification::Failed(_)), "{outcome:?}");
    assert!(took < FAILURE_BOUND, "took {took:?}");
    // It waited for the answer (at least one query timeout) rather than giving up early.
    assert!(took >= Duration::from_secs(2), "took {took:?}");
    let err = rt.block_on(r.txt("_tessera-challenge.example.org"));
    assert!(
        matches!(
            err,
            Err(LookupError::Failed { .. } | LookupError::TimedOut { .. })
        ),
        "{err:?}"
    );
    drop(silent);
}
