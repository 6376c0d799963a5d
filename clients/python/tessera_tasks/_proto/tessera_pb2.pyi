from google.protobuf.internal import containers as _containers
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class Bundle(_message.Message):
    __slots__ = ("trust_domain", "x509_authorities", "sequence", "refresh_hint_seconds", "jwt_authorities")
    TRUST_DOMAIN_FIELD_NUMBER: _ClassVar[int]
    X509_AUTHORITIES_FIELD_NUMBER: _ClassVar[int]
    SEQUENCE_FIELD_NUMBER: _ClassVar[int]
    REFRESH_HINT_SECONDS_FIELD_NUMBER: _ClassVar[int]
    JWT_AUTHORITIES_FIELD_NUMBER: _ClassVar[int]
    trust_domain: str
    x509_authorities: _containers.RepeatedScalarFieldContainer[bytes]
    sequence: int
    refresh_hint_seconds: int
    jwt_authorities: _containers.RepeatedCompositeFieldContainer[JwtKey]
    def __init__(self, trust_domain: _Optional[str] = ..., x509_authorities: _Optional[_Iterable[bytes]] = ..., sequence: _Optional[int] = ..., refresh_hint_seconds: _Optional[int] = ..., jwt_authorities: _Optional[_Iterable[_Union[JwtKey, _Mapping]]] = ...) -> None: ...

class JwtKey(_message.Message):
    __slots__ = ("kid", "public_key", "expires_at")
    KID_FIELD_NUMBER: _ClassVar[int]
    PUBLIC_KEY_FIELD_NUMBER: _ClassVar[int]
    EXPIRES_AT_FIELD_NUMBER: _ClassVar[int]
    kid: str
    public_key: bytes
    expires_at: int
    def __init__(self, kid: _Optional[str] = ..., public_key: _Optional[bytes] = ..., expires_at: _Optional[int] = ...) -> None: ...

class Entry(_message.Message):
    __slots__ = ("id", "spiffe_id", "parent_id", "selectors", "x509_svid_ttl_seconds", "jwt_svid_ttl_seconds", "dns_names", "jit", "hint", "created_at", "revision", "task", "tenant", "owner", "expires_at", "review_every_seconds", "certified_at", "disabled_at", "disabled_reason", "tasks", "template_id", "node")
    ID_FIELD_NUMBER: _ClassVar[int]
    SPIFFE_ID_FIELD_NUMBER: _ClassVar[int]
    PARENT_ID_FIELD_NUMBER: _ClassVar[int]
    SELECTORS_FIELD_NUMBER: _ClassVar[int]
    X509_SVID_TTL_SECONDS_FIELD_NUMBER: _ClassVar[int]
    JWT_SVID_TTL_SECONDS_FIELD_NUMBER: _ClassVar[int]
    DNS_NAMES_FIELD_NUMBER: _ClassVar[int]
    JIT_FIELD_NUMBER: _ClassVar[int]
    HINT_FIELD_NUMBER: _ClassVar[int]
    CREATED_AT_FIELD_NUMBER: _ClassVar[int]
    REVISION_FIELD_NUMBER: _ClassVar[int]
    TASK_FIELD_NUMBER: _ClassVar[int]
    TENANT_FIELD_NUMBER: _ClassVar[int]
    OWNER_FIELD_NUMBER: _ClassVar[int]
    EXPIRES_AT_FIELD_NUMBER: _ClassVar[int]
    REVIEW_EVERY_SECONDS_FIELD_NUMBER: _ClassVar[int]
    CERTIFIED_AT_FIELD_NUMBER: _ClassVar[int]
    DISABLED_AT_FIELD_NUMBER: _ClassVar[int]
    DISABLED_REASON_FIELD_NUMBER: _ClassVar[int]
    TASKS_FIELD_NUMBER: _ClassVar[int]
    TEMPLATE_ID_FIELD_NUMBER: _ClassVar[int]
    NODE_FIELD_NUMBER: _ClassVar[int]
    id: str
    spiffe_id: str
    parent_id: str
    selectors: _containers.RepeatedScalarFieldContainer[str]
    x509_svid_ttl_seconds: int
    jwt_svid_ttl_seconds: int
    dns_names: _containers.RepeatedScalarFieldContainer[str]
    jit: bool
    hint: str
    created_at: int
    revision: int
    task: TaskGrant
    tenant: str
    owner: str
    expires_at: int
    review_every_seconds: int
    certified_at: int
    disabled_at: int
    disabled_reason: str
    tasks: _containers.RepeatedCompositeFieldContainer[TaskGrant]
    template_id: str
    node: bool
    def __init__(self, id: _Optional[str] = ..., spiffe_id: _Optional[str] = ..., parent_id: _Optional[str] = ..., selectors: _Optional[_Iterable[str]] = ..., x509_svid_ttl_seconds: _Optional[int] = ..., jwt_svid_ttl_seconds: _Optional[int] = ..., dns_names: _Optional[_Iterable[str]] = ..., jit: bool = ..., hint: _Optional[str] = ..., created_at: _Optional[int] = ..., revision: _Optional[int] = ..., task: _Optional[_Union[TaskGrant, _Mapping]] = ..., tenant: _Optional[str] = ..., owner: _Optional[str] = ..., expires_at: _Optional[int] = ..., review_every_seconds: _Optional[int] = ..., certified_at: _Optional[int] = ..., disabled_at: _Optional[int] = ..., disabled_reason: _Optional[str] = ..., tasks: _Optional[_Iterable[_Union[TaskGrant, _Mapping]]] = ..., template_id: _Optional[str] = ..., node: bool = ...) -> None: ...

class TaskGrant(_message.Message):
    __slots__ = ("task_id", "deadline", "audiences", "binding")
    TASK_ID_FIELD_NUMBER: _ClassVar[int]
    DEADLINE_FIELD_NUMBER: _ClassVar[int]
    AUDIENCES_FIELD_NUMBER: _ClassVar[int]
    BINDING_FIELD_NUMBER: _ClassVar[int]
    task_id: str
    deadline: int
    audiences: _containers.RepeatedScalarFieldContainer[str]
    binding: TaskBinding
    def __init__(self, task_id: _Optional[str] = ..., deadline: _Optional[int] = ..., audiences: _Optional[_Iterable[str]] = ..., binding: _Optional[_Union[TaskBinding, _Mapping]] = ...) -> None: ...

class TaskBinding(_message.Message):
    __slots__ = ("kind", "pid", "start_time", "agent_id")
    KIND_FIELD_NUMBER: _ClassVar[int]
    PID_FIELD_NUMBER: _ClassVar[int]
    START_TIME_FIELD_NUMBER: _ClassVar[int]
    AGENT_ID_FIELD_NUMBER: _ClassVar[int]
    kind: str
    pid: int
    start_time: int
    agent_id: str
    def __init__(self, kind: _Optional[str] = ..., pid: _Optional[int] = ..., start_time: _Optional[int] = ..., agent_id: _Optional[str] = ...) -> None: ...

class Revocations(_message.Message):
    __slots__ = ("crls", "ended_tasks")
    CRLS_FIELD_NUMBER: _ClassVar[int]
    ENDED_TASKS_FIELD_NUMBER: _ClassVar[int]
    crls: _containers.RepeatedScalarFieldContainer[bytes]
    ended_tasks: _containers.RepeatedCompositeFieldContainer[EndedTask]
    def __init__(self, crls: _Optional[_Iterable[bytes]] = ..., ended_tasks: _Optional[_Iterable[_Union[EndedTask, _Mapping]]] = ...) -> None: ...

class EndedTask(_message.Message):
    __slots__ = ("task_id", "until", "state", "ended_at")
    TASK_ID_FIELD_NUMBER: _ClassVar[int]
    UNTIL_FIELD_NUMBER: _ClassVar[int]
    STATE_FIELD_NUMBER: _ClassVar[int]
    ENDED_AT_FIELD_NUMBER: _ClassVar[int]
    task_id: str
    until: int
    state: str
    ended_at: int
    def __init__(self, task_id: _Optional[str] = ..., until: _Optional[int] = ..., state: _Optional[str] = ..., ended_at: _Optional[int] = ...) -> None: ...

class AgentCache(_message.Message):
    __slots__ = ("snapshot", "svids", "sync_cursor")
    SNAPSHOT_FIELD_NUMBER: _ClassVar[int]
    SVIDS_FIELD_NUMBER: _ClassVar[int]
    SYNC_CURSOR_FIELD_NUMBER: _ClassVar[int]
    snapshot: SyncSnapshot
    svids: _containers.RepeatedCompositeFieldContainer[CachedSvid]
    sync_cursor: str
    def __init__(self, snapshot: _Optional[_Union[SyncSnapshot, _Mapping]] = ..., svids: _Optional[_Iterable[_Union[CachedSvid, _Mapping]]] = ..., sync_cursor: _Optional[str] = ...) -> None: ...

class CachedSvid(_message.Message):
    __slots__ = ("entry_id", "entry_revision", "chain", "key")
    ENTRY_ID_FIELD_NUMBER: _ClassVar[int]
    ENTRY_REVISION_FIELD_NUMBER: _ClassVar[int]
    CHAIN_FIELD_NUMBER: _ClassVar[int]
    KEY_FIELD_NUMBER: _ClassVar[int]
    entry_id: str
    entry_revision: int
    chain: _containers.RepeatedScalarFieldContainer[bytes]
    key: bytes
    def __init__(self, entry_id: _Optional[str] = ..., entry_revision: _Optional[int] = ..., chain: _Optional[_Iterable[bytes]] = ..., key: _Optional[bytes] = ...) -> None: ...

class ProvisionEntryRequest(_message.Message):
    __slots__ = ("template_id", "selectors")
    TEMPLATE_ID_FIELD_NUMBER: _ClassVar[int]
    SELECTORS_FIELD_NUMBER: _ClassVar[int]
    template_id: str
    selectors: _containers.RepeatedScalarFieldContainer[str]
    def __init__(self, template_id: _Optional[str] = ..., selectors: _Optional[_Iterable[str]] = ...) -> None: ...

class TaskTokenUse(_message.Message):
    __slots__ = ("task_id", "spiffe_id", "audience", "accepted", "reason", "expires_at")
    TASK_ID_FIELD_NUMBER: _ClassVar[int]
    SPIFFE_ID_FIELD_NUMBER: _ClassVar[int]
    AUDIENCE_FIELD_NUMBER: _ClassVar[int]
    ACCEPTED_FIELD_NUMBER: _ClassVar[int]
    REASON_FIELD_NUMBER: _ClassVar[int]
    EXPIRES_AT_FIELD_NUMBER: _ClassVar[int]
    task_id: str
    spiffe_id: str
    audience: str
    accepted: bool
    reason: str
    expires_at: int
    def __init__(self, task_id: _Optional[str] = ..., spiffe_id: _Optional[str] = ..., audience: _Optional[str] = ..., accepted: bool = ..., reason: _Optional[str] = ..., expires_at: _Optional[int] = ...) -> None: ...

class TaskTokenUseAck(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class NodeBeginTaskRequest(_message.Message):
    __slots__ = ("requester_entry_id", "spec", "requester_uid", "requester_user", "binding")
    REQUESTER_ENTRY_ID_FIELD_NUMBER: _ClassVar[int]
    SPEC_FIELD_NUMBER: _ClassVar[int]
    REQUESTER_UID_FIELD_NUMBER: _ClassVar[int]
    REQUESTER_USER_FIELD_NUMBER: _ClassVar[int]
    BINDING_FIELD_NUMBER: _ClassVar[int]
    requester_entry_id: str
    spec: TaskSpec
    requester_uid: int
    requester_user: str
    binding: TaskBinding
    def __init__(self, requester_entry_id: _Optional[str] = ..., spec: _Optional[_Union[TaskSpec, _Mapping]] = ..., requester_uid: _Optional[int] = ..., requester_user: _Optional[str] = ..., binding: _Optional[_Union[TaskBinding, _Mapping]] = ...) -> None: ...

class NodeEndTaskRequest(_message.Message):
    __slots__ = ("requester_entry_ids", "end", "holder_exited")
    REQUESTER_ENTRY_IDS_FIELD_NUMBER: _ClassVar[int]
    END_FIELD_NUMBER: _ClassVar[int]
    HOLDER_EXITED_FIELD_NUMBER: _ClassVar[int]
    requester_entry_ids: _containers.RepeatedScalarFieldContainer[str]
    end: EndTaskRequest
    holder_exited: bool
    def __init__(self, requester_entry_ids: _Optional[_Iterable[str]] = ..., end: _Optional[_Union[EndTaskRequest, _Mapping]] = ..., holder_exited: bool = ...) -> None: ...

class MintJwtSvidRequest(_message.Message):
    __slots__ = ("entry_id", "audience", "task_id")
    ENTRY_ID_FIELD_NUMBER: _ClassVar[int]
    AUDIENCE_FIELD_NUMBER: _ClassVar[int]
    TASK_ID_FIELD_NUMBER: _ClassVar[int]
    entry_id: str
    audience: _containers.RepeatedScalarFieldContainer[str]
    task_id: str
    def __init__(self, entry_id: _Optional[str] = ..., audience: _Optional[_Iterable[str]] = ..., task_id: _Optional[str] = ...) -> None: ...

class MintJwtSvidResponse(_message.Message):
    __slots__ = ("token", "expires_at")
    TOKEN_FIELD_NUMBER: _ClassVar[int]
    EXPIRES_AT_FIELD_NUMBER: _ClassVar[int]
    token: str
    expires_at: int
    def __init__(self, token: _Optional[str] = ..., expires_at: _Optional[int] = ...) -> None: ...

class AttestAgentRequest(_message.Message):
    __slots__ = ("join_token", "csr", "x509pop_chain", "x509pop_challenge_id", "x509pop_signature")
    JOIN_TOKEN_FIELD_NUMBER: _ClassVar[int]
    CSR_FIELD_NUMBER: _ClassVar[int]
    X509POP_CHAIN_FIELD_NUMBER: _ClassVar[int]
    X509POP_CHALLENGE_ID_FIELD_NUMBER: _ClassVar[int]
    X509POP_SIGNATURE_FIELD_NUMBER: _ClassVar[int]
    join_token: str
    csr: bytes
    x509pop_chain: _containers.RepeatedScalarFieldContainer[bytes]
    x509pop_challenge_id: str
    x509pop_signature: bytes
    def __init__(self, join_token: _Optional[str] = ..., csr: _Optional[bytes] = ..., x509pop_chain: _Optional[_Iterable[bytes]] = ..., x509pop_challenge_id: _Optional[str] = ..., x509pop_signature: _Optional[bytes] = ...) -> None: ...

class AttestAgentResponse(_message.Message):
    __slots__ = ("svid_chain", "bundle", "x509pop_challenge_id", "x509pop_nonce")
    SVID_CHAIN_FIELD_NUMBER: _ClassVar[int]
    BUNDLE_FIELD_NUMBER: _ClassVar[int]
    X509POP_CHALLENGE_ID_FIELD_NUMBER: _ClassVar[int]
    X509POP_NONCE_FIELD_NUMBER: _ClassVar[int]
    svid_chain: _containers.RepeatedScalarFieldContainer[bytes]
    bundle: Bundle
    x509pop_challenge_id: str
    x509pop_nonce: bytes
    def __init__(self, svid_chain: _Optional[_Iterable[bytes]] = ..., bundle: _Optional[_Union[Bundle, _Mapping]] = ..., x509pop_challenge_id: _Optional[str] = ..., x509pop_nonce: _Optional[bytes] = ...) -> None: ...

class RenewAgentRequest(_message.Message):
    __slots__ = ("csr",)
    CSR_FIELD_NUMBER: _ClassVar[int]
    csr: bytes
    def __init__(self, csr: _Optional[bytes] = ...) -> None: ...

class RenewAgentResponse(_message.Message):
    __slots__ = ("svid_chain", "bundle")
    SVID_CHAIN_FIELD_NUMBER: _ClassVar[int]
    BUNDLE_FIELD_NUMBER: _ClassVar[int]
    svid_chain: _containers.RepeatedScalarFieldContainer[bytes]
    bundle: Bundle
    def __init__(self, svid_chain: _Optional[_Iterable[bytes]] = ..., bundle: _Optional[_Union[Bundle, _Mapping]] = ...) -> None: ...

class SyncRequest(_message.Message):
    __slots__ = ("resume_from", "snapshot_part_entries")
    RESUME_FROM_FIELD_NUMBER: _ClassVar[int]
    SNAPSHOT_PART_ENTRIES_FIELD_NUMBER: _ClassVar[int]
    resume_from: str
    snapshot_part_entries: int
    def __init__(self, resume_from: _Optional[str] = ..., snapshot_part_entries: _Optional[int] = ...) -> None: ...

class SyncSnapshot(_message.Message):
    __slots__ = ("entries", "bundle", "revocations", "templates", "more")
    ENTRIES_FIELD_NUMBER: _ClassVar[int]
    BUNDLE_FIELD_NUMBER: _ClassVar[int]
    REVOCATIONS_FIELD_NUMBER: _ClassVar[int]
    TEMPLATES_FIELD_NUMBER: _ClassVar[int]
    MORE_FIELD_NUMBER: _ClassVar[int]
    entries: _containers.RepeatedCompositeFieldContainer[Entry]
    bundle: Bundle
    revocations: Revocations
    templates: _containers.RepeatedCompositeFieldContainer[Template]
    more: bool
    def __init__(self, entries: _Optional[_Iterable[_Union[Entry, _Mapping]]] = ..., bundle: _Optional[_Union[Bundle, _Mapping]] = ..., revocations: _Optional[_Union[Revocations, _Mapping]] = ..., templates: _Optional[_Iterable[_Union[Template, _Mapping]]] = ..., more: bool = ...) -> None: ...

class SyncDelta(_message.Message):
    __slots__ = ("entries_upserted", "entries_deleted", "bundle", "revocations", "templates_upserted", "templates_deleted")
    ENTRIES_UPSERTED_FIELD_NUMBER: _ClassVar[int]
    ENTRIES_DELETED_FIELD_NUMBER: _ClassVar[int]
    BUNDLE_FIELD_NUMBER: _ClassVar[int]
    REVOCATIONS_FIELD_NUMBER: _ClassVar[int]
    TEMPLATES_UPSERTED_FIELD_NUMBER: _ClassVar[int]
    TEMPLATES_DELETED_FIELD_NUMBER: _ClassVar[int]
    entries_upserted: _containers.RepeatedCompositeFieldContainer[Entry]
    entries_deleted: _containers.RepeatedScalarFieldContainer[str]
    bundle: Bundle
    revocations: Revocations
    templates_upserted: _containers.RepeatedCompositeFieldContainer[Template]
    templates_deleted: _containers.RepeatedScalarFieldContainer[str]
    def __init__(self, entries_upserted: _Optional[_Iterable[_Union[Entry, _Mapping]]] = ..., entries_deleted: _Optional[_Iterable[str]] = ..., bundle: _Optional[_Union[Bundle, _Mapping]] = ..., revocations: _Optional[_Union[Revocations, _Mapping]] = ..., templates_upserted: _Optional[_Iterable[_Union[Template, _Mapping]]] = ..., templates_deleted: _Optional[_Iterable[str]] = ...) -> None: ...

class SyncUpdate(_message.Message):
    __slots__ = ("cursor", "snapshot", "entry_upserted", "entry_deleted", "bundle", "revocations", "resumed", "template_upserted", "template_deleted")
    CURSOR_FIELD_NUMBER: _ClassVar[int]
    SNAPSHOT_FIELD_NUMBER: _ClassVar[int]
    ENTRY_UPSERTED_FIELD_NUMBER: _ClassVar[int]
    ENTRY_DELETED_FIELD_NUMBER: _ClassVar[int]
    BUNDLE_FIELD_NUMBER: _ClassVar[int]
    REVOCATIONS_FIELD_NUMBER: _ClassVar[int]
    RESUMED_FIELD_NUMBER: _ClassVar[int]
    TEMPLATE_UPSERTED_FIELD_NUMBER: _ClassVar[int]
    TEMPLATE_DELETED_FIELD_NUMBER: _ClassVar[int]
    cursor: str
    snapshot: SyncSnapshot
    entry_upserted: Entry
    entry_deleted: str
    bundle: Bundle
    revocations: Revocations
    resumed: SyncDelta
    template_upserted: Template
    template_deleted: str
    def __init__(self, cursor: _Optional[str] = ..., snapshot: _Optional[_Union[SyncSnapshot, _Mapping]] = ..., entry_upserted: _Optional[_Union[Entry, _Mapping]] = ..., entry_deleted: _Optional[str] = ..., bundle: _Optional[_Union[Bundle, _Mapping]] = ..., revocations: _Optional[_Union[Revocations, _Mapping]] = ..., resumed: _Optional[_Union[SyncDelta, _Mapping]] = ..., template_upserted: _Optional[_Union[Template, _Mapping]] = ..., template_deleted: _Optional[str] = ...) -> None: ...

class CsrForEntry(_message.Message):
    __slots__ = ("entry_id", "csr", "task_id")
    ENTRY_ID_FIELD_NUMBER: _ClassVar[int]
    CSR_FIELD_NUMBER: _ClassVar[int]
    TASK_ID_FIELD_NUMBER: _ClassVar[int]
    entry_id: str
    csr: bytes
    task_id: str
    def __init__(self, entry_id: _Optional[str] = ..., csr: _Optional[bytes] = ..., task_id: _Optional[str] = ...) -> None: ...

class SignX509SvidsRequest(_message.Message):
    __slots__ = ("csrs",)
    CSRS_FIELD_NUMBER: _ClassVar[int]
    csrs: _containers.RepeatedCompositeFieldContainer[CsrForEntry]
    def __init__(self, csrs: _Optional[_Iterable[_Union[CsrForEntry, _Mapping]]] = ...) -> None: ...

class SignedX509Svid(_message.Message):
    __slots__ = ("entry_id", "task_id", "svid_chain", "error")
    ENTRY_ID_FIELD_NUMBER: _ClassVar[int]
    TASK_ID_FIELD_NUMBER: _ClassVar[int]
    SVID_CHAIN_FIELD_NUMBER: _ClassVar[int]
    ERROR_FIELD_NUMBER: _ClassVar[int]
    entry_id: str
    task_id: str
    svid_chain: _containers.RepeatedScalarFieldContainer[bytes]
    error: str
    def __init__(self, entry_id: _Optional[str] = ..., task_id: _Optional[str] = ..., svid_chain: _Optional[_Iterable[bytes]] = ..., error: _Optional[str] = ...) -> None: ...

class SignX509SvidsResponse(_message.Message):
    __slots__ = ("svids",)
    SVIDS_FIELD_NUMBER: _ClassVar[int]
    svids: _containers.RepeatedCompositeFieldContainer[SignedX509Svid]
    def __init__(self, svids: _Optional[_Iterable[_Union[SignedX509Svid, _Mapping]]] = ...) -> None: ...

class TemplateSpec(_message.Message):
    __slots__ = ("spiffe_id_template", "parent_id", "selectors", "x509_svid_ttl_seconds", "jwt_svid_ttl_seconds", "tenant", "owner", "grace_seconds")
    SPIFFE_ID_TEMPLATE_FIELD_NUMBER: _ClassVar[int]
    PARENT_ID_FIELD_NUMBER: _ClassVar[int]
    SELECTORS_FIELD_NUMBER: _ClassVar[int]
    X509_SVID_TTL_SECONDS_FIELD_NUMBER: _ClassVar[int]
    JWT_SVID_TTL_SECONDS_FIELD_NUMBER: _ClassVar[int]
    TENANT_FIELD_NUMBER: _ClassVar[int]
    OWNER_FIELD_NUMBER: _ClassVar[int]
    GRACE_SECONDS_FIELD_NUMBER: _ClassVar[int]
    spiffe_id_template: str
    parent_id: str
    selectors: _containers.RepeatedScalarFieldContainer[str]
    x509_svid_ttl_seconds: int
    jwt_svid_ttl_seconds: int
    tenant: str
    owner: str
    grace_seconds: int
    def __init__(self, spiffe_id_template: _Optional[str] = ..., parent_id: _Optional[str] = ..., selectors: _Optional[_Iterable[str]] = ..., x509_svid_ttl_seconds: _Optional[int] = ..., jwt_svid_ttl_seconds: _Optional[int] = ..., tenant: _Optional[str] = ..., owner: _Optional[str] = ..., grace_seconds: _Optional[int] = ...) -> None: ...

class Template(_message.Message):
    __slots__ = ("id", "spiffe_id_template", "parent_id", "selectors", "x509_svid_ttl_seconds", "jwt_svid_ttl_seconds", "tenant", "owner", "grace_seconds", "created_at")
    ID_FIELD_NUMBER: _ClassVar[int]
    SPIFFE_ID_TEMPLATE_FIELD_NUMBER: _ClassVar[int]
    PARENT_ID_FIELD_NUMBER: _ClassVar[int]
    SELECTORS_FIELD_NUMBER: _ClassVar[int]
    X509_SVID_TTL_SECONDS_FIELD_NUMBER: _ClassVar[int]
    JWT_SVID_TTL_SECONDS_FIELD_NUMBER: _ClassVar[int]
    TENANT_FIELD_NUMBER: _ClassVar[int]
    OWNER_FIELD_NUMBER: _ClassVar[int]
    GRACE_SECONDS_FIELD_NUMBER: _ClassVar[int]
    CREATED_AT_FIELD_NUMBER: _ClassVar[int]
    id: str
    spiffe_id_template: str
    parent_id: str
    selectors: _containers.RepeatedScalarFieldContainer[str]
    x509_svid_ttl_seconds: int
    jwt_svid_ttl_seconds: int
    tenant: str
    owner: str
    grace_seconds: int
    created_at: int
    def __init__(self, id: _Optional[str] = ..., spiffe_id_template: _Optional[str] = ..., parent_id: _Optional[str] = ..., selectors: _Optional[_Iterable[str]] = ..., x509_svid_ttl_seconds: _Optional[int] = ..., jwt_svid_ttl_seconds: _Optional[int] = ..., tenant: _Optional[str] = ..., owner: _Optional[str] = ..., grace_seconds: _Optional[int] = ..., created_at: _Optional[int] = ...) -> None: ...

class TemplateIdRequest(_message.Message):
    __slots__ = ("id",)
    ID_FIELD_NUMBER: _ClassVar[int]
    id: str
    def __init__(self, id: _Optional[str] = ...) -> None: ...

class ListTemplatesRequest(_message.Message):
    __slots__ = ("tenant",)
    TENANT_FIELD_NUMBER: _ClassVar[int]
    tenant: str
    def __init__(self, tenant: _Optional[str] = ...) -> None: ...

class ListTemplatesResponse(_message.Message):
    __slots__ = ("templates",)
    TEMPLATES_FIELD_NUMBER: _ClassVar[int]
    templates: _containers.RepeatedCompositeFieldContainer[Template]
    def __init__(self, templates: _Optional[_Iterable[_Union[Template, _Mapping]]] = ...) -> None: ...

class ReviewRequest(_message.Message):
    __slots__ = ("tenant", "stale_after_seconds")
    TENANT_FIELD_NUMBER: _ClassVar[int]
    STALE_AFTER_SECONDS_FIELD_NUMBER: _ClassVar[int]
    tenant: str
    stale_after_seconds: int
    def __init__(self, tenant: _Optional[str] = ..., stale_after_seconds: _Optional[int] = ...) -> None: ...

class ReviewResponse(_message.Message):
    __slots__ = ("items", "generated_at", "break_glass_unreviewed")
    ITEMS_FIELD_NUMBER: _ClassVar[int]
    GENERATED_AT_FIELD_NUMBER: _ClassVar[int]
    BREAK_GLASS_UNREVIEWED_FIELD_NUMBER: _ClassVar[int]
    items: _containers.RepeatedCompositeFieldContainer[ReviewItem]
    generated_at: int
    break_glass_unreviewed: _containers.RepeatedCompositeFieldContainer[Task]
    def __init__(self, items: _Optional[_Iterable[_Union[ReviewItem, _Mapping]]] = ..., generated_at: _Optional[int] = ..., break_glass_unreviewed: _Optional[_Iterable[_Union[Task, _Mapping]]] = ...) -> None: ...

class ReviewItem(_message.Message):
    __slots__ = ("entry", "last_issued_at", "last_used_at", "open_tasks", "overlaps", "unverified_dns_names", "flags", "break_glass_tasks")
    ENTRY_FIELD_NUMBER: _ClassVar[int]
    LAST_ISSUED_AT_FIELD_NUMBER: _ClassVar[int]
    LAST_USED_AT_FIELD_NUMBER: _ClassVar[int]
    OPEN_TASKS_FIELD_NUMBER: _ClassVar[int]
    OVERLAPS_FIELD_NUMBER: _ClassVar[int]
    UNVERIFIED_DNS_NAMES_FIELD_NUMBER: _ClassVar[int]
    FLAGS_FIELD_NUMBER: _ClassVar[int]
    BREAK_GLASS_TASKS_FIELD_NUMBER: _ClassVar[int]
    entry: Entry
    last_issued_at: int
    last_used_at: int
    open_tasks: _containers.RepeatedScalarFieldContainer[str]
    overlaps: _containers.RepeatedScalarFieldContainer[str]
    unverified_dns_names: _containers.RepeatedScalarFieldContainer[str]
    flags: _containers.RepeatedScalarFieldContainer[str]
    break_glass_tasks: _containers.RepeatedScalarFieldContainer[str]
    def __init__(self, entry: _Optional[_Union[Entry, _Mapping]] = ..., last_issued_at: _Optional[int] = ..., last_used_at: _Optional[int] = ..., open_tasks: _Optional[_Iterable[str]] = ..., overlaps: _Optional[_Iterable[str]] = ..., unverified_dns_names: _Optional[_Iterable[str]] = ..., flags: _Optional[_Iterable[str]] = ..., break_glass_tasks: _Optional[_Iterable[str]] = ...) -> None: ...

class TenantSpec(_message.Message):
    __slots__ = ("name", "path_prefixes", "admin_users", "admin_groups", "max_entries", "max_open_tasks", "review_every_seconds", "max_parallel_tasks_per_entry")
    NAME_FIELD_NUMBER: _ClassVar[int]
    PATH_PREFIXES_FIELD_NUMBER: _ClassVar[int]
    ADMIN_USERS_FIELD_NUMBER: _ClassVar[int]
    ADMIN_GROUPS_FIELD_NUMBER: _ClassVar[int]
    MAX_ENTRIES_FIELD_NUMBER: _ClassVar[int]
    MAX_OPEN_TASKS_FIELD_NUMBER: _ClassVar[int]
    REVIEW_EVERY_SECONDS_FIELD_NUMBER: _ClassVar[int]
    MAX_PARALLEL_TASKS_PER_ENTRY_FIELD_NUMBER: _ClassVar[int]
    name: str
    path_prefixes: _containers.RepeatedScalarFieldContainer[str]
    admin_users: _containers.RepeatedScalarFieldContainer[str]
    admin_groups: _containers.RepeatedScalarFieldContainer[str]
    max_entries: int
    max_open_tasks: int
    review_every_seconds: int
    max_parallel_tasks_per_entry: int
    def __init__(self, name: _Optional[str] = ..., path_prefixes: _Optional[_Iterable[str]] = ..., admin_users: _Optional[_Iterable[str]] = ..., admin_groups: _Optional[_Iterable[str]] = ..., max_entries: _Optional[int] = ..., max_open_tasks: _Optional[int] = ..., review_every_seconds: _Optional[int] = ..., max_parallel_tasks_per_entry: _Optional[int] = ...) -> None: ...

class Tenant(_message.Message):
    __slots__ = ("name", "path_prefixes", "admin_users", "admin_groups", "max_entries", "max_open_tasks", "review_every_seconds", "created_at", "revision", "domains", "entries", "open_tasks", "policy", "max_parallel_tasks_per_entry")
    NAME_FIELD_NUMBER: _ClassVar[int]
    PATH_PREFIXES_FIELD_NUMBER: _ClassVar[int]
    ADMIN_USERS_FIELD_NUMBER: _ClassVar[int]
    ADMIN_GROUPS_FIELD_NUMBER: _ClassVar[int]
    MAX_ENTRIES_FIELD_NUMBER: _ClassVar[int]
    MAX_OPEN_TASKS_FIELD_NUMBER: _ClassVar[int]
    REVIEW_EVERY_SECONDS_FIELD_NUMBER: _ClassVar[int]
    CREATED_AT_FIELD_NUMBER: _ClassVar[int]
    REVISION_FIELD_NUMBER: _ClassVar[int]
    DOMAINS_FIELD_NUMBER: _ClassVar[int]
    ENTRIES_FIELD_NUMBER: _ClassVar[int]
    OPEN_TASKS_FIELD_NUMBER: _ClassVar[int]
    POLICY_FIELD_NUMBER: _ClassVar[int]
    MAX_PARALLEL_TASKS_PER_ENTRY_FIELD_NUMBER: _ClassVar[int]
    name: str
    path_prefixes: _containers.RepeatedScalarFieldContainer[str]
    admin_users: _containers.RepeatedScalarFieldContainer[str]
    admin_groups: _containers.RepeatedScalarFieldContainer[str]
    max_entries: int
    max_open_tasks: int
    review_every_seconds: int
    created_at: int
    revision: int
    domains: _containers.RepeatedCompositeFieldContainer[TenantDomain]
    entries: int
    open_tasks: int
    policy: str
    max_parallel_tasks_per_entry: int
    def __init__(self, name: _Optional[str] = ..., path_prefixes: _Optional[_Iterable[str]] = ..., admin_users: _Optional[_Iterable[str]] = ..., admin_groups: _Optional[_Iterable[str]] = ..., max_entries: _Optional[int] = ..., max_open_tasks: _Optional[int] = ..., review_every_seconds: _Optional[int] = ..., created_at: _Optional[int] = ..., revision: _Optional[int] = ..., domains: _Optional[_Iterable[_Union[TenantDomain, _Mapping]]] = ..., entries: _Optional[int] = ..., open_tasks: _Optional[int] = ..., policy: _Optional[str] = ..., max_parallel_tasks_per_entry: _Optional[int] = ...) -> None: ...

class TenantPolicyRequest(_message.Message):
    __slots__ = ("name", "policy", "clear")
    NAME_FIELD_NUMBER: _ClassVar[int]
    POLICY_FIELD_NUMBER: _ClassVar[int]
    CLEAR_FIELD_NUMBER: _ClassVar[int]
    name: str
    policy: str
    clear: bool
    def __init__(self, name: _Optional[str] = ..., policy: _Optional[str] = ..., clear: bool = ...) -> None: ...

class TenantNameRequest(_message.Message):
    __slots__ = ("name",)
    NAME_FIELD_NUMBER: _ClassVar[int]
    name: str
    def __init__(self, name: _Optional[str] = ...) -> None: ...

class ListTenantsRequest(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class ListTenantsResponse(_message.Message):
    __slots__ = ("tenants",)
    TENANTS_FIELD_NUMBER: _ClassVar[int]
    tenants: _containers.RepeatedCompositeFieldContainer[Tenant]
    def __init__(self, tenants: _Optional[_Iterable[_Union[Tenant, _Mapping]]] = ...) -> None: ...

class TenantDomainRequest(_message.Message):
    __slots__ = ("tenant", "domain")
    TENANT_FIELD_NUMBER: _ClassVar[int]
    DOMAIN_FIELD_NUMBER: _ClassVar[int]
    tenant: str
    domain: str
    def __init__(self, tenant: _Optional[str] = ..., domain: _Optional[str] = ...) -> None: ...

class TenantDomain(_message.Message):
    __slots__ = ("tenant", "domain", "challenge", "record_name", "added_at", "verified_at", "checked_at", "failing_since", "last_error", "verified")
    TENANT_FIELD_NUMBER: _ClassVar[int]
    DOMAIN_FIELD_NUMBER: _ClassVar[int]
    CHALLENGE_FIELD_NUMBER: _ClassVar[int]
    RECORD_NAME_FIELD_NUMBER: _ClassVar[int]
    ADDED_AT_FIELD_NUMBER: _ClassVar[int]
    VERIFIED_AT_FIELD_NUMBER: _ClassVar[int]
    CHECKED_AT_FIELD_NUMBER: _ClassVar[int]
    FAILING_SINCE_FIELD_NUMBER: _ClassVar[int]
    LAST_ERROR_FIELD_NUMBER: _ClassVar[int]
    VERIFIED_FIELD_NUMBER: _ClassVar[int]
    tenant: str
    domain: str
    challenge: str
    record_name: str
    added_at: int
    verified_at: int
    checked_at: int
    failing_since: int
    last_error: str
    verified: bool
    def __init__(self, tenant: _Optional[str] = ..., domain: _Optional[str] = ..., challenge: _Optional[str] = ..., record_name: _Optional[str] = ..., added_at: _Optional[int] = ..., verified_at: _Optional[int] = ..., checked_at: _Optional[int] = ..., failing_since: _Optional[int] = ..., last_error: _Optional[str] = ..., verified: bool = ...) -> None: ...

class TaskSpec(_message.Message):
    __slots__ = ("entry_id", "spiffe_id", "provision", "parent_id", "selectors", "reason", "ticket", "scopes", "ttl_seconds", "requester_spiffe_id", "tenant", "audiences", "bind", "bind_pid", "break_glass")
    ENTRY_ID_FIELD_NUMBER: _ClassVar[int]
    SPIFFE_ID_FIELD_NUMBER: _ClassVar[int]
    PROVISION_FIELD_NUMBER: _ClassVar[int]
    PARENT_ID_FIELD_NUMBER: _ClassVar[int]
    SELECTORS_FIELD_NUMBER: _ClassVar[int]
    REASON_FIELD_NUMBER: _ClassVar[int]
    TICKET_FIELD_NUMBER: _ClassVar[int]
    SCOPES_FIELD_NUMBER: _ClassVar[int]
    TTL_SECONDS_FIELD_NUMBER: _ClassVar[int]
    REQUESTER_SPIFFE_ID_FIELD_NUMBER: _ClassVar[int]
    TENANT_FIELD_NUMBER: _ClassVar[int]
    AUDIENCES_FIELD_NUMBER: _ClassVar[int]
    BIND_FIELD_NUMBER: _ClassVar[int]
    BIND_PID_FIELD_NUMBER: _ClassVar[int]
    BREAK_GLASS_FIELD_NUMBER: _ClassVar[int]
    entry_id: str
    spiffe_id: str
    provision: bool
    parent_id: str
    selectors: _containers.RepeatedScalarFieldContainer[str]
    reason: str
    ticket: str
    scopes: _containers.RepeatedScalarFieldContainer[str]
    ttl_seconds: int
    requester_spiffe_id: str
    tenant: str
    audiences: _containers.RepeatedScalarFieldContainer[str]
    bind: str
    bind_pid: int
    break_glass: bool
    def __init__(self, entry_id: _Optional[str] = ..., spiffe_id: _Optional[str] = ..., provision: bool = ..., parent_id: _Optional[str] = ..., selectors: _Optional[_Iterable[str]] = ..., reason: _Optional[str] = ..., ticket: _Optional[str] = ..., scopes: _Optional[_Iterable[str]] = ..., ttl_seconds: _Optional[int] = ..., requester_spiffe_id: _Optional[str] = ..., tenant: _Optional[str] = ..., audiences: _Optional[_Iterable[str]] = ..., bind: _Optional[str] = ..., bind_pid: _Optional[int] = ..., break_glass: bool = ...) -> None: ...

class Task(_message.Message):
    __slots__ = ("id", "state", "entry_id", "spiffe_id", "parent_id", "provisioned", "requester", "approver", "reason", "ticket", "scopes", "created_at", "activated_at", "deadline", "ended_at", "end_reason", "decision", "requester_uid", "requester_user", "approver_uid", "tenant", "audiences", "binding", "break_glass", "acknowledged_by", "acknowledged_uid", "acknowledged_at", "acknowledgement_note")
    ID_FIELD_NUMBER: _ClassVar[int]
    STATE_FIELD_NUMBER: _ClassVar[int]
    ENTRY_ID_FIELD_NUMBER: _ClassVar[int]
    SPIFFE_ID_FIELD_NUMBER: _ClassVar[int]
    PARENT_ID_FIELD_NUMBER: _ClassVar[int]
    PROVISIONED_FIELD_NUMBER: _ClassVar[int]
    REQUESTER_FIELD_NUMBER: _ClassVar[int]
    APPROVER_FIELD_NUMBER: _ClassVar[int]
    REASON_FIELD_NUMBER: _ClassVar[int]
    TICKET_FIELD_NUMBER: _ClassVar[int]
    SCOPES_FIELD_NUMBER: _ClassVar[int]
    CREATED_AT_FIELD_NUMBER: _ClassVar[int]
    ACTIVATED_AT_FIELD_NUMBER: _ClassVar[int]
    DEADLINE_FIELD_NUMBER: _ClassVar[int]
    ENDED_AT_FIELD_NUMBER: _ClassVar[int]
    END_REASON_FIELD_NUMBER: _ClassVar[int]
    DECISION_FIELD_NUMBER: _ClassVar[int]
    REQUESTER_UID_FIELD_NUMBER: _ClassVar[int]
    REQUESTER_USER_FIELD_NUMBER: _ClassVar[int]
    APPROVER_UID_FIELD_NUMBER: _ClassVar[int]
    TENANT_FIELD_NUMBER: _ClassVar[int]
    AUDIENCES_FIELD_NUMBER: _ClassVar[int]
    BINDING_FIELD_NUMBER: _ClassVar[int]
    BREAK_GLASS_FIELD_NUMBER: _ClassVar[int]
    ACKNOWLEDGED_BY_FIELD_NUMBER: _ClassVar[int]
    ACKNOWLEDGED_UID_FIELD_NUMBER: _ClassVar[int]
    ACKNOWLEDGED_AT_FIELD_NUMBER: _ClassVar[int]
    ACKNOWLEDGEMENT_NOTE_FIELD_NUMBER: _ClassVar[int]
    id: str
    state: str
    entry_id: str
    spiffe_id: str
    parent_id: str
    provisioned: bool
    requester: str
    approver: str
    reason: str
    ticket: str
    scopes: _containers.RepeatedScalarFieldContainer[str]
    created_at: int
    activated_at: int
    deadline: int
    ended_at: int
    end_reason: str
    decision: PolicyDecision
    requester_uid: int
    requester_user: str
    approver_uid: int
    tenant: str
    audiences: _containers.RepeatedScalarFieldContainer[str]
    binding: TaskBinding
    break_glass: bool
    acknowledged_by: str
    acknowledged_uid: int
    acknowledged_at: int
    acknowledgement_note: str
    def __init__(self, id: _Optional[str] = ..., state: _Optional[str] = ..., entry_id: _Optional[str] = ..., spiffe_id: _Optional[str] = ..., parent_id: _Optional[str] = ..., provisioned: bool = ..., requester: _Optional[str] = ..., approver: _Optional[str] = ..., reason: _Optional[str] = ..., ticket: _Optional[str] = ..., scopes: _Optional[_Iterable[str]] = ..., created_at: _Optional[int] = ..., activated_at: _Optional[int] = ..., deadline: _Optional[int] = ..., ended_at: _Optional[int] = ..., end_reason: _Optional[str] = ..., decision: _Optional[_Union[PolicyDecision, _Mapping]] = ..., requester_uid: _Optional[int] = ..., requester_user: _Optional[str] = ..., approver_uid: _Optional[int] = ..., tenant: _Optional[str] = ..., audiences: _Optional[_Iterable[str]] = ..., binding: _Optional[_Union[TaskBinding, _Mapping]] = ..., break_glass: bool = ..., acknowledged_by: _Optional[str] = ..., acknowledged_uid: _Optional[int] = ..., acknowledged_at: _Optional[int] = ..., acknowledgement_note: _Optional[str] = ...) -> None: ...

class PolicyDecision(_message.Message):
    __slots__ = ("allowed", "approval_required", "max_ttl_seconds", "policies", "errors", "explanation", "break_glass_allowed", "max_parallel")
    ALLOWED_FIELD_NUMBER: _ClassVar[int]
    APPROVAL_REQUIRED_FIELD_NUMBER: _ClassVar[int]
    MAX_TTL_SECONDS_FIELD_NUMBER: _ClassVar[int]
    POLICIES_FIELD_NUMBER: _ClassVar[int]
    ERRORS_FIELD_NUMBER: _ClassVar[int]
    EXPLANATION_FIELD_NUMBER: _ClassVar[int]
    BREAK_GLASS_ALLOWED_FIELD_NUMBER: _ClassVar[int]
    MAX_PARALLEL_FIELD_NUMBER: _ClassVar[int]
    allowed: bool
    approval_required: bool
    max_ttl_seconds: int
    policies: _containers.RepeatedScalarFieldContainer[str]
    errors: _containers.RepeatedScalarFieldContainer[str]
    explanation: str
    break_glass_allowed: bool
    max_parallel: int
    def __init__(self, allowed: bool = ..., approval_required: bool = ..., max_ttl_seconds: _Optional[int] = ..., policies: _Optional[_Iterable[str]] = ..., errors: _Optional[_Iterable[str]] = ..., explanation: _Optional[str] = ..., break_glass_allowed: bool = ..., max_parallel: _Optional[int] = ...) -> None: ...

class TaskIdRequest(_message.Message):
    __slots__ = ("id",)
    ID_FIELD_NUMBER: _ClassVar[int]
    id: str
    def __init__(self, id: _Optional[str] = ...) -> None: ...

class AcknowledgeTaskRequest(_message.Message):
    __slots__ = ("id", "note")
    ID_FIELD_NUMBER: _ClassVar[int]
    NOTE_FIELD_NUMBER: _ClassVar[int]
    id: str
    note: str
    def __init__(self, id: _Optional[str] = ..., note: _Optional[str] = ...) -> None: ...

class EndTaskRequest(_message.Message):
    __slots__ = ("id", "outcome", "reason")
    ID_FIELD_NUMBER: _ClassVar[int]
    OUTCOME_FIELD_NUMBER: _ClassVar[int]
    REASON_FIELD_NUMBER: _ClassVar[int]
    id: str
    outcome: str
    reason: str
    def __init__(self, id: _Optional[str] = ..., outcome: _Optional[str] = ..., reason: _Optional[str] = ...) -> None: ...

class ListTasksRequest(_message.Message):
    __slots__ = ("state",)
    STATE_FIELD_NUMBER: _ClassVar[int]
    state: str
    def __init__(self, state: _Optional[str] = ...) -> None: ...

class ListTasksResponse(_message.Message):
    __slots__ = ("tasks",)
    TASKS_FIELD_NUMBER: _ClassVar[int]
    tasks: _containers.RepeatedCompositeFieldContainer[Task]
    def __init__(self, tasks: _Optional[_Iterable[_Union[Task, _Mapping]]] = ...) -> None: ...

class ReloadPolicyRequest(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class PolicyStatus(_message.Message):
    __slots__ = ("description", "policies")
    DESCRIPTION_FIELD_NUMBER: _ClassVar[int]
    POLICIES_FIELD_NUMBER: _ClassVar[int]
    description: str
    policies: int
    def __init__(self, description: _Optional[str] = ..., policies: _Optional[int] = ...) -> None: ...

class ListAuditRequest(_message.Message):
    __slots__ = ("task_id", "tenant")
    TASK_ID_FIELD_NUMBER: _ClassVar[int]
    TENANT_FIELD_NUMBER: _ClassVar[int]
    task_id: str
    tenant: str
    def __init__(self, task_id: _Optional[str] = ..., tenant: _Optional[str] = ...) -> None: ...

class AuditRecord(_message.Message):
    __slots__ = ("seq", "at_ms", "kind", "task_id", "subject", "detail_json", "prev_hash", "hash", "actor", "tenant")
    SEQ_FIELD_NUMBER: _ClassVar[int]
    AT_MS_FIELD_NUMBER: _ClassVar[int]
    KIND_FIELD_NUMBER: _ClassVar[int]
    TASK_ID_FIELD_NUMBER: _ClassVar[int]
    SUBJECT_FIELD_NUMBER: _ClassVar[int]
    DETAIL_JSON_FIELD_NUMBER: _ClassVar[int]
    PREV_HASH_FIELD_NUMBER: _ClassVar[int]
    HASH_FIELD_NUMBER: _ClassVar[int]
    ACTOR_FIELD_NUMBER: _ClassVar[int]
    TENANT_FIELD_NUMBER: _ClassVar[int]
    seq: int
    at_ms: int
    kind: str
    task_id: str
    subject: str
    detail_json: str
    prev_hash: str
    hash: str
    actor: str
    tenant: str
    def __init__(self, seq: _Optional[int] = ..., at_ms: _Optional[int] = ..., kind: _Optional[str] = ..., task_id: _Optional[str] = ..., subject: _Optional[str] = ..., detail_json: _Optional[str] = ..., prev_hash: _Optional[str] = ..., hash: _Optional[str] = ..., actor: _Optional[str] = ..., tenant: _Optional[str] = ...) -> None: ...

class VerifyAuditRequest(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class VerifyAuditResponse(_message.Message):
    __slots__ = ("ok", "records", "first_bad_seq", "error", "problems", "checkpoints", "anchored")
    OK_FIELD_NUMBER: _ClassVar[int]
    RECORDS_FIELD_NUMBER: _ClassVar[int]
    FIRST_BAD_SEQ_FIELD_NUMBER: _ClassVar[int]
    ERROR_FIELD_NUMBER: _ClassVar[int]
    PROBLEMS_FIELD_NUMBER: _ClassVar[int]
    CHECKPOINTS_FIELD_NUMBER: _ClassVar[int]
    ANCHORED_FIELD_NUMBER: _ClassVar[int]
    ok: bool
    records: int
    first_bad_seq: int
    error: str
    problems: _containers.RepeatedScalarFieldContainer[str]
    checkpoints: int
    anchored: int
    def __init__(self, ok: bool = ..., records: _Optional[int] = ..., first_bad_seq: _Optional[int] = ..., error: _Optional[str] = ..., problems: _Optional[_Iterable[str]] = ..., checkpoints: _Optional[int] = ..., anchored: _Optional[int] = ...) -> None: ...

class CaInfo(_message.Message):
    __slots__ = ("serial", "phase", "not_before", "not_after")
    SERIAL_FIELD_NUMBER: _ClassVar[int]
    PHASE_FIELD_NUMBER: _ClassVar[int]
    NOT_BEFORE_FIELD_NUMBER: _ClassVar[int]
    NOT_AFTER_FIELD_NUMBER: _ClassVar[int]
    serial: str
    phase: str
    not_before: int
    not_after: int
    def __init__(self, serial: _Optional[str] = ..., phase: _Optional[str] = ..., not_before: _Optional[int] = ..., not_after: _Optional[int] = ...) -> None: ...

class ListCasRequest(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class RotateCaRequest(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class ListCasResponse(_message.Message):
    __slots__ = ("cas",)
    CAS_FIELD_NUMBER: _ClassVar[int]
    cas: _containers.RepeatedCompositeFieldContainer[CaInfo]
    def __init__(self, cas: _Optional[_Iterable[_Union[CaInfo, _Mapping]]] = ...) -> None: ...

class CreateJoinTokenRequest(_message.Message):
    __slots__ = ("spiffe_id", "ttl_seconds")
    SPIFFE_ID_FIELD_NUMBER: _ClassVar[int]
    TTL_SECONDS_FIELD_NUMBER: _ClassVar[int]
    spiffe_id: str
    ttl_seconds: int
    def __init__(self, spiffe_id: _Optional[str] = ..., ttl_seconds: _Optional[int] = ...) -> None: ...

class CreateJoinTokenResponse(_message.Message):
    __slots__ = ("token", "spiffe_id", "expires_at")
    TOKEN_FIELD_NUMBER: _ClassVar[int]
    SPIFFE_ID_FIELD_NUMBER: _ClassVar[int]
    EXPIRES_AT_FIELD_NUMBER: _ClassVar[int]
    token: str
    spiffe_id: str
    expires_at: int
    def __init__(self, token: _Optional[str] = ..., spiffe_id: _Optional[str] = ..., expires_at: _Optional[int] = ...) -> None: ...

class EntrySpec(_message.Message):
    __slots__ = ("spiffe_id", "parent_id", "selectors", "x509_svid_ttl_seconds", "jwt_svid_ttl_seconds", "dns_names", "jit", "hint", "tenant", "owner", "expires_at", "review_every_seconds", "node")
    SPIFFE_ID_FIELD_NUMBER: _ClassVar[int]
    PARENT_ID_FIELD_NUMBER: _ClassVar[int]
    SELECTORS_FIELD_NUMBER: _ClassVar[int]
    X509_SVID_TTL_SECONDS_FIELD_NUMBER: _ClassVar[int]
    JWT_SVID_TTL_SECONDS_FIELD_NUMBER: _ClassVar[int]
    DNS_NAMES_FIELD_NUMBER: _ClassVar[int]
    JIT_FIELD_NUMBER: _ClassVar[int]
    HINT_FIELD_NUMBER: _ClassVar[int]
    TENANT_FIELD_NUMBER: _ClassVar[int]
    OWNER_FIELD_NUMBER: _ClassVar[int]
    EXPIRES_AT_FIELD_NUMBER: _ClassVar[int]
    REVIEW_EVERY_SECONDS_FIELD_NUMBER: _ClassVar[int]
    NODE_FIELD_NUMBER: _ClassVar[int]
    spiffe_id: str
    parent_id: str
    selectors: _containers.RepeatedScalarFieldContainer[str]
    x509_svid_ttl_seconds: int
    jwt_svid_ttl_seconds: int
    dns_names: _containers.RepeatedScalarFieldContainer[str]
    jit: bool
    hint: str
    tenant: str
    owner: str
    expires_at: int
    review_every_seconds: int
    node: bool
    def __init__(self, spiffe_id: _Optional[str] = ..., parent_id: _Optional[str] = ..., selectors: _Optional[_Iterable[str]] = ..., x509_svid_ttl_seconds: _Optional[int] = ..., jwt_svid_ttl_seconds: _Optional[int] = ..., dns_names: _Optional[_Iterable[str]] = ..., jit: bool = ..., hint: _Optional[str] = ..., tenant: _Optional[str] = ..., owner: _Optional[str] = ..., expires_at: _Optional[int] = ..., review_every_seconds: _Optional[int] = ..., node: bool = ...) -> None: ...

class UpdateEntryRequest(_message.Message):
    __slots__ = ("id", "spec")
    ID_FIELD_NUMBER: _ClassVar[int]
    SPEC_FIELD_NUMBER: _ClassVar[int]
    id: str
    spec: EntrySpec
    def __init__(self, id: _Optional[str] = ..., spec: _Optional[_Union[EntrySpec, _Mapping]] = ...) -> None: ...

class EntryIdRequest(_message.Message):
    __slots__ = ("id",)
    ID_FIELD_NUMBER: _ClassVar[int]
    id: str
    def __init__(self, id: _Optional[str] = ...) -> None: ...

class ListEntriesRequest(_message.Message):
    __slots__ = ("spiffe_id", "parent_id", "tenant")
    SPIFFE_ID_FIELD_NUMBER: _ClassVar[int]
    PARENT_ID_FIELD_NUMBER: _ClassVar[int]
    TENANT_FIELD_NUMBER: _ClassVar[int]
    spiffe_id: str
    parent_id: str
    tenant: str
    def __init__(self, spiffe_id: _Optional[str] = ..., parent_id: _Optional[str] = ..., tenant: _Optional[str] = ...) -> None: ...

class ListEntriesResponse(_message.Message):
    __slots__ = ("entries",)
    ENTRIES_FIELD_NUMBER: _ClassVar[int]
    entries: _containers.RepeatedCompositeFieldContainer[Entry]
    def __init__(self, entries: _Optional[_Iterable[_Union[Entry, _Mapping]]] = ...) -> None: ...

class Agent(_message.Message):
    __slots__ = ("spiffe_id", "serial", "expires_at", "attested_at", "banned", "attestation_type", "selectors")
    SPIFFE_ID_FIELD_NUMBER: _ClassVar[int]
    SERIAL_FIELD_NUMBER: _ClassVar[int]
    EXPIRES_AT_FIELD_NUMBER: _ClassVar[int]
    ATTESTED_AT_FIELD_NUMBER: _ClassVar[int]
    BANNED_FIELD_NUMBER: _ClassVar[int]
    ATTESTATION_TYPE_FIELD_NUMBER: _ClassVar[int]
    SELECTORS_FIELD_NUMBER: _ClassVar[int]
    spiffe_id: str
    serial: str
    expires_at: int
    attested_at: int
    banned: bool
    attestation_type: str
    selectors: _containers.RepeatedScalarFieldContainer[str]
    def __init__(self, spiffe_id: _Optional[str] = ..., serial: _Optional[str] = ..., expires_at: _Optional[int] = ..., attested_at: _Optional[int] = ..., banned: bool = ..., attestation_type: _Optional[str] = ..., selectors: _Optional[_Iterable[str]] = ...) -> None: ...

class ListAgentsRequest(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class ListAgentsResponse(_message.Message):
    __slots__ = ("agents",)
    AGENTS_FIELD_NUMBER: _ClassVar[int]
    agents: _containers.RepeatedCompositeFieldContainer[Agent]
    def __init__(self, agents: _Optional[_Iterable[_Union[Agent, _Mapping]]] = ...) -> None: ...

class AgentIdRequest(_message.Message):
    __slots__ = ("spiffe_id",)
    SPIFFE_ID_FIELD_NUMBER: _ClassVar[int]
    spiffe_id: str
    def __init__(self, spiffe_id: _Optional[str] = ...) -> None: ...

class GetBundleRequest(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class HealthRequest(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class HealthResponse(_message.Message):
    __slots__ = ("ready", "reason")
    READY_FIELD_NUMBER: _ClassVar[int]
    REASON_FIELD_NUMBER: _ClassVar[int]
    ready: bool
    reason: str
    def __init__(self, ready: bool = ..., reason: _Optional[str] = ...) -> None: ...

class UsageReport(_message.Message):
    __slots__ = ("items", "live_instances")
    ITEMS_FIELD_NUMBER: _ClassVar[int]
    LIVE_INSTANCES_FIELD_NUMBER: _ClassVar[int]
    items: _containers.RepeatedCompositeFieldContainer[EntryUsageItem]
    live_instances: _containers.RepeatedScalarFieldContainer[str]
    def __init__(self, items: _Optional[_Iterable[_Union[EntryUsageItem, _Mapping]]] = ..., live_instances: _Optional[_Iterable[str]] = ...) -> None: ...

class EntryUsageItem(_message.Message):
    __slots__ = ("entry_id", "deliveries", "validations", "last_used_at")
    ENTRY_ID_FIELD_NUMBER: _ClassVar[int]
    DELIVERIES_FIELD_NUMBER: _ClassVar[int]
    VALIDATIONS_FIELD_NUMBER: _ClassVar[int]
    LAST_USED_AT_FIELD_NUMBER: _ClassVar[int]
    entry_id: str
    deliveries: int
    validations: int
    last_used_at: int
    def __init__(self, entry_id: _Optional[str] = ..., deliveries: _Optional[int] = ..., validations: _Optional[int] = ..., last_used_at: _Optional[int] = ...) -> None: ...

class UsageReportAck(_message.Message):
    __slots__ = ("accepted", "ignored")
    ACCEPTED_FIELD_NUMBER: _ClassVar[int]
    IGNORED_FIELD_NUMBER: _ClassVar[int]
    accepted: int
    ignored: int
    def __init__(self, accepted: _Optional[int] = ..., ignored: _Optional[int] = ...) -> None: ...

class OffboardRequest(_message.Message):
    __slots__ = ("owner", "reason")
    OWNER_FIELD_NUMBER: _ClassVar[int]
    REASON_FIELD_NUMBER: _ClassVar[int]
    owner: str
    reason: str
    def __init__(self, owner: _Optional[str] = ..., reason: _Optional[str] = ...) -> None: ...

class OffboardResponse(_message.Message):
    __slots__ = ("ended_tasks", "disabled_entries")
    ENDED_TASKS_FIELD_NUMBER: _ClassVar[int]
    DISABLED_ENTRIES_FIELD_NUMBER: _ClassVar[int]
    ended_tasks: _containers.RepeatedScalarFieldContainer[str]
    disabled_entries: _containers.RepeatedScalarFieldContainer[str]
    def __init__(self, ended_tasks: _Optional[_Iterable[str]] = ..., disabled_entries: _Optional[_Iterable[str]] = ...) -> None: ...
