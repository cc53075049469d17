-- Version 4: who submitted each build (see migrations/sqlite/0003).
ALTER TABLE builds ADD COLUMN submitted_by TEXT;
