-- Version 5: webhook deliveries are leased (see migrations/sqlite/0004).
ALTER TABLE notifications ADD COLUMN server TEXT;
ALTER TABLE notifications ADD COLUMN lease_until_ms BIGINT;
