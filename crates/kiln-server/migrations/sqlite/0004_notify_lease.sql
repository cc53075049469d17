-- Version 4: a webhook delivery is leased, like a build, so that when the
-- server delivering it dies another takes it over: who holds it and until
-- when (milliseconds since the epoch).
ALTER TABLE notifications ADD COLUMN server TEXT;
ALTER TABLE notifications ADD COLUMN lease_until_ms INTEGER;
