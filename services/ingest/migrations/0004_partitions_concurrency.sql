-- Partition creation that is safe under any concurrency.
--
-- Before this, two transactions that both found a day's partition missing
-- both ran CREATE TABLE ... PARTITION OF: the second one waited for the
-- first's lock on `records`, then failed with `relation "records_pYYYYMMDD"
-- already exists` (42P07), and the package that caused it got a 500. It
-- happened every time several packages for a never-seen day arrived at once.
--
-- Now a caller that finds days missing takes one transaction-level advisory
-- lock per missing day, in ascending order (so two callers never wait on
-- each other crosswise), before it creates anything; under those locks it
-- looks again, with a fresh snapshot of pg_class (a syscache lookup such as
-- to_regclass may not yet see what another session has just committed), and
-- creates only what is still missing. The locks go with the transaction. It
-- never waits for them while holding a lock on `records`: the only lock on
-- `records` it takes is CREATE TABLE's, after it holds all of its day locks.
-- With nothing missing it takes no lock at all. ingest also treats a 42P07
-- from here as "someone else made it" and calls once more (store.rs).
--
-- The advisory key is (class, day): class 0x74616c79 ("taly"), day as days
-- since 2000-01-01. On Citus, DDL goes through the coordinator, where these
-- locks live.
CREATE OR REPLACE FUNCTION tallyhouse_ensure_partitions(from_ts timestamptz, to_ts timestamptz)
RETURNS integer
LANGUAGE plpgsql
SECURITY DEFINER SET search_path = public, pg_temp AS $$
DECLARE
    first date := (from_ts AT TIME ZONE 'UTC')::date;
    last date := (to_ts AT TIME ZONE 'UTC')::date;
    missing date[];
    day date;
    name text;
    created integer := 0;
BEGIN
    IF last - first > 3700 THEN
        RAISE EXCEPTION 'refusing to create % partitions at once', last - first;
    END IF;
    SELECT coalesce(array_agg(d::date ORDER BY d), '{}') INTO missing
        FROM generate_series(first, last, interval '1 day') AS d
        WHERE to_regclass('records_p' || to_char(d, 'YYYYMMDD')) IS NULL;
    IF cardinality(missing) = 0 THEN
        RETURN 0;
    END IF;
    FOREACH day IN ARRAY missing LOOP
        PERFORM pg_advisory_xact_lock(1952541817, day - DATE '2000-01-01');
    END LOOP;
    FOREACH day IN ARRAY missing LOOP
        name := 'records_p' || to_char(day, 'YYYYMMDD');
        -- A plain query, so this statement's own (fresh) snapshot decides.
        IF NOT EXISTS (
            SELECT 1 FROM pg_class c
            WHERE c.relname = name AND c.relnamespace = 'public'::regnamespace
        ) THEN
            EXECUTE format(
                'CREATE TABLE %I PARTITION OF records FOR VALUES FROM (%L) TO (%L)',
                name, (day::timestamp AT TIME ZONE 'UTC'), ((day + 1)::timestamp AT TIME ZONE 'UTC'));
            EXECUTE format('CREATE INDEX %I ON %I (submitter_id, series, ts)', name || '_series', name);
            EXECUTE format('CREATE INDEX %I ON %I USING brin (ts)', name || '_ts', name);
            -- TRUNCATE of a partition does not fire the parent's trigger.
            EXECUTE format('CREATE TRIGGER %I BEFORE TRUNCATE ON %I FOR EACH STATEMENT EXECUTE FUNCTION tallyhouse_refuse_change()', name || '_no_truncate', name);
            created := created + 1;
        END IF;
    END LOOP;
    RETURN created;
END
$$;
