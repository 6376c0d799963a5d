-- Schema version 12 (PostgreSQL): the change feed that lets several servers on one
-- database push every change to their own agents. Each change agents must hear about is
-- appended to `changes` by a trigger, in the transaction that makes the change, and
-- announced on the channel `tessera_changes` (delivered at commit):
--
--   kind            subject       entry_id  parent_id         previous_parent
--   entry           entry id      entry id  its agent         the agent it left, if moved
--   entry_deleted   entry id      entry id  its agent         -
--   task            task id       entry id  its entry's agent -
--   agent_removed   agent id      -         -                 -   (evicted or banned)
--   tenant          tenant name   -         -                 -
--   bundle          (free text)   -         -                 -   (appended by the code that
--                                                                    changes shared keys)
--
-- `seq` has no gaps and grows in commit order: `tessera_feed_append` takes a
-- transaction-scoped advisory lock (prefix "TESF" plus the table's OID) before it reads
-- the largest `seq`, and keeps it until commit, so a reader that saw `seq` N has seen
-- every change up to N. `origin` is the writing server's instance id, set per connection
-- as `tessera.origin` ('' when unset, e.g. psql). `at_ms` is when the row was written.
-- Rows are pruned after an hour by one server at a time; the newest row always stays so
-- numbering goes on.

CREATE TABLE changes (
    seq BIGINT PRIMARY KEY,
    kind TEXT NOT NULL,
    subject TEXT NOT NULL,
    entry_id TEXT,
    parent_id TEXT,
    previous_parent TEXT,
    origin TEXT NOT NULL,
    at_ms BIGINT NOT NULL
);
CREATE INDEX changes_at ON changes (at_ms);

CREATE FUNCTION tessera_feed_append(p_kind TEXT, p_subject TEXT, p_entry TEXT,
    p_parent TEXT, p_previous TEXT) RETURNS void LANGUAGE plpgsql AS $$
BEGIN
    PERFORM pg_advisory_xact_lock(x'54455346'::bigint * 4294967296
        + 'changes'::regclass::oid::bigint);
    INSERT INTO changes (seq, kind, subject, entry_id, parent_id, previous_parent, origin,
        at_ms)
    SELECT COALESCE(max(seq), 0) + 1, p_kind, p_subject, p_entry, p_parent, p_previous,
        COALESCE(current_setting('tessera.origin', true), ''),
        (extract(epoch FROM clock_timestamp()) * 1000)::bigint
    FROM changes;
    PERFORM pg_notify('tessera_changes', '');
END $$;

CREATE FUNCTION tessera_feed_entries() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    IF TG_OP = 'DELETE' THEN
        PERFORM tessera_feed_append('entry_deleted', OLD.id, OLD.id, OLD.parent_id, NULL);
        RETURN OLD;
    END IF;
    IF TG_OP = 'UPDATE' AND NEW IS NOT DISTINCT FROM OLD THEN
        RETURN NEW;
    END IF;
    PERFORM tessera_feed_append('entry', NEW.id, NEW.id, NEW.parent_id,
        CASE WHEN TG_OP = 'UPDATE' AND OLD.parent_id <> NEW.parent_id
            THEN OLD.parent_id END);
    RETURN NEW;
END $$;
CREATE TRIGGER changes_entries AFTER INSERT OR UPDATE OR DELETE ON entries
    FOR EACH ROW EXECUTE FUNCTION tessera_feed_entries();

-- Every task change: state (grants, end, revocation), deadline, acknowledgement.
CREATE FUNCTION tessera_feed_tasks() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    IF TG_OP = 'DELETE' THEN
        PERFORM tessera_feed_append('task', OLD.id, OLD.entry_id, OLD.parent_id, NULL);
        RETURN OLD;
    END IF;
    IF TG_OP = 'UPDATE' AND NEW IS NOT DISTINCT FROM OLD THEN
        RETURN NEW;
    END IF;
    PERFORM tessera_feed_append('task', NEW.id, NEW.entry_id, NEW.parent_id, NULL);
    RETURN NEW;
END $$;
CREATE TRIGGER changes_tasks AFTER INSERT OR UPDATE OR DELETE ON tasks
    FOR EACH ROW EXECUTE FUNCTION tessera_feed_tasks();

-- Evicted (deleted) or banned: not renewals, which change the serial only.
CREATE FUNCTION tessera_feed_agents() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    IF TG_OP = 'DELETE' THEN
        PERFORM tessera_feed_append('agent_removed', OLD.spiffe_id, NULL, NULL, NULL);
        RETURN OLD;
    END IF;
    IF NEW.banned AND NOT OLD.banned THEN
        PERFORM tessera_feed_append('agent_removed', NEW.spiffe_id, NULL, NULL, NULL);
    END IF;
    RETURN NEW;
END $$;
CREATE TRIGGER changes_agents AFTER UPDATE OR DELETE ON agents
    FOR EACH ROW EXECUTE FUNCTION tessera_feed_agents();

CREATE FUNCTION tessera_feed_tenants() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    IF TG_OP = 'DELETE' THEN
        PERFORM tessera_feed_append('tenant', OLD.name, NULL, NULL, NULL);
        RETURN OLD;
    END IF;
    IF TG_OP = 'UPDATE' AND NEW IS NOT DISTINCT FROM OLD THEN
        RETURN NEW;
    END IF;
    PERFORM tessera_feed_append('tenant', NEW.name, NULL, NULL, NULL);
    RETURN NEW;
END $$;
CREATE TRIGGER changes_tenants AFTER INSERT OR UPDATE OR DELETE ON tenants
    FOR EACH ROW EXECUTE FUNCTION tessera_feed_tenants();

-- Another server's CA or JWT key published, moved to another phase or pruned: every
-- server re-reads the shared bundle at once (rather than at its next periodic re-read).
CREATE FUNCTION tessera_feed_bundle() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    IF TG_OP = 'DELETE' THEN
        PERFORM tessera_feed_append('bundle', OLD.server_id, NULL, NULL, NULL);
        RETURN OLD;
    END IF;
    PERFORM tessera_feed_append('bundle', NEW.server_id, NULL, NULL, NULL);
    RETURN NEW;
END $$;
CREATE TRIGGER changes_bundle_authorities AFTER INSERT OR UPDATE OR DELETE
    ON bundle_authorities FOR EACH ROW EXECUTE FUNCTION tessera_feed_bundle();
