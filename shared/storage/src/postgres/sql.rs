//! The PostgreSQL schema and statements. Every write is one call of `portcullis_write`, a
//! server-side function, so it is one round trip and one transaction.

/// Serialises schema creation between processes starting at once (CREATE ... IF NOT EXISTS
/// alone races on the catalog). Any constant works; this one spells "pcullis1".
pub(crate) const SCHEMA_LOCK: i64 = 0x7063_756c_6c69_7331;

/// The NOTIFY channel: the payload is the new revision.
pub(crate) const CHANNEL: &str = "portcullis_changes";

/// Keys use the "C" collation so that order is byte order, as in the embedded backends.
/// `portcullis_meta` holds the one revision counter: its row lock orders all writers of all
/// processes, so revisions commit in order, which is what keeps watchers' order right.
pub(crate) const SCHEMA: &str = r#"
CREATE TABLE IF NOT EXISTS portcullis_kv (
    key text COLLATE "C" PRIMARY KEY,
    value bytea NOT NULL,
    revision bigint NOT NULL,
    expires timestamptz
);
CREATE INDEX IF NOT EXISTS portcullis_kv_expires ON portcullis_kv (expires) WHERE expires IS NOT NULL;
CREATE TABLE IF NOT EXISTS portcullis_events (
    revision bigint PRIMARY KEY,
    key text COLLATE "C" NOT NULL,
    kind smallint NOT NULL,
    value bytea
);
CREATE TABLE IF NOT EXISTS portcullis_meta (
    id smallint PRIMARY KEY CHECK (id = 1),
    revision bigint NOT NULL
);
INSERT INTO portcullis_meta (id, revision) VALUES (1, 0) ON CONFLICT DO NOTHING;

-- p_op: 1 put, 2 put if absent, 3 put if equal to p_expected, 4 delete,
-- 5 delete if equal to p_expected, 6 delete if expired (the TTL sweep).
-- Returns the new revision, or 0 when the condition failed and nothing was written.
CREATE OR REPLACE FUNCTION portcullis_write(p_op integer, p_key text, p_value bytea, p_expected bytea, p_ttl_ms bigint)
RETURNS bigint LANGUAGE plpgsql AS $fn$
DECLARE
    cur bytea;
    live boolean;
    rev bigint;
BEGIN
    -- Taken first: every later statement sees all writes committed before ours.
    PERFORM 1 FROM portcullis_meta WHERE id = 1 FOR UPDATE;
    IF p_op = 6 THEN
        PERFORM 1 FROM portcullis_kv WHERE key = p_key AND expires <= clock_timestamp();
        IF NOT FOUND THEN RETURN 0; END IF;
    ELSE
        SELECT value INTO cur FROM portcullis_kv
            WHERE key = p_key AND (expires IS NULL OR expires > clock_timestamp());
        live := FOUND;
        IF (p_op = 2 AND live)
            OR (p_op IN (3, 5) AND (NOT live OR cur <> p_expected))
            OR (p_op = 4 AND NOT live) THEN
            RETURN 0;
        END IF;
    END IF;
    UPDATE portcullis_meta SET revision = revision + 1 WHERE id = 1 RETURNING revision INTO rev;
    IF p_op IN (1, 2, 3) THEN
        INSERT INTO portcullis_kv (key, value, revision, expires)
            VALUES (p_key, p_value, rev,
                    CASE WHEN p_ttl_ms IS NULL THEN NULL ELSE clock_timestamp() + p_ttl_ms * interval '1 millisecond' END)
            ON CONFLICT (key) DO UPDATE
            SET value = excluded.value, revision = excluded.revision, expires = excluded.expires;
        INSERT INTO portcullis_events (revision, key, kind, value) VALUES (rev, p_key, 1, p_value);
    ELSE
        DELETE FROM portcullis_kv WHERE key = p_key;
        INSERT INTO portcullis_events (revision, key, kind, value) VALUES (rev, p_key, 2, NULL);
    END IF;
    PERFORM pg_notify('portcullis_changes', rev::text);
    RETURN rev;
END
$fn$;
"#;

pub(crate) const WRITE: &str = "SELECT portcullis_write($1, $2, $3, $4, $5)";
pub(crate) const GET: &str = "SELECT value, revision FROM portcullis_kv \
     WHERE key = $1 AND (expires IS NULL OR expires > now())";
pub(crate) const LIST: &str = "SELECT key, value, revision FROM portcullis_kv \
     WHERE key >= $1 AND ($2::text IS NULL OR key < $2) AND (expires IS NULL OR expires > now()) ORDER BY key";
pub(crate) const RANGE_ASC: &str = "SELECT key, value, revision FROM portcullis_kv \
     WHERE key >= $1 AND key < $2 AND (expires IS NULL OR expires > now()) ORDER BY key ASC LIMIT $3";
pub(crate) const RANGE_DESC: &str = "SELECT key, value, revision FROM portcullis_kv \
     WHERE key >= $1 AND key < $2 AND (expires IS NULL OR expires > now()) ORDER BY key DESC LIMIT $3";
pub(crate) const REVISION: &str = "SELECT revision FROM portcullis_meta WHERE id = 1";
pub(crate) const EVENTS_AFTER: &str = "SELECT revision, key, kind, value FROM portcullis_events \
     WHERE revision > $1 ORDER BY revision LIMIT $2";
pub(crate) const EXPIRED: &str = "SELECT key FROM portcullis_kv WHERE expires <= now() ORDER BY expires LIMIT 100";
/// Keeps the newest `$1` events (the history a restarted replica or a lagging feed resumes from).
pub(crate) const PRUNE: &str = "DELETE FROM portcullis_events \
     WHERE revision <= (SELECT revision FROM portcullis_meta WHERE id = 1) - $1";

/// Operation codes of `portcullis_write`.
pub(crate) mod op {
    pub(crate) const PUT: i32 = 1;
    pub(crate) const CREATE: i32 = 2;
    pub(crate) const CAS: i32 = 3;
    pub(crate) const DELETE: i32 = 4;
    pub(crate) const CAD: i32 = 5;
    pub(crate) const EXPIRE: i32 = 6;
}
