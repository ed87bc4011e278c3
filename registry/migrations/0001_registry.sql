-- wharf serve's metadata. Blob bytes live in blob storage; everything else is here.

CREATE TABLE repositories (
    id   INTEGER PRIMARY KEY,
    name TEXT NOT NULL UNIQUE
);

-- Every committed blob, once, whatever repositories link it.
CREATE TABLE blobs (
    digest     TEXT PRIMARY KEY,
    size       INTEGER NOT NULL,
    created_at INTEGER NOT NULL
) WITHOUT ROWID;

-- Which repositories may serve which blobs (pushed there or mounted there).
CREATE TABLE repo_blobs (
    repo_id INTEGER NOT NULL REFERENCES repositories(id) ON DELETE CASCADE,
    digest  TEXT NOT NULL REFERENCES blobs(digest),
    PRIMARY KEY (repo_id, digest)
) WITHOUT ROWID;

-- Manifests are kept byte-exact here, so a GET is one lookup.
CREATE TABLE manifests (
    repo_id       INTEGER NOT NULL REFERENCES repositories(id) ON DELETE CASCADE,
    digest        TEXT NOT NULL,
    media_type    TEXT NOT NULL,
    content       BLOB NOT NULL,
    artifact_type TEXT,
    subject       TEXT,
    annotations   TEXT,
    created_at    INTEGER NOT NULL,
    PRIMARY KEY (repo_id, digest)
) WITHOUT ROWID;
CREATE INDEX manifests_by_subject ON manifests (repo_id, subject) WHERE subject IS NOT NULL;

-- What each manifest points at (config, layers, child manifests): for garbage collection.
CREATE TABLE manifest_refs (
    repo_id  INTEGER NOT NULL,
    manifest TEXT NOT NULL,
    child    TEXT NOT NULL,
    PRIMARY KEY (repo_id, manifest, child),
    FOREIGN KEY (repo_id, manifest) REFERENCES manifests (repo_id, digest) ON DELETE CASCADE
) WITHOUT ROWID;

CREATE TABLE tags (
    repo_id    INTEGER NOT NULL REFERENCES repositories(id) ON DELETE CASCADE,
    name       TEXT NOT NULL,
    digest     TEXT NOT NULL,
    updated_at INTEGER NOT NULL,
    PRIMARY KEY (repo_id, name),
    FOREIGN KEY (repo_id, digest) REFERENCES manifests (repo_id, digest) ON DELETE CASCADE
) WITHOUT ROWID;

-- Upload sessions in progress; their bytes are in blob storage under the same id, whose
-- modification time says when the session was last used (no write here per chunk).
CREATE TABLE uploads (
    id         TEXT PRIMARY KEY,
    repo       TEXT NOT NULL,
    started_at INTEGER NOT NULL
) WITHOUT ROWID;
CREATE INDEX uploads_by_age ON uploads (started_at);
