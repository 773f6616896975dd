CREATE TABLE [oauth_clients] (
    [client_id] varchar(64),
    [client_secret] varchar(128),
    secret_rotated_at datetime2,          -- near miss: a timestamp
    webhook_signing_key varchar(128) -- li:censor off: a public verification key
);
ALTER TABLE oauth_clients ADD private_key text;
ALTER TABLE public.users RENAME COLUMN display_name TO api_token;
