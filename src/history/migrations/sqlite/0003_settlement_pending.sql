-- Fees whose charge had not completed, apart from those to collect at the barrier, so
-- that a day's sums add up to its fees. A day is kept only once none of its sessions
-- is live, and a session being charged is, so days kept before this have none.
ALTER TABLE settlements ADD COLUMN pending_minor BIGINT NOT NULL DEFAULT 0;
