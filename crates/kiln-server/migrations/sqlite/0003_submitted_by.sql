-- Version 3: who submitted each build: the id of the token used (the first
-- 16 hex digits of its hash, as `kiln admin token list` shows it) and what
-- it spoke for (`tenant acme`, `operator`).
ALTER TABLE builds ADD COLUMN submitted_by TEXT;
