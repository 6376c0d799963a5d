//! The agent↔server seam: everything the agent asks of the server's node API.
//!
//! [`NodeApi`] is one authenticated session with the server (the rotation worker opens
//! the sync stream and signs CSRs through it; the Workload API mints JWT-SVIDs and starts
//! tasks through it). [`NodeConnector`] opens sessions as a given agent identity: a new
//! one after every renewal of the agent SVID, an anonymous one for the first attestation.
//! The real implementation is the tonic client of [`crate::server_client`]; tests use the
//! in-process `testing::FakeNode`, which signs with a real throwaway CA.
//!
//! Errors are the server's `tonic::Status`: callers classify them by code (a refusal of
//! the agent is `PermissionDenied`; anything else is worth retrying).

use std::fmt::Debug;
use std::sync::Arc;

use common::proto::tessera::node_client::NodeClient;
use common::proto::tessera::{
    AttestAgentRequest, AttestAgentResponse, CsrForEntry, Entry, MintJwtSvidRequest,
    MintJwtSvidResponse, NodeBeginTaskRequest, NodeEndTaskRequest, ProvisionEntryRequest,
    RenewAgentRequest, RenewAgentResponse, SignX509SvidsRequest, SignedX509Svid, SyncRequest,
    SyncUpdate, Task, TaskTokenUse, UsageReport, UsageReportAck, sync_update,
};
use common::{BundleCell, TrustDomain, X509Svid};
use futures::StreamExt as _;
use futures::stream::BoxStream;
use tonic::Status;
use tonic::transport::Channel;

use crate::server_client::{self, ClientError};

/// The server's push stream of entry, bundle and revocation changes.
pub type SyncStream = BoxStream<'static, Result<SyncUpdate, Status>>;

/// The most entries the agent takes in one sync message: a larger snapshot comes in parts
/// (`SyncRequest.snapshot_part_entries`).
///
/// Why: the gRPC stream's receive buffer grows to the largest message it has held and
/// keeps that size for the life of the stream. A snapshot of 10,000 entries in one
/// message is about 1.6 MB, kept for as long as the agent stays connected (some 160
/// bytes per cached entry, beside the entry itself). 256 entries are about 40 KB.
const SNAPSHOT_PART_ENTRIES: u32 = 256;

/// `stream` with every snapshot whole: the parts of a snapshot sent in parts (see
/// `SyncSnapshot.more`) are put back together and come out as one snapshot once its last
/// part is in. Nothing of a snapshot comes out before that, so the cache never holds part
/// of one; a stream that ends, or fails, in the middle of a snapshot drops the parts
/// received (the next stream sends it again). Anything but a further part in the middle of
/// a snapshot, or parts that add up to more than `max_bytes`, is the server's error and
/// ends the stream with it.
pub(crate) fn whole_snapshots(stream: SyncStream, max_bytes: usize) -> SyncStream {
    struct Assembly {
        stream: SyncStream,
        /// The parts received so far of a snapshot sent in parts, as one, their size and
        /// their number.
        partial: Option<(SyncUpdate, usize, usize)>,
        max_bytes: usize,
        ended: bool,
    }
    let next = |mut a: Assembly| async move {
        if a.ended {
            return None;
        }
        loop {
            let item = match a.stream.next().await? {
                Ok(update) => update,
                Err(status) => {
                    // Whatever comes after a failure is not the rest of the snapshot.
                    a.partial = None;
                    return Some((Err(status), a));
                }
            };
            // Sizes are counted only for parts: any other message passes without a walk.
            let size = |u: &SyncUpdate| prost::Message::encoded_len(u);
            let is_part = |u: &SyncUpdate| matches!(&u.update, Some(sync_update::Update::Snapshot(s)) if s.more);
            let (whole, so_far, parts) = match a.partial.take() {
                None if !is_part(&item) => return Some((Ok(item), a)),
                None => {
                    let size = size(&item);
                    (item, size, 1)
                }
                Some((mut whole, so_far, parts)) => {
                    let size = size(&item);
                    let Some(sync_update::Update::Snapshot(part)) = item.update else {
                        a.ended = true;
                        let error = Status::internal(
                            "the server sent another message in the middle of a snapshot",
                        );
                        return Some((Err(error), a));
                    };
                    if let Some(sync_update::Update::Snapshot(s)) = &mut whole.update {
                        s.entries.extend(part.entries);
                        s.templates.extend(part.templates);
                        s.more = part.more;
                    }
                    whole.cursor = item.cursor;
                    (whole, so_far.saturating_add(size), parts + 1)
                }
            };
            if so_far > a.max_bytes {
                a.ended = true;
                let error = Status::resource_exhausted(format!(
                    "the server's snapshot in parts exceeds {} bytes",
                    a.max_bytes
                ));
                return Some((Err(error), a));
            }
            if is_part(&whole) {
                a.partial = Some((whole, so_far, parts));
                continue;
            }
            if let Some(sync_update::Update::Snapshot(s)) = &whole.update
                && parts > 1
            {
                tracing::info!(
                    parts,
                    entries = s.entries.len(),
                    "snapshot received in parts"
                );
            }
            return Some((Ok(whole), a));
        }
    };
    futures::stream::unfold(
        Assembly {
            stream,
            partial: None,
            max_bytes,
            ended: false,
        },
        next,
    )
    .boxed()
}

/// One session with the server's node API.
#[async_trait::async_trait]
pub trait NodeApi: Debug + Send + Sync {
    /// First contact: a join token and a CSR for the agent SVID (no client certificate).
    async fn attest_agent(&self, req: AttestAgentRequest) -> Result<AttestAgentResponse, Status>;

    /// Renews the agent SVID of this session.
    async fn renew_agent(&self, req: RenewAgentRequest) -> Result<RenewAgentResponse, Status>;

    /// Opens the sync stream: a snapshot (or, given the cursor of the last message applied
    /// on an earlier stream, only what changed since), then every change.
    async fn sync(&self, resume_from: String) -> Result<SyncStream, Status>;

    /// Signs a batch of CSRs, one per entry; a per-entry refusal is in its result's
    /// `error`, a failure of the whole call is an `Err`.
    async fn sign_x509_svids(&self, csrs: Vec<CsrForEntry>) -> Result<Vec<SignedX509Svid>, Status>;

    /// Mints a JWT-SVID for an entry.
    async fn mint_jwt_svid(&self, req: MintJwtSvidRequest) -> Result<MintJwtSvidResponse, Status>;

    /// Starts a task for a workload this agent attested.
    async fn begin_task(&self, req: NodeBeginTaskRequest) -> Result<Task, Status>;

    /// Ends a task a workload started through this agent.
    async fn end_task(&self, req: NodeEndTaskRequest) -> Result<Task, Status>;

    /// Reports that a task's JWT-SVID was validated here (for the audit log).
    async fn record_task_token_use(&self, usage: TaskTokenUse) -> Result<(), Status>;

    /// Reports how the Workload API used this agent's entries since the last report.
    async fn report_usage(&self, report: UsageReport) -> Result<UsageReportAck, Status>;

    /// Asks for the entry of identity template `template_id` for a workload with
    /// `selectors`; it then arrives by sync like any entry.
    async fn provision_entry(&self, req: ProvisionEntryRequest) -> Result<Entry, Status>;
}

/// Opens node API sessions.
pub trait NodeConnector: Debug + Send + Sync {
    /// A session presenting `agent_svid`, or none (only for `attest_agent`). Connecting is
    /// lazy: an unreachable server shows up as failing calls.
    fn connect(&self, agent_svid: Option<&X509Svid>) -> Result<Arc<dyn NodeApi>, ClientError>;
}

/// Connects to the real server over TLS.
#[derive(Debug, Clone)]
pub struct GrpcConnector {
    /// The servers' `host:port`s, tried in turn.
    pub addresses: Vec<String>,
    /// The address that last worked, shared by every session this connector opens.
    pub preferred: server_client::PreferredServer,
    /// Our trust domain (names the server's SPIFFE ID).
    pub trust_domain: TrustDomain,
    /// The current bundle, which authenticates the server.
    pub bundle: BundleCell,
}

impl NodeConnector for GrpcConnector {
    fn connect(&self, agent_svid: Option<&X509Svid>) -> Result<Arc<dyn NodeApi>, ClientError> {
        let client = server_client::connect(
            &self.addresses,
            &self.preferred,
            &self.trust_domain,
            self.bundle.clone(),
            agent_svid,
        )?;
        Ok(Arc::new(client))
    }
}

// tonic clients are cheap handles on one channel; each call clones one because the
// generated methods take `&mut self` (called as `Self::..`: inherent methods come first, the trait's names are the same).

#[async_trait::async_trait]
impl NodeApi for NodeClient<Channel> {
    async fn attest_agent(&self, req: AttestAgentRequest) -> Result<AttestAgentResponse, Status> {
        Ok(Self::attest_agent(&mut self.clone(), req)
            .await?
            .into_inner())
    }

    async fn renew_agent(&self, req: RenewAgentRequest) -> Result<RenewAgentResponse, Status> {
        Ok(Self::renew_agent(&mut self.clone(), req)
            .await?
            .into_inner())
    }

    async fn sync(&self, resume_from: String) -> Result<SyncStream, Status> {
        let req = SyncRequest {
            resume_from,
            snapshot_part_entries: SNAPSHOT_PART_ENTRIES,
        };
        Ok(whole_snapshots(
            Self::sync(&mut self.clone(), req)
                .await?
                .into_inner()
                .boxed(),
            server_client::MAX_SERVER_MESSAGE,
        ))
    }

    async fn sign_x509_svids(&self, csrs: Vec<CsrForEntry>) -> Result<Vec<SignedX509Svid>, Status> {
        Ok(
            Self::sign_x509_svids(&mut self.clone(), SignX509SvidsRequest { csrs })
                .await?
                .into_inner()
                .svids,
        )
    }

    async fn mint_jwt_svid(&self, req: MintJwtSvidRequest) -> Result<MintJwtSvidResponse, Status> {
        Ok(Self::mint_jwt_svid(&mut self.clone(), req)
            .await?
            .into_inner())
    }

    async fn begin_task(&self, req: NodeBeginTaskRequest) -> Result<Task, Status> {
        Ok(Self::begin_task(&mut self.clone(), req).await?.into_inner())
    }

    async fn end_task(&self, req: NodeEndTaskRequest) -> Result<Task, Status> {
        Ok(Self::end_task(&mut self.clone(), req).await?.into_inner())
    }

    async fn record_task_token_use(&self, usage: TaskTokenUse) -> Result<(), Status> {
        Self::record_task_token_use(&mut self.clone(), usage).await?;
        Ok(())
    }

    async fn report_usage(&self, report: UsageReport) -> Result<UsageReportAck, Status> {
        Ok(Self::report_usage(&mut self.clone(), report)
            .await?
            .into_inner())
    }

    async fn provision_entry(&self, req: ProvisionEntryRequest) -> Result<Entry, Status> {
        Ok(Self::provision_entry(&mut self.clone(), req)
            .await?
            .into_inner())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use common::proto::tessera::{Bundle, Entry, SyncSnapshot, Template};

    fn part(ids: &[&str], more: bool, first: bool) -> SyncUpdate {
        SyncUpdate {
            cursor: "c9".into(),
            update: Some(sync_update::Update::Snapshot(SyncSnapshot {
                entries: ids
                    .iter()
                    .map(|id| Entry {
                        id: (*id).into(),
                        ..Default::default()
                    })
                    .collect(),
                bundle: first.then(Bundle::default),
                revocations: first.then(Default::default),
                templates: if first {
                    vec![Template {
                        id: "t1".into(),
                        ..Default::default()
                    }]
                } else {
                    Vec::new()
                },
                more,
            })),
        }
    }

    fn deleted(id: &str) -> SyncUpdate {
        SyncUpdate {
            cursor: String::new(),
            update: Some(sync_update::Update::EntryDeleted(id.into())),
        }
    }

    async fn assembled(
        items: Vec<Result<SyncUpdate, Status>>,
        max: usize,
    ) -> Vec<Result<SyncUpdate, Status>> {
        whole_snapshots(futures::stream::iter(items).boxed(), max)
            .collect()
            .await
    }

    fn ok(out: &[Result<SyncUpdate, Status>]) -> Vec<SyncUpdate> {
        out.iter().map(|r| r.clone().unwrap()).collect()
    }

    #[tokio::test]
    async fn parts_come_out_as_the_one_snapshot_they_make() {
        let out = assembled(
            vec![
                Ok(deleted("x")),
                Ok(part(&["a", "b"], true, true)),
                Ok(part(&["c", "d"], true, false)),
                Ok(part(&["e"], false, false)),
                Ok(deleted("y")),
            ],
            usize::MAX,
        )
        .await;
        let want = vec![
            deleted("x"),
            part(&["a", "b", "c", "d", "e"], false, true),
            deleted("y"),
        ];
        assert_eq!(ok(&out), want);
    }

    #[tokio::test]
    async fn a_snapshot_in_one_message_and_everything_else_pass_as_they_are() {
        let items = vec![
            part(&["a"], false, true),
            deleted("a"),
            part(&["b", "c"], false, true),
        ];
        let out = assembled(items.iter().cloned().map(Ok).collect(), usize::MAX).await;
        assert_eq!(ok(&out), items);
    }

    #[tokio::test]
    async fn a_stream_that_ends_or_fails_within_a_snapshot_gives_none_of_it() {
        let out = assembled(
            vec![Ok(part(&["a"], true, true)), Ok(part(&["b"], true, false))],
            usize::MAX,
        )
        .await;
        assert!(out.is_empty(), "nothing of an unfinished snapshot: {out:?}");
        let out = assembled(
            vec![
                Ok(part(&["a"], true, true)),
                Err(Status::unavailable("gone")),
                Ok(part(&["b"], false, false)),
            ],
            usize::MAX,
        )
        .await;
        assert_eq!(out.len(), 2, "{out:?}");
        assert_eq!(
            out[0].as_ref().unwrap_err().code(),
            tonic::Code::Unavailable
        );
        // What follows the failure is not the rest of the dropped snapshot but a
        // message of its own: here, a last part with nothing before it.
        assert_eq!(ok(&out[1..]), vec![part(&["b"], false, false)]);
    }

    #[tokio::test]
    async fn another_message_within_a_snapshot_ends_the_stream() {
        let out = assembled(
            vec![
                Ok(part(&["a"], true, true)),
                Ok(deleted("a")),
                Ok(part(&["b"], false, false)),
            ],
            usize::MAX,
        )
        .await;
        assert_eq!(out.len(), 1, "the stream ends with the error: {out:?}");
        let e = out[0].as_ref().unwrap_err();
        assert_eq!(e.code(), tonic::Code::Internal);
        assert!(e.message().contains("middle of a snapshot"), "{e:?}");
    }

    #[tokio::test]
    async fn parts_adding_up_to_more_than_the_limit_end_the_stream() {
        let first = part(&["a"], true, true);
        let second = part(&["b"], false, false);
        let total = prost::Message::encoded_len(&first) + prost::Message::encoded_len(&second);
        // At the limit: taken.
        let out = assembled(vec![Ok(first.clone()), Ok(second.clone())], total).await;
        assert_eq!(ok(&out), vec![part(&["a", "b"], false, true)]);
        // One byte less: refused, and nothing of it applied.
        let out = assembled(vec![Ok(first), Ok(second), Ok(deleted("z"))], total - 1).await;
        assert_eq!(out.len(), 1, "{out:?}");
        assert_eq!(
            out[0].as_ref().unwrap_err().code(),
            tonic::Code::ResourceExhausted
        );
    }
}
