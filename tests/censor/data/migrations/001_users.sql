-- Users and their credentials. A comment with a semicolon; and 'quotes' ends nothing.
CREATE TABLE IF NOT EXISTS "public"."users" (
    id              bigserial PRIMARY KEY,
    email           text NOT NULL,
    "password_hash" text NOT NULL,
    password_changed_at timestamptz,      -- near miss: data about the password
    is_password_set boolean DEFAULT false, -- near miss
    display_name    text DEFAULT 'a; b',   -- a string with a semicolon
    recovery_hint   text,                  -- li:censor: free text users put secrets in
    CONSTRAINT users_email UNIQUE (email)
);

/* Sessions; multi-line
   statement below. */
CREATE TABLE app.sessions
(
    id bigint,
    "accessToken" text,
    refresh_token
        text NOT NULL,
    token_count integer DEFAULT 0,        -- near miss: a count
    tokens_used integer,                  -- near miss: LLM usage, not a secret
    expires_at timestamptz
);
