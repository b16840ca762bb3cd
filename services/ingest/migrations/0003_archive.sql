-- Archive, restore and retention (docs/lifecycle.md): which partitions were
-- exported to the archive bucket and verified, dropped and restored; which
-- package blobs were deleted at the end of their retention; the indexes the
-- cleanup job needs to find blobs by hash and packages by age. At the end,
-- two functions of 0002 rewritten so that they also work on Citus.

-- One row per archived partition, inserted only once its export was read back
-- and found equal to its seal (so a row here means "the archive is good").
-- `state`: `archived` (exported, the partition still attached), `dropped`
-- (detached and dropped), `restored` (brought back by `restore`; dropped again
-- by the archive job after `restore_keep_days`). Only the two functions below
-- change `state`.
CREATE TABLE partition_archives (
    partition_name  text        PRIMARY KEY,
    range_from      timestamptz NOT NULL,
    range_to        timestamptz NOT NULL,
    row_count       bigint      NOT NULL CHECK (row_count >= 0),
    digest          bytea       NOT NULL CHECK (octet_length(digest) = 32),
    algorithm       text        NOT NULL,
    format          text        NOT NULL,
    bucket          text        NOT NULL,
    object_key      text        NOT NULL,
    object_sha256   bytea       NOT NULL CHECK (octet_length(object_sha256) = 32),
    object_bytes    bigint      NOT NULL,
    manifest_key    text        NOT NULL,
    manifest_sha256 bytea       NOT NULL CHECK (octet_length(manifest_sha256) = 32),
    archived_at     timestamptz NOT NULL,
    run_id          bigint,
    state           text        NOT NULL DEFAULT 'archived'
                                CHECK (state IN ('archived', 'dropped', 'restored')),
    dropped_at      timestamptz,
    restored_at     timestamptz,
    restore_run_id  bigint
);

-- Detaches and drops an archived partition, as its owner (the service role
-- runs the job and owns nothing). Refuses anything that has no verified
-- archive: no path drops records that are not safely in the archive.
CREATE FUNCTION tallyhouse_drop_archived_partition(partition_name text)
RETURNS boolean
LANGUAGE plpgsql
SECURITY DEFINER SET search_path = public, pg_temp AS $$
DECLARE
    rel regclass;
    archive_state text;
BEGIN
    IF partition_name !~ '^records_p[0-9]{8}$' THEN
        RAISE EXCEPTION 'tallyhouse: % is not a daily partition of records', partition_name;
    END IF;
    SELECT a.state INTO archive_state FROM partition_archives a
        WHERE a.partition_name = tallyhouse_drop_archived_partition.partition_name FOR UPDATE;
    IF archive_state IS NULL THEN
        RAISE EXCEPTION 'tallyhouse: % has no verified archive: not dropped', partition_name;
    END IF;
    rel := to_regclass(partition_name);
    IF rel IS NOT NULL THEN
        IF NOT EXISTS (SELECT 1 FROM pg_inherits WHERE inhrelid = rel AND inhparent = 'records'::regclass) THEN
            RAISE EXCEPTION 'tallyhouse: % is not a partition of records', partition_name;
        END IF;
        EXECUTE format('ALTER TABLE records DETACH PARTITION %I', partition_name);
        EXECUTE format('DROP TABLE %I', partition_name);
    END IF;
    UPDATE partition_archives a SET state = 'dropped', dropped_at = clock_timestamp()
        WHERE a.partition_name = tallyhouse_drop_archived_partition.partition_name;
    RETURN rel IS NOT NULL;
END
$$;
REVOKE EXECUTE ON FUNCTION tallyhouse_drop_archived_partition(text) FROM PUBLIC;

-- Creates the (empty) partition of a dropped archive for `restore` to fill,
-- and marks the archive restored, in the caller's transaction: the restore
-- job copies the rows in and commits only when they match the seal.
CREATE FUNCTION tallyhouse_begin_restore(partition_name text, run bigint)
RETURNS void
LANGUAGE plpgsql
SECURITY DEFINER SET search_path = public, pg_temp AS $$
DECLARE
    archive partition_archives;
BEGIN
    SELECT * INTO archive FROM partition_archives a
        WHERE a.partition_name = tallyhouse_begin_restore.partition_name FOR UPDATE;
    IF archive.partition_name IS NULL THEN
        RAISE EXCEPTION 'tallyhouse: % was never archived', partition_name;
    END IF;
    IF archive.state <> 'dropped' OR to_regclass(partition_name) IS NOT NULL THEN
        RAISE EXCEPTION 'tallyhouse: % is present (state %): nothing to restore', partition_name, archive.state;
    END IF;
    PERFORM tallyhouse_ensure_partitions(archive.range_from, archive.range_from);
    UPDATE partition_archives a SET state = 'restored', restored_at = clock_timestamp(), restore_run_id = run
        WHERE a.partition_name = tallyhouse_begin_restore.partition_name;
END
$$;
REVOKE EXECUTE ON FUNCTION tallyhouse_begin_restore(text, bigint) FROM PUBLIC;

-- Package blobs deleted from the evidence bucket at the end of their
-- retention (the package rows stay: they are the catalogue, and a raw read of
-- such a package answers `evidence_expired`). Insert-only.
CREATE TABLE blob_expiries (
    sha256     bytea       PRIMARY KEY CHECK (octet_length(sha256) = 32),
    blob_key   text        NOT NULL,
    deleted_at timestamptz NOT NULL,
    run_id     bigint
);
CREATE TRIGGER blob_expiries_immutable BEFORE UPDATE OR DELETE ON blob_expiries
    FOR EACH ROW EXECUTE FUNCTION tallyhouse_refuse_change();

-- The cleanup job looks blobs up by hash (is this object some package's?)
-- and packages up by age (whose blobs are past retention?). A hash index is
-- a few bytes per package; a BRIN index on received_at costs almost nothing
-- since packages arrive in received_at order.
CREATE INDEX packages_sha256 ON packages USING hash (sha256);
CREATE INDEX packages_received_at ON packages USING brin (received_at);

-- The rollup markers' trigger (0002), rewritten to work on Citus too: there
-- the trigger runs on the shards of `records`, and an INSERT … SELECT that
-- reads the transition table into the distributed `rollup_dirty` fails
-- ("executor could not find named tuplestore"): Citus plans it as a
-- distributed INSERT … SELECT and runs the SELECT where the transition table
-- is not. Reading the transition table into arrays first is an ordinary
-- local query in both modes; the markers are then inserted from the arrays
-- (on Citus, into the co-located shard of `rollup_dirty`, on the same node as
-- the records' shard). Same markers, same transaction, as before.
CREATE OR REPLACE FUNCTION tallyhouse_note_rollup_dirty() RETURNS trigger
LANGUAGE plpgsql
SECURITY DEFINER SET search_path = public, pg_temp AS $$
DECLARE
    subs text[];
    hours timestamptz[];
BEGIN
    SELECT array_agg(d.s), array_agg(d.h) INTO subs, hours
    FROM (SELECT DISTINCT submitter_id AS s,
                 date_bin('3600 seconds', ts, TIMESTAMPTZ '1970-01-01 00:00:00+00') AS h
          FROM new_records) d;
    IF subs IS NOT NULL THEN
        INSERT INTO rollup_dirty (submitter_id, hour) SELECT * FROM unnest(subs, hours);
    END IF;
    RETURN NULL;
END
$$;

-- The columnar conversion (0002), rewritten because Citus refuses its size
-- functions in a transaction that modified shards ("citus size functions
-- cannot be called in transaction blocks which contain multi-shard data
-- modifications"): measured after alter_table_set_access_method in the same
-- transaction, the size failed every conversion. The function now answers
-- the size before only, and `bytes_after` NULL: the columnar job measures
-- the size after in a transaction of its own, once this one committed.
CREATE OR REPLACE FUNCTION tallyhouse_convert_to_columnar(partition_name text, OUT bytes_before bigint, OUT bytes_after bigint)
LANGUAGE plpgsql
SECURITY DEFINER SET search_path = public, pg_temp AS $$
DECLARE
    rel regclass;
BEGIN
    IF partition_name !~ '^records_p[0-9]{8}$' THEN
        RAISE EXCEPTION 'tallyhouse: % is not a daily partition of records', partition_name;
    END IF;
    rel := to_regclass(partition_name);
    IF rel IS NULL OR NOT EXISTS (
        SELECT 1 FROM pg_inherits WHERE inhrelid = rel AND inhparent = 'records'::regclass
    ) THEN
        RAISE EXCEPTION 'tallyhouse: % is not a partition of records', partition_name;
    END IF;
    IF NOT EXISTS (SELECT 1 FROM pg_extension WHERE extname = 'citus')
       OR NOT EXISTS (SELECT 1 FROM pg_am WHERE amname = 'columnar') THEN
        RAISE EXCEPTION 'tallyhouse: columnar storage needs the citus and citus_columnar extensions';
    END IF;
    -- Conversion recreates the partition and its triggers, which Citus
    -- refuses on distributed tables without this setting (for this
    -- transaction only).
    PERFORM set_config('citus.enable_unsafe_triggers', 'on', true);
    EXECUTE 'SELECT citus_total_relation_size($1)' INTO bytes_before USING rel;
    -- Columnar tables take btree and hash indexes only; their chunk min/max
    -- do what the BRIN index on ts did.
    EXECUTE format('DROP INDEX IF EXISTS %I', partition_name || '_ts');
    EXECUTE 'SELECT alter_table_set_access_method($1, ''columnar'')' USING rel;
    bytes_after := NULL;
END
$$;
