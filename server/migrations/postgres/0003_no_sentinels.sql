-- Schema version 3 (PostgreSQL): what is unknown or not yet set is NULL, not 0 or '': a
-- task's approver (none yet), activation time (not active yet), end time and end reason
-- (still open); an agent's previous serial (never renewed). An open task keeps no end; a
-- final task keeps its end time and reason (possibly '').

ALTER TABLE tasks ALTER COLUMN approver DROP NOT NULL;
ALTER TABLE tasks ALTER COLUMN activated_at DROP NOT NULL;
ALTER TABLE tasks ALTER COLUMN ended_at DROP NOT NULL;
ALTER TABLE tasks ALTER COLUMN end_reason DROP NOT NULL;
UPDATE tasks SET approver = NULL WHERE approver = '';
UPDATE tasks SET activated_at = NULL WHERE activated_at = 0;
UPDATE tasks SET ended_at = NULL, end_reason = NULL
    WHERE state IN ('pending_approval', 'active');

ALTER TABLE agents ALTER COLUMN previous_serial DROP NOT NULL;
UPDATE agents SET previous_serial = NULL WHERE previous_serial = '';
