-- The auth service's data: back-office users, revoked tokens, login
-- throttling state, and the append-only audit trail.
-- Values are checked by the service already; the checks here keep the
-- tables honest whatever writes to them.

CREATE TABLE users (
    username            text        PRIMARY KEY
                                    CONSTRAINT users_username_format
                                    CHECK (username ~ '^[a-z0-9._@-]{1,64}$'),
    -- At least one of admin, analyst, auditor, sorted, no duplicates.
    roles               text[]      NOT NULL
                                    CONSTRAINT users_roles_valid
                                    CHECK (cardinality(roles) >= 1
                                           AND roles <@ ARRAY['admin', 'analyst', 'auditor']),
    -- An Argon2id PHC string ($argon2id$v=19$m=…,t=…,p=…$salt$hash).
    password_hash       text        NOT NULL
                                    CONSTRAINT users_password_hash_format
                                    CHECK (password_hash LIKE '$argon2id$%'),
    disabled            boolean     NOT NULL DEFAULT false,
    -- Bumped on every password change and every disable: a token carries
    -- the version it was issued under (`ver`) and is inactive once it differs.
    credential_version  bigint      NOT NULL DEFAULT 1
                                    CONSTRAINT users_credential_version_positive
                                    CHECK (credential_version >= 1),
    created_at          timestamptz NOT NULL,
    updated_at          timestamptz NOT NULL,
    password_changed_at timestamptz NOT NULL
);

-- Tokens revoked by logout, kept until they would have expired anyway.
CREATE TABLE token_revocations (
    jti        uuid        PRIMARY KEY,
    username   text        NOT NULL,
    expires_at timestamptz NOT NULL,
    revoked_at timestamptz NOT NULL
);

CREATE INDEX token_revocations_expiry ON token_revocations (expires_at);

-- Failed logins per account (any username string, known or not) and per
-- client address. Shared by every auth instance; updated by atomic upserts.
CREATE TABLE login_throttles (
    scope           text        NOT NULL
                                CONSTRAINT login_throttles_scope_valid
                                CHECK (scope IN ('account', 'address')),
    key             text        NOT NULL
                                CONSTRAINT login_throttles_key_length
                                CHECK (char_length(key) BETWEEN 1 AND 256),
    failures        integer     NOT NULL CHECK (failures >= 1),
    last_failure_at timestamptz NOT NULL,
    -- No attempt is considered before this time (NULL: not blocked).
    blocked_until   timestamptz,
    -- Whether the block is a lockout rather than a progressive delay.
    locked          boolean     NOT NULL DEFAULT false,
    PRIMARY KEY (scope, key)
);

CREATE INDEX login_throttles_recent ON login_throttles (last_failure_at DESC);

-- The audit trail: who read which evidence, who changed what, every login.
-- Append-only: rows are never updated or deleted.
CREATE TABLE audit_log (
    id           bigserial   PRIMARY KEY,
    at           timestamptz NOT NULL,
    actor        text,
    action       text        NOT NULL
                             CONSTRAINT audit_log_action_format
                             CHECK (action ~ '^[a-z][a-z0-9_.]{0,99}$'),
    endpoint     text,
    outcome      text        NOT NULL
                             CONSTRAINT audit_log_outcome_valid
                             CHECK (outcome IN ('success', 'failure', 'denied')),
    status       integer     CHECK (status BETWEEN 100 AND 599),
    submitter_id text,
    range_from   timestamptz,
    range_to     timestamptz,
    rows         bigint      CHECK (rows >= 0),
    bytes        bigint      CHECK (bytes >= 0),
    target       text,
    client_addr  text,
    trace_id     text,
    detail       jsonb
);

CREATE INDEX audit_log_by_actor ON audit_log (actor, id DESC);
CREATE INDEX audit_log_by_action ON audit_log (action, id DESC);

-- Refuse UPDATE, DELETE and TRUNCATE whoever asks, the owner and superusers
-- included (triggers bind them; grants do not). TRUNCATE skips row triggers,
-- so a statement trigger refuses it.
CREATE FUNCTION auth_refuse_change() RETURNS trigger
LANGUAGE plpgsql AS $$
BEGIN
    RAISE EXCEPTION 'tallyhouse: % on % is refused: the audit trail is append-only', TG_OP, TG_TABLE_NAME
        USING ERRCODE = 'insufficient_privilege';
END
$$;

CREATE TRIGGER audit_log_immutable BEFORE UPDATE OR DELETE ON audit_log
    FOR EACH ROW EXECUTE FUNCTION auth_refuse_change();
CREATE TRIGGER audit_log_no_truncate BEFORE TRUNCATE ON audit_log
    FOR EACH STATEMENT EXECUTE FUNCTION auth_refuse_change();

-- And no grants for it either: nobody is granted UPDATE, DELETE or TRUNCATE
-- on the trail, the service role (its owner) included.
REVOKE UPDATE, DELETE, TRUNCATE ON audit_log FROM PUBLIC;
REVOKE UPDATE, DELETE, TRUNCATE ON audit_log FROM CURRENT_USER;
