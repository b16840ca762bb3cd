-- The time-series store: one row per package (the evidence's index) and its
-- records, range-partitioned by time. Rows are append-only.
-- Runs on plain PostgreSQL; with the Citus extension present, the
-- distribution step in 0002 distributes both tables by submitter_id.

CREATE TABLE packages (
    submitter_id text        NOT NULL,
    package_id   uuid        NOT NULL,
    sha256       bytea       NOT NULL CHECK (octet_length(sha256) = 32),
    size_bytes   bigint      NOT NULL CHECK (size_bytes > 0),
    record_count integer     NOT NULL CHECK (record_count >= 0),
    key_id       text        NOT NULL,
    signature    bytea       NOT NULL,
    audience     text        NOT NULL,
    created_at   timestamptz NOT NULL,
    received_at  timestamptz NOT NULL,
    blob_key     text        NOT NULL,
    receipt      text        NOT NULL,
    PRIMARY KEY (submitter_id, package_id)
);

CREATE INDEX packages_received ON packages (submitter_id, received_at, package_id);

CREATE TABLE records (
    submitter_id text             NOT NULL,
    ts           timestamptz      NOT NULL,
    series       text             NOT NULL,
    value        double precision NOT NULL,
    labels       jsonb            NOT NULL,
    package_id   uuid             NOT NULL,
    ordinal      integer          NOT NULL
) PARTITION BY RANGE (ts);

-- Partitions are daily and named records_pYYYYMMDD; tallyhouse_ensure_partitions
-- creates any missing ones for a time range (ingest calls it before writing
-- records whose days are not known to exist; the lifecycle job runs it ahead).
-- Indexes live on the partitions, not the parent, so old partitions can be
-- converted to columnar (which refuses inherited indexes).
CREATE FUNCTION tallyhouse_ensure_partitions(from_ts timestamptz, to_ts timestamptz)
RETURNS integer
LANGUAGE plpgsql
-- The service role may create partitions (it owns nothing): the function runs
-- as its owner, with a fixed search path.
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
            -- TRUNCATE of a partition does not fire the parent's trigger.
            EXECUTE format('CREATE TRIGGER %I BEFORE TRUNCATE ON %I FOR EACH STATEMENT EXECUTE FUNCTION tallyhouse_refuse_change()', name || '_no_truncate', name);
            created := created + 1;
        END IF;
        day := day + 1;
    END LOOP;
    RETURN created;
END
$$;

-- Append-only: refuse UPDATE, DELETE and TRUNCATE whoever asks (the service
-- role is not granted them either). Archiving (detach + drop of whole
-- partitions) is the only way rows leave, and it is the lifecycle job's.
CREATE FUNCTION tallyhouse_refuse_change() RETURNS trigger
LANGUAGE plpgsql AS $$
BEGIN
    RAISE EXCEPTION 'tallyhouse: % on % is refused: rows are immutable evidence', TG_OP, TG_TABLE_NAME
        USING ERRCODE = 'insufficient_privilege';
END
$$;

CREATE TRIGGER packages_immutable BEFORE UPDATE OR DELETE ON packages
    FOR EACH ROW EXECUTE FUNCTION tallyhouse_refuse_change();
CREATE TRIGGER packages_no_truncate BEFORE TRUNCATE ON packages
    FOR EACH STATEMENT EXECUTE FUNCTION tallyhouse_refuse_change();
CREATE TRIGGER records_immutable BEFORE UPDATE OR DELETE ON records
    FOR EACH ROW EXECUTE FUNCTION tallyhouse_refuse_change();
CREATE TRIGGER records_no_truncate BEFORE TRUNCATE ON records
    FOR EACH STATEMENT EXECUTE FUNCTION tallyhouse_refuse_change();
