-- The data lifecycle (docs/lifecycle.md): the record of job runs, partition
-- seals and their checks, columnar conversions, and the hourly and daily
-- rollups with the markers that keep them exact.
-- Grants are made by `ingest migrate` (services/ingest/src/jobs/schema.rs):
-- the service role may run every job (each privileged step is a
-- SECURITY DEFINER function below), readers may read the rollups.

-- One row per run of a job: inserted when the run takes its advisory lock,
-- completed when it ends. A row left without an outcome by a crash is marked
-- `abandoned` by the next run of the same job (which holds the lock, so the
-- crashed one cannot still be running).
CREATE TABLE job_runs (
    run_id      bigint      GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    job         text        NOT NULL,
    origin      text        NOT NULL,
    started_at  timestamptz NOT NULL,
    finished_at timestamptz,
    outcome     text        CHECK (outcome IN ('ok', 'failed', 'abandoned')),
    items       bigint      NOT NULL DEFAULT 0,
    summary     jsonb       NOT NULL DEFAULT '{}',
    CHECK ((finished_at IS NULL) = (outcome IS NULL))
);
CREATE INDEX job_runs_job ON job_runs (job, run_id DESC);

-- A seal: the row count and SHA-256 digest of a partition's rows in the
-- canonical order and encoding of `algorithm` (docs/lifecycle.md), taken once
-- no record can be accepted for the partition any more. Written once.
CREATE TABLE partition_seals (
    partition_name text        PRIMARY KEY,
    range_from     timestamptz NOT NULL,
    range_to       timestamptz NOT NULL,
    row_count      bigint      NOT NULL CHECK (row_count >= 0),
    digest         bytea       NOT NULL CHECK (octet_length(digest) = 32),
    algorithm      text        NOT NULL,
    sealed_at      timestamptz NOT NULL,
    run_id         bigint
);
CREATE TRIGGER partition_seals_immutable BEFORE UPDATE OR DELETE ON partition_seals
    FOR EACH ROW EXECUTE FUNCTION tallyhouse_refuse_change();
CREATE TRIGGER partition_seals_no_truncate BEFORE TRUNCATE ON partition_seals
    FOR EACH STATEMENT EXECUTE FUNCTION tallyhouse_refuse_change();

-- Each re-check of a seal: `ok`, `mismatch` (other row count or digest) or
-- `missing` (the partition is gone). The latest per partition is what the
-- metrics and the alert read.
CREATE TABLE seal_checks (
    check_id       bigint      GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    partition_name text        NOT NULL,
    checked_at     timestamptz NOT NULL,
    status         text        NOT NULL CHECK (status IN ('ok', 'mismatch', 'missing')),
    row_count      bigint,
    digest         bytea,
    run_id         bigint
);
CREATE INDEX seal_checks_partition ON seal_checks (partition_name, check_id DESC);

-- Partitions converted to columnar storage, with their size (table, its
-- indexes and TOAST, on every node) before and after.
CREATE TABLE partition_storage (
    partition_name text        PRIMARY KEY,
    access_method  text        NOT NULL,
    bytes_before   bigint      NOT NULL,
    bytes_after    bigint      NOT NULL,
    converted_at   timestamptz NOT NULL,
    run_id         bigint
);

-- Converts one daily partition of `records` to columnar storage (Citus with
-- citus_columnar only) and answers its size before and after. Runs as its
-- owner, like tallyhouse_ensure_partitions, so the service role can run the
-- job; it accepts only a partition of `records`.
CREATE FUNCTION tallyhouse_convert_to_columnar(partition_name text, OUT bytes_before bigint, OUT bytes_after bigint)
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
    EXECUTE 'SELECT citus_total_relation_size($1)' INTO bytes_after USING to_regclass(partition_name);
END
$$;
-- Functions are executable by PUBLIC by default: only the roles migrate
-- grants (the service role) may convert.
REVOKE EXECUTE ON FUNCTION tallyhouse_convert_to_columnar(text) FROM PUBLIC;

-- A BRIN index on ts in every daily partition: records arrive roughly in
-- time order, so it finds the blocks of one hour (of every submitter) for
-- the rollup job at almost no cost to inserts. The function below is 0001's
-- plus that index; partitions that exist get it here (columnar partitions
-- cannot have one: columnar skips chunks by their min/max instead).
CREATE OR REPLACE FUNCTION tallyhouse_ensure_partitions(from_ts timestamptz, to_ts timestamptz)
RETURNS integer
LANGUAGE plpgsql
SECURITY DEFINER SET search_path = public, pg_temp AS $$
DECLARE
    day date := (from_ts AT TIME ZONE 'UTC')::date;
    last date := (to_ts AT TIME ZONE 'UTC')::date;
    name text;
    created integer := 0;
BEGIN
    IF last - day > 3700 THEN
        RAISE EXCEPTION 'refusing to create % partitions at once', last - day;
    END IF;
    WHILE day <= last LOOP
        name := 'records_p' || to_char(day, 'YYYYMMDD');
        IF to_regclass(name) IS NULL THEN
            EXECUTE format(
                'CREATE TABLE IF NOT EXISTS %I PARTITION OF records FOR VALUES FROM (%L) TO (%L)',
                name, (day::timestamp AT TIME ZONE 'UTC'), ((day + 1)::timestamp AT TIME ZONE 'UTC'));
            EXECUTE format('CREATE INDEX IF NOT EXISTS %I ON %I (submitter_id, series, ts)', name || '_series', name);
            EXECUTE format('CREATE INDEX IF NOT EXISTS %I ON %I USING brin (ts)', name || '_ts', name);
            -- TRUNCATE of a partition does not fire the parent's trigger.
            EXECUTE format('CREATE TRIGGER %I BEFORE TRUNCATE ON %I FOR EACH STATEMENT EXECUTE FUNCTION tallyhouse_refuse_change()', name || '_no_truncate', name);
            created := created + 1;
        END IF;
        day := day + 1;
    END LOOP;
    RETURN created;
END
$$;

DO $$
DECLARE
    part text;
BEGIN
    FOR part IN
        SELECT c.relname FROM pg_inherits i
        JOIN pg_class c ON c.oid = i.inhrelid
        JOIN pg_am a ON a.oid = c.relam
        WHERE i.inhparent = 'records'::regclass AND a.amname = 'heap'
    LOOP
        EXECUTE format('CREATE INDEX IF NOT EXISTS %I ON %I USING brin (ts)', part || '_ts', part);
    END LOOP;
END
$$;

-- Rollups: count, sum, min and max of the records per submitter, series and
-- label set, per hour and per day (buckets aligned on the Unix epoch, UTC).
-- The rollup job recomputes a (submitter, hour) from the records whenever a
-- marker below says records arrived for it, and the days of those hours from
-- the hourly rows, in the same transaction that removes the markers. So an
-- hourly row is exact when no marker exists for its (submitter, hour), and a
-- daily row when none exists for any hour of its day: the query service reads
-- rollups for those and the records for the rest, in one statement.
CREATE TABLE rollup_hourly (
    submitter_id text             NOT NULL,
    series       text             NOT NULL,
    labels       jsonb            NOT NULL,
    bucket       timestamptz      NOT NULL,
    n            bigint           NOT NULL CHECK (n > 0),
    sum          double precision NOT NULL,
    min          double precision NOT NULL,
    max          double precision NOT NULL
);
CREATE INDEX rollup_hourly_series ON rollup_hourly (submitter_id, series, bucket);
CREATE INDEX rollup_hourly_bucket ON rollup_hourly (submitter_id, bucket);

CREATE TABLE rollup_daily (LIKE rollup_hourly INCLUDING CONSTRAINTS);
CREATE INDEX rollup_daily_series ON rollup_daily (submitter_id, series, bucket);
CREATE INDEX rollup_daily_bucket ON rollup_daily (submitter_id, bucket);

-- "Records arrived for this (submitter, hour)": one row per hour an INSERT
-- or COPY into `records` touched, written in the inserting transaction by
-- the trigger below (so it commits or rolls back with the records). No
-- unique index, so concurrent ingest transactions never wait on each other
-- here; the rollup job takes (deletes) the markers of closed hours.
CREATE TABLE rollup_dirty (
    submitter_id text        NOT NULL,
    hour         timestamptz NOT NULL
);
-- By hour: the job takes the closed hours, the lag metric reads the oldest;
-- by submitter and hour: a series query finds the hours it must read raw.
CREATE INDEX rollup_dirty_hour ON rollup_dirty (hour);
CREATE INDEX rollup_dirty_submitter ON rollup_dirty (submitter_id, hour);

CREATE FUNCTION tallyhouse_note_rollup_dirty() RETURNS trigger
LANGUAGE plpgsql
SECURITY DEFINER SET search_path = public, pg_temp AS $$
BEGIN
    INSERT INTO rollup_dirty (submitter_id, hour)
    SELECT DISTINCT submitter_id, date_bin('3600 seconds', ts, TIMESTAMPTZ '1970-01-01 00:00:00+00')
    FROM new_records;
    RETURN NULL;
END
$$;

CREATE TRIGGER records_rollup_dirty AFTER INSERT ON records
    REFERENCING NEW TABLE AS new_records
    FOR EACH STATEMENT EXECUTE FUNCTION tallyhouse_note_rollup_dirty();

-- Records stored before this migration: every hour they touch is marked, so
-- the first rollup run covers them and nothing is read from empty rollups.
INSERT INTO rollup_dirty (submitter_id, hour)
SELECT DISTINCT submitter_id, date_bin('3600 seconds', ts, TIMESTAMPTZ '1970-01-01 00:00:00+00')
FROM records;
