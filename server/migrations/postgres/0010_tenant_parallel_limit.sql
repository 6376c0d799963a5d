-- Schema version 10: a tenant's limit on tasks open at once on one of its entries
-- (`tenant create|update --max-parallel-tasks-per-entry`). NULL: no tenant limit; the
-- server's `max_parallel_tasks_per_entry` and policy's `@max_parallel` still apply, and the
-- smallest of the three holds. Tenants recorded before version 11 have no limit of their own.

ALTER TABLE tenants ADD COLUMN max_parallel_tasks_per_entry BIGINT;
