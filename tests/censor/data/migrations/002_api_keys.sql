CREATE TABLE `api_keys` (
  `id` bigint NOT NULL,
  `api_key_id` varchar(32) NOT NULL,   -- near miss: an identifier
  `api_key_hash` char(64) NOT NULL,
  `owner` varchar(64),
  PRIMARY KEY (`id`)
);

CREATE FUNCTION touch() RETURNS trigger AS $body$
BEGIN
  NEW.updated_at := now(); -- semicolons inside a dollar-quoted body
  RETURN NEW;
END;
$body$ LANGUAGE plpgsql;

ALTER TABLE ONLY public.users
    ADD COLUMN IF NOT EXISTS otp_secret text,
    ADD COLUMN ssn_last4 char(4),         -- near miss: suffix last
    ADD CONSTRAINT users_otp CHECK (otp_secret <> '');
