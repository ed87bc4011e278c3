-- Garbage collection: when a blob was last linked into a repository (pushed, mounted or
-- pushed again), so that a link younger than the grace period is never collected while the
-- manifest that will reference it is on its way; rows from before count as old.
ALTER TABLE repo_blobs ADD COLUMN linked_at INTEGER NOT NULL DEFAULT 0;

-- When a manifest was last pushed (again): a collection leaves a manifest pushed within the
-- grace period alone even if it was first stored long ago.
ALTER TABLE manifests ADD COLUMN pushed_at INTEGER NOT NULL DEFAULT 0;

-- "Which manifests of this repository reference this digest", asked for every link a
-- collection looks at and for every blob delete.
CREATE INDEX manifest_refs_by_child ON manifest_refs (repo_id, child);

-- Counts collections that deleted tags or manifests, so a server caching manifests in memory
-- notices a `wharf gc` run beside it and forgets what it cached.
CREATE TABLE epochs (
    name  TEXT PRIMARY KEY,
    value INTEGER NOT NULL
) WITHOUT ROWID;

-- "Does any repository still link this blob", asked for every blob a collection deletes (and
-- by mounts without `from`).
CREATE INDEX repo_blobs_by_digest ON repo_blobs (digest);
