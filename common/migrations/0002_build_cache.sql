-- The build cache: the key of a build step (its instruction, inputs and everything before it)
-- to the layer it produced. Layers named here are kept by garbage collection.
CREATE TABLE build_cache (
    key         TEXT PRIMARY KEY NOT NULL,
    layer       TEXT NOT NULL,
    diff_id     TEXT NOT NULL,
    media_type  TEXT NOT NULL,
    size        INTEGER NOT NULL,
    created_at  INTEGER NOT NULL,
    used_at     INTEGER NOT NULL
);
CREATE INDEX build_cache_layer ON build_cache(layer);

-- Content digests of build-context files, valid while the file's device, inode, size and
-- modification time are what they were: an unchanged context costs a stat walk.
CREATE TABLE context_files (
    path        TEXT PRIMARY KEY NOT NULL,
    dev         INTEGER NOT NULL,
    ino         INTEGER NOT NULL,
    size        INTEGER NOT NULL,
    mtime_ns    INTEGER NOT NULL,
    digest      TEXT NOT NULL
);
