-- The local image store's metadata. Blobs live on disk under blobs/<alg>/<hex>; this database
-- holds what names them and what protects them from garbage collection.

-- Every manifest or index the store keeps as an image, tagged or not.
CREATE TABLE images (
    digest      TEXT PRIMARY KEY NOT NULL,
    media_type  TEXT NOT NULL,
    -- The config digest of the image (of the host platform's entry for an index); the image id.
    config      TEXT,
    added_at    INTEGER NOT NULL
);
CREATE INDEX images_config ON images(config);

-- Tags: a full normalised name (docker.io/library/busybox:latest) to an image.
CREATE TABLE refs (
    name        TEXT PRIMARY KEY NOT NULL,
    image       TEXT NOT NULL REFERENCES images(digest) ON DELETE CASCADE,
    updated_at  INTEGER NOT NULL
);
CREATE INDEX refs_image ON refs(image);

-- docker's RepoDigests: the digest a repository served an image under, which can differ from
-- the stored manifest (an index was pulled for one platform).
CREATE TABLE repo_digests (
    repo        TEXT NOT NULL,
    digest      TEXT NOT NULL,
    image       TEXT NOT NULL REFERENCES images(digest) ON DELETE CASCADE,
    PRIMARY KEY (repo, digest)
);
CREATE INDEX repo_digests_image ON repo_digests(image);

-- Blobs an operation in progress relies on, kept from garbage collection until it ends. A
-- lease whose process is gone (pid and start time no longer match) is stale.
CREATE TABLE leases (
    id          INTEGER PRIMARY KEY,
    pid         INTEGER NOT NULL,
    pid_start   INTEGER NOT NULL,
    created_at  INTEGER NOT NULL
);
CREATE TABLE lease_blobs (
    lease       INTEGER NOT NULL REFERENCES leases(id) ON DELETE CASCADE,
    digest      TEXT NOT NULL,
    PRIMARY KEY (lease, digest)
);
CREATE INDEX lease_blobs_digest ON lease_blobs(digest);
