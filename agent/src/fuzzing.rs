//! Entry points for the fuzz targets (`fuzz/`, feature `testing`): the agent's parsers of
//! untrusted bytes that are not reachable through its public API. Not a stable interface.

use common::proto::tessera::SyncUpdate;
use prost::Message as _;

use crate::cache::Cache;
use crate::workload_api::authority;

/// The largest number of bytes one Workload API connection holds in the `:authority`
/// repair, whatever the client sends.
pub const MAX_BUFFERED: usize = authority::MAX_BUFFERED;

/// The `:authority` repair of one Workload API connection, bytes in, bytes out.
#[derive(Debug, Default)]
pub struct AuthorityRewriter(authority::AuthorityRewriter);

impl AuthorityRewriter {
    /// Feeds bytes read from the client; appends what the HTTP/2 server would read to `out`.
    pub fn feed(&mut self, data: &[u8], out: &mut Vec<u8>) {
        self.0.feed(data, out);
    }

    /// Bytes held for this connection (partial frame and collected header block).
    pub fn buffered(&self) -> usize {
        self.0.buffered()
    }
}

/// Whether the `:authority` repair's cheap scan vouches for `block` as the first header
/// block of a connection: every `:authority` field in it is a valid authority, so the
/// connection is forwarded without the full decoder.
pub fn authority_scan_vouches(block: &[u8]) -> bool {
    authority::first_block_vouched(block)
}

/// Applies one message of the sync stream to `cache` as the rotation worker does, with the
/// bundle it carries (if valid) set in the cache instead of written to disk.
pub fn apply_sync_update(cache: &Cache, update: SyncUpdate) {
    crate::rotation::apply_update(cache, update, |bundle| {
        cache.update(|s| s.bundle = Some(std::sync::Arc::new(bundle)));
    });
}

/// `updates` as the rotation worker receives them from the server: through
/// [`crate::node_api::whole_snapshots`], which puts a snapshot sent in parts back together.
/// A message it refuses ends the sequence, as it ends the stream.
pub fn as_received(updates: Vec<SyncUpdate>) -> Vec<SyncUpdate> {
    use futures::StreamExt as _;
    let stream = futures::stream::iter(updates.into_iter().map(Ok)).boxed();
    futures::executor::block_on(
        crate::node_api::whole_snapshots(stream, crate::server_client::MAX_SERVER_MESSAGE)
            .take_while(|r| std::future::ready(r.is_ok()))
            .filter_map(|r| std::future::ready(r.ok()))
            .collect(),
    )
}

/// The fuzz input of the sync target: messages as the stream carries them, each preceded by
/// its length (a protobuf varint).
pub fn encode_sync_messages(updates: &[SyncUpdate]) -> Vec<u8> {
    let mut out = Vec::new();
    for u in updates {
        out.extend(u.encode_length_delimited_to_vec());
    }
    out
}

/// Reads the messages of [`encode_sync_messages`] up to the first that does not decode.
pub fn decode_sync_messages(mut bytes: &[u8]) -> Vec<SyncUpdate> {
    let mut updates = Vec::new();
    while !bytes.is_empty() {
        match SyncUpdate::decode_length_delimited(&mut bytes) {
            Ok(u) => updates.push(u),
            Err(_) => break,
        }
    }
    updates
}

/// The selectors the cgroup attestor derives from the text of a `/proc/<pid>/cgroup` file,
/// as strings; `None` when it refuses the file.
pub fn cgroup_selectors(text: &str) -> Option<Vec<String>> {
    crate::attestation::cgroup::selectors_of(text)
        .ok()
        .map(|set| set.iter().map(ToString::to_string).collect())
}
