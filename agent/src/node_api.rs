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
    SyncUpdate, Task, TaskTokenUse, UsageReport, UsageReportAck,
};
use common::{BundleCell, TrustDomain, X509Svid};
use futures::StreamExt as _;
use futures::stream::BoxStream;
use tonic::Status;
use tonic::transport::Channel;

use crate::server_client::{self, ClientError};

/// The server's push stream of entry, bundle and revocation changes.
pub type SyncStream = BoxStream<'static, Result<SyncUpdate, Status>>;

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
        Ok(Self::sync(&mut self.clone(), SyncRequest { resume_from })
            .await?
            .into_inner()
            .boxed())
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
