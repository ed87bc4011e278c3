-- How many bytes each layer blob unpacks to (docker's SIZE), measured once per blob.
CREATE TABLE layer_sizes (
    digest      TEXT PRIMARY KEY NOT NULL,
    unpacked    INTEGER NOT NULL
);
