//! JWT signing-key rotation never breaks verification: with 4 s keys and tokens, every fresh
//! token verifies offline against the latest bundle from a FetchJWTBundles stream and from a
//! `JwtSource`, and through ValidateJWTSVID; every earlier token keeps verifying until it
//! expires; the stream delivers each rotation, at most prepared + active + retired keys are
//! published, and retired keys are eventually unpublished.

use std::collections::BTreeSet;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use futures::StreamExt as _;
use spiffe::{JwtBundleSet, JwtSource, JwtSvid};
use tests::jwt::{fetch_all_when_ready, kid_of, kids_of, spiffe_client};
use tests::{Cluster, runtime, unix_now_f64};

#[derive(Debug, Default)]
struct Latest {
    bundle: Option<JwtBundleSet>,
    updates: usize,
    kid_sets: Vec<BTreeSet<String>>,
}

#[test]
fn jwt_key_rotation_never_breaks_offline_verification() {
    let c = Cluster::start(&["--jwt-key-ttl", "4s", "--default-jwt-svid-ttl", "4s"]);
    let id = "spiffe://example.org/jwt/rotation";
    c.server.create_entry(id, &["unix:uid:0"], &[]);
    runtime().block_on(async {
        let client = spiffe_client(&c.agent.endpoint()).await;
        fetch_all_when_ready(&client, &["rot"], 1).await;

        // Hold a FetchJWTBundles stream and keep the latest bundle it delivered.
        let latest = Arc::new(Mutex::new(Latest::default()));
        let mut stream = client
            .stream_jwt_bundles()
            .await
            .expect("stream_jwt_bundles");
        let watcher = {
            let latest = Arc::clone(&latest);
            tokio::spawn(async move {
                while let Some(item) = stream.next().await {
                    let set = item.expect("JWT bundle stream message");
                    let mut l = latest.lock().unwrap();
                    l.kid_sets.push(kids_of(&set));
                    l.bundle = Some(set);
                    l.updates += 1;
                }
            })
        };
        // And a JwtSource, which keeps its own bundle from its own stream.
        let source = JwtSource::builder()
            .endpoint(c.agent.endpoint())
            .initial_sync_timeout(Duration::from_secs(10))
            .build()
            .await
            .expect("JwtSource");
        let first = tests::wait_for(Duration::from_secs(10), || {
            latest.lock().unwrap().bundle.clone()
        })
        .expect("first JWT bundle on the stream");
        let first_kids = kids_of(&first);

        let started = tokio::time::Instant::now();
        let mut checked = 0usize;
        let mut rechecked = 0usize;
        let mut kids_seen = BTreeSet::new();
        let mut failures: Vec<String> = Vec::new();
        let mut outstanding: Vec<(String, i64)> = Vec::new();
        let mut tick = tokio::time::interval(Duration::from_millis(250));
        while started.elapsed() < Duration::from_secs(14) {
            tick.tick().await;
            let at = started.elapsed().as_secs_f64();
            let svid = match client.fetch_jwt_svid(&["rot"], None).await {
                Ok(s) => s,
                Err(e) => {
                    failures.push(format!("{at:.2}s: FetchJWTSVID failed: {e}"));
                    continue;
                }
            };
            let token = svid.token().to_owned();
            let kid = svid.key_id().to_owned();
            let exp = svid.claims().exp();
            kids_seen.insert(kid.clone());
            checked += 1;
            let bundle = latest.lock().unwrap().bundle.clone().unwrap();
            if let Err(e) = JwtSvid::parse_and_validate(&token, &bundle, &["rot"]) {
                failures.push(format!(
                    "{at:.2}s: fresh token (kid {kid}, exp {exp}) fails against the latest \
                     stream bundle {:?}: {e} ({e:?})",
                    kids_of(&bundle)
                ));
            }
            if let Err(e) = JwtSvid::parse_and_validate(&token, &source, &["rot"]) {
                failures.push(format!(
                    "{at:.2}s: fresh token (kid {kid}) fails against JwtSource: {e} ({e:?})"
                ));
            }
            if let Err(e) = client.validate_jwt_token("rot", &token).await {
                failures.push(format!(
                    "{at:.2}s: agent refuses a fresh token (kid {kid}): {e}"
                ));
            }
            // Every token handed out earlier must stay verifiable against the current
            // bundle until it expires (a retired key stays published long enough).
            outstanding.push((token, exp));
            let now = unix_now_f64();
            outstanding.retain(|(_, e)| (*e as f64) > now + 0.5);
            for (t, e) in &outstanding {
                rechecked += 1;
                if let Err(err) = JwtSvid::parse_and_validate(t, &bundle, &["rot"]) {
                    failures.push(format!(
                        "{at:.2}s: earlier token (kid {}, exp {e}) no longer verifies \
                         against {:?}: {err}",
                        kid_of(t),
                        kids_of(&bundle)
                    ));
                }
            }
        }
        let (updates, kid_sets, final_kids) = {
            let l = latest.lock().unwrap();
            (
                l.updates,
                l.kid_sets.clone(),
                kids_of(l.bundle.as_ref().unwrap()),
            )
        };
        assert!(!watcher.is_finished(), "the JWT bundle stream ended early");
        watcher.abort();
        source.shutdown().await;
        let max_keys = kid_sets.iter().map(BTreeSet::len).max().unwrap_or(0);
        println!(
            "rotation: {checked} fresh tokens checked (3 ways each), {rechecked} re-checks of \
             earlier tokens, {} distinct kids seen in tokens, {updates} bundle messages, \
             at most {max_keys} keys published, {} failures",
            kids_seen.len(),
            failures.len()
        );
        assert!(
            failures.is_empty(),
            "{} verification failures:\n{}\nbundle kid sets in order: {kid_sets:?}",
            failures.len(),
            failures.join("\n")
        );
        assert!(checked >= 40, "only {checked} tokens checked in 14 s");
        assert!(
            kids_seen.len() >= 2,
            "no rotation: tokens were signed by {kids_seen:?}; bundles {kid_sets:?}"
        );
        assert!(
            updates >= 2,
            "bundle stream delivered rotations ({updates})"
        );
        assert!(
            first_kids.iter().all(|k| !final_kids.contains(k)),
            "retired keys are eventually unpublished: first {first_kids:?}, last {final_kids:?}"
        );
        assert!(
            max_keys <= 3,
            "prepared + active + retired at most: {kid_sets:?}"
        );
    });
}
