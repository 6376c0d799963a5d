-- Schema version 15: identity templates. A template is an entry whose SPIFFE ID is built,
-- at a workload's first Workload API call, from the workload's attested selectors
-- (`spiffe://td/acme/svc/{systemd:unit}`); `identity` is SHA-256 of the JSON array
-- `[spiffe_id_template, parent_id]` (unique: one template per text and parent). Entries
-- made from a template ("instances") name it in `template_id`; `instances_seen` holds
-- when an agent last reported an instance's workload alive (no row: never, the grace
-- runs from the entry's creation). Instances not seen for the template's
-- `grace_seconds` are deleted. No foreign keys: deleting a template deletes its
-- instances in the same transaction, and seen rows may outlive their entry until pruned.

CREATE TABLE entry_templates (
    id TEXT COLLATE "C" PRIMARY KEY,
    spiffe_id_template TEXT NOT NULL,
    parent_id TEXT NOT NULL,
    selectors TEXT NOT NULL,
    identity TEXT NOT NULL UNIQUE,
    x509_svid_ttl BIGINT NOT NULL,
    jwt_svid_ttl BIGINT NOT NULL,
    tenant TEXT NOT NULL,
    owner TEXT NOT NULL,
    grace_seconds BIGINT NOT NULL,
    created_at BIGINT NOT NULL
);
CREATE INDEX entry_templates_parent ON entry_templates (parent_id);

ALTER TABLE entries ADD COLUMN template_id TEXT;
CREATE INDEX entries_template ON entries (template_id) WHERE template_id IS NOT NULL;

CREATE TABLE instances_seen (
    entry_id TEXT COLLATE "C" PRIMARY KEY,
    seen_at BIGINT NOT NULL
);

-- Templates on the change feed (see 0012): `template` when one is created (templates are
-- never updated), `template_deleted` when it is deleted; the other servers tell their
-- agents. Its instances are entries, on the feed as such.
CREATE FUNCTION tessera_feed_templates() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    IF TG_OP = 'DELETE' THEN
        PERFORM tessera_feed_append('template_deleted', OLD.id, NULL, OLD.parent_id, NULL);
        RETURN OLD;
    END IF;
    PERFORM tessera_feed_append('template', NEW.id, NULL, NEW.parent_id, NULL);
    RETURN NEW;
END $$;
CREATE TRIGGER changes_templates AFTER INSERT OR DELETE ON entry_templates
    FOR EACH ROW EXECUTE FUNCTION tessera_feed_templates();
