-- Schema version 4 (PostgreSQL): a task records the Unix user that asked for it (an
-- operator's uid and name on the admin socket; a workload's attested uid and its name on
-- the workload's node) and the uid of the operator who approved it, so that one Unix user
-- can never both request and approve a task. NULL on tasks recorded before version 4:
-- such a task cannot be approved (its requester's user is unknown).

ALTER TABLE tasks ADD COLUMN requester_uid BIGINT;
ALTER TABLE tasks ADD COLUMN requester_user TEXT;
ALTER TABLE tasks ADD COLUMN approver_uid BIGINT;
