-- The registry's data: submitters and their public keys.
-- Ids are checked by the contracts already; the checks here keep the table
-- honest whatever writes to it.

CREATE TABLE submitters (
    submitter_id text        PRIMARY KEY
                             CONSTRAINT submitters_id_format
                             CHECK (submitter_id ~ '^[a-z0-9][a-z0-9._-]{0,63}$'),
    name         text,
    created_at   timestamptz NOT NULL
);

CREATE TABLE keys (
    -- RFC 7638 JWK SHA-256 thumbprint, base64url without padding. A key id
    -- is globally unique: a public key belongs to exactly one submitter.
    key_id         text        PRIMARY KEY
                               CONSTRAINT keys_id_format
                               CHECK (key_id ~ '^[A-Za-z0-9_-]{43}$'),
    submitter_id   text        NOT NULL
                               CONSTRAINT keys_submitter_fkey
                               REFERENCES submitters (submitter_id),
    -- SPKI PEM, as normalised by the registry.
    public_key_pem text        NOT NULL,
    not_before     timestamptz NOT NULL,
    not_after      timestamptz,
    -- From when the key is revoked; only ever moves earlier.
    revoked_at     timestamptz,
    created_at     timestamptz NOT NULL,
    CONSTRAINT keys_validity CHECK (not_after IS NULL OR not_after > not_before)
);

CREATE INDEX keys_by_submitter ON keys (submitter_id, created_at, key_id);
