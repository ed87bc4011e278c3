//! §Error Codes: the error envelope and its codes, and hostile input: bad names, digests,
//! ranges, manifests and query parameters are client errors (4xx), never server errors.

use reqwest::Method;

use crate::api::{
    Api, DOCKER_MANIFEST, OCI_MANIFEST, Session, blob, config_blob, image_manifest, repo, sha256,
    with_query,
};
use crate::harness::Target;

/// The codes of §Error Codes (code-1 to code-14).
const SPEC_CODES: [&str; 14] = [
    "BLOB_UNKNOWN",
    "BLOB_UPLOAD_INVALID",
    "BLOB_UPLOAD_UNKNOWN",
    "DIGEST_INVALID",
    "MANIFEST_BLOB_UNKNOWN",
    "MANIFEST_INVALID",
    "MANIFEST_UNKNOWN",
    "NAME_INVALID",
    "NAME_UNKNOWN",
    "SIZE_INVALID",
    "UNAUTHORIZED",
    "DENIED",
    "UNSUPPORTED",
    "TOOMANYREQUESTS",
];

// §Error Codes: a JSON error body MUST be `{"errors": [{"code", "message", "detail"}]}`, the
// code one of the spec's (uppercase letters and underscores), the message a string if present.
spec!(error_envelope_is_well_formed);
async fn error_envelope_is_well_formed(t: &Target) -> Result<(), String> {
    let api = Api::new(t)?;
    let repo = repo("envelope");
    let image = api.push_image(&repo, "v1").await?;
    let session = api.start_upload(&repo).await?;
    let responses = [
        api.get_manifest(&repo, "missing").await?,
        api.get(&format!("/v2/{repo}/blobs/{}", sha256(&blob(20))))
            .await?,
        api.finish(&session, &sha256(&blob(20)), &image.layer)
            .await?,
        api.get(&format!("/v2/{repo}/blobs/uploads/{}", "0".repeat(36)))
            .await?,
    ];
    for resp in responses {
        resp.expect_client_error()?;
        let content_type = resp.require("Content-Type")?;
        ensure!(
            content_type.starts_with("application/json"),
            "{}: Content-Type {content_type:?}",
            resp.request
        );
        let body = resp.json()?;
        let errors = body["errors"]
            .as_array()
            .filter(|errors| !errors.is_empty())
            .ok_or_else(|| format!("{}: no errors in {body}", resp.request))?;
        for error in errors {
            let code = error["code"].as_str().unwrap_or_default();
            ensure!(
                SPEC_CODES.contains(&code),
                "{}: code {code:?} is not in the spec",
                resp.request
            );
            ensure!(
                error.get("message").is_none_or(|m| m.is_string()),
                "{}: message {} is not a string",
                resp.request,
                error["message"]
            );
        }
    }
    Ok(())
}

// §Pulling manifests: a name MUST match the name grammar; a longer name than the 255 bytes
// clients accept is refused with NAME_INVALID (code-8).
spec!(
    overlong_repository_name_is_name_invalid,
    distribution_differs = "§Pulling manifests: <name> MUST match the grammar clients accept, so a \
                            265-character name is the client's error (code-8); distribution 2.8 \
                            answers it with 500 UNKNOWN"
);
async fn overlong_repository_name_is_name_invalid(t: &Target) -> Result<(), String> {
    let api = Api::new(t)?;
    let name = format!("spec/{}", "a".repeat(260));
    let resp = api.get(&format!("/v2/{name}/tags/list")).await?;
    resp.expect_error(400, "NAME_INVALID")?;
    let path = format!("/v2/{name}/blobs/uploads/");
    let resp = api.send(Method::POST, &path, &[], Vec::new()).await?;
    resp.expect_error(400, "NAME_INVALID")
}

/// Names outside `[a-z0-9]+((\.|_|__|-+)[a-z0-9]+)*(\/[a-z0-9]+((\.|_|__|-+)[a-z0-9]+)*)*`.
const BAD_NAMES: [&str; 7] = [
    "spec/Upper",
    "spec//double",
    "spec/-lead",
    "spec/trail-",
    "spec/a..b",
    "spec/a___b",
    "spec/sp%20ace",
];

// Invalid names are refused on every endpoint: a client error (or a redirect to the cleaned
// path, as Go's router answers `//`), never a success or a server error.
spec!(invalid_repository_names_are_refused);
async fn invalid_repository_names_are_refused(t: &Target) -> Result<(), String> {
    let api = Api::new(t)?;
    let digest = sha256(b"");
    for name in BAD_NAMES {
        let post = format!("/v2/{name}/blobs/uploads/?digest={digest}");
        let responses = [
            api.get(&format!("/v2/{name}/tags/list")).await?,
            api.get_manifest(name, "latest").await?,
            api.get(&format!("/v2/{name}/blobs/{digest}")).await?,
            api.send(Method::POST, &post, &[], Vec::new()).await?,
            api.put_manifest(name, "latest", OCI_MANIFEST, b"{}")
                .await?,
        ];
        for resp in responses {
            ensure!(
                (300..500).contains(&resp.status),
                "{}: status {}, want a 3xx or 4xx",
                resp.request,
                resp.status
            );
        }
    }
    Ok(())
}

// code-8 NAME_INVALID, "invalid repository name", for names that break the grammar.
spec!(
    invalid_repository_name_is_name_invalid,
    distribution_differs = "code-8 NAME_INVALID is the error of an invalid name; distribution \
                            2.8's router does not match such paths and answers a plain-text 404"
);
async fn invalid_repository_name_is_name_invalid(t: &Target) -> Result<(), String> {
    let api = Api::new(t)?;
    for name in BAD_NAMES {
        let resp = api.get(&format!("/v2/{name}/tags/list")).await?;
        resp.expect_error(400, "NAME_INVALID")?;
    }
    Ok(())
}

/// Digests that break apdx-3's grammar or name an unsupported algorithm.
fn bad_digests() -> [String; 4] {
    let hex = "ab".repeat(32);
    [
        format!("sha256:{}", &hex[..63]),
        format!("sha256:{hex}0"),
        format!("sha256:{}", hex.to_uppercase()),
        format!("md5:{}", &hex[..32]),
    ]
}

// code-4 DIGEST_INVALID for a blob named by a malformed digest or an unsupported algorithm.
spec!(blob_with_malformed_digest_is_digest_invalid);
async fn blob_with_malformed_digest_is_digest_invalid(t: &Target) -> Result<(), String> {
    let api = Api::new(t)?;
    let repo = repo("bad-blob-digest");
    api.push_blob(&repo, &blob(10)).await?;
    for digest in bad_digests() {
        let resp = api.get(&format!("/v2/{repo}/blobs/{digest}")).await?;
        resp.expect_error(400, "DIGEST_INVALID")?;
    }
    Ok(())
}

// code-4 DIGEST_INVALID for an upload closed with a malformed or unsupported digest; the
// session stays usable.
spec!(upload_with_malformed_digest_is_digest_invalid);
async fn upload_with_malformed_digest_is_digest_invalid(t: &Target) -> Result<(), String> {
    let api = Api::new(t)?;
    let repo = repo("bad-upload-digest");
    let data = blob(100);
    for digest in bad_digests()
        .iter()
        .map(String::as_str)
        .chain(["sha256:zz", "nodigest"])
    {
        let session = api.start_upload(&repo).await?;
        let resp = api.finish(&session, digest, &data).await?;
        resp.expect_error(400, "DIGEST_INVALID")?;
    }
    Ok(())
}

/// `bad_digests` and shorter garbage.
fn hostile_digests() -> Vec<String> {
    let mut digests = bad_digests().to_vec();
    digests.extend(["sha256:", "sha256:%00", ":", "sha256:zz"].map(str::to_owned));
    digests
}

// Malformed digests wherever a blob digest goes: blob HEAD and DELETE, manifest DELETE give a
// 4xx; a mount or single-POST upload of one is refused or opens a plain session (202).
spec!(malformed_digests_never_500);
async fn malformed_digests_never_500(t: &Target) -> Result<(), String> {
    let api = Api::new(t)?;
    let repo = repo("bad-digests");
    let source = repo.clone() + "-src";
    api.push_image(&repo, "v1").await?;
    api.push_blob(&source, &blob(10)).await?;
    for digest in &hostile_digests() {
        let responses = [
            api.head(&format!("/v2/{repo}/blobs/{digest}")).await?,
            api.delete(&format!("/v2/{repo}/blobs/{digest}")).await?,
            api.delete(&format!("/v2/{repo}/manifests/{digest}"))
                .await?,
        ];
        for resp in responses {
            resp.expect_client_error()?;
        }
        let mount = format!("/v2/{repo}/blobs/uploads/?mount={digest}&from={source}");
        let single = format!("/v2/{repo}/blobs/uploads/?digest={digest}");
        let responses = [
            api.send(Method::POST, &mount, &[], Vec::new()).await?,
            api.send(Method::POST, &single, &[], blob(10)).await?,
        ];
        for resp in responses {
            ensure!(
                resp.status == 202 || (400..500).contains(&resp.status),
                "{}: status {}, want 202 or a 4xx",
                resp.request,
                resp.status
            );
        }
    }
    Ok(())
}

// §Pulling manifests: `<reference>` MUST be a digest or a tag, nothing else; a malformed digest or
// a tag outside the tag grammar is a client error on GET and HEAD.
spec!(
    manifest_reference_neither_tag_nor_digest_is_refused,
    distribution_differs = "§Pulling manifests: <reference> MUST be a digest or a tag; distribution \
                            2.8 takes a malformed digest for a tag and answers 500 UNKNOWN"
);
async fn manifest_reference_neither_tag_nor_digest_is_refused(t: &Target) -> Result<(), String> {
    let api = Api::new(t)?;
    let repo = repo("bad-references");
    api.push_image(&repo, "v1").await?;
    let mut references = hostile_digests();
    references.push("t%3Acolon".to_owned());
    for reference in &references {
        api.get_manifest(&repo, reference)
            .await?
            .expect_client_error()?;
        api.head_manifest(&repo, reference)
            .await?
            .expect_client_error()?;
    }
    Ok(())
}

// Malformed Content-Range headers on a PATCH (§Pushing a blob in chunks: it MUST match
// `^[0-9]+-[0-9]+$`) are client errors, and leave the session usable.
spec!(
    malformed_content_range_is_refused,
    distribution_differs = "§Pushing a blob in chunks: the range MUST match ^[0-9]+-[0-9]+$, so \
                            others are the client's error; distribution 2.8 ignores Content-Range \
                            on PATCH and appends the body (202)"
);
async fn malformed_content_range_is_refused(t: &Target) -> Result<(), String> {
    let api = Api::new(t)?;
    let repo = repo("bad-content-range");
    let data = blob(10);
    let digest = sha256(&data);
    let session = api.start_upload(&repo).await?;
    let ranges = [
        "abc",
        "9-0",
        "0-",
        "-9",
        "bytes 0-9/10",
        "0-99999999999999999999999",
        "0-9, 10-19",
    ];
    for range in ranges {
        let headers = [
            ("Content-Type", "application/octet-stream"),
            ("Content-Range", range),
        ];
        let resp = api
            .send(Method::PATCH, &session.location, &headers, data.clone())
            .await?;
        resp.expect_client_error()?;
    }
    let status = api.get(&session.location).await?;
    status.expect(204)?;
    let mut session = Session {
        location: status.require("Location")?.to_owned(),
    };
    api.patch(&mut session, 0, &data).await?.expect(202)?;
    api.finish(&session, &digest, &[]).await?.expect(201)?;
    Ok(())
}

// A Content-Range that disagrees with the body's length is refused with a 4xx (code-10
// SIZE_INVALID: "provided length did not match content length"), and the session keeps none of
// the bytes: the chunk can be sent again, right.
spec!(
    content_range_longer_than_body_is_refused,
    distribution_differs = "§Pushing a blob in chunks: <range> is the chunk's byte range, a \
                            mismatch is SIZE_INVALID (code-10); distribution 2.8 ignores \
                            Content-Range on PATCH and takes 50 bytes sent as 0-99 (202)"
);
async fn content_range_longer_than_body_is_refused(t: &Target) -> Result<(), String> {
    let api = Api::new(t)?;
    let repo = repo("short-chunk");
    let data = blob(50);
    let mut session = api.start_upload(&repo).await?;
    let headers = [
        ("Content-Type", "application/octet-stream"),
        ("Content-Range", "0-99"),
    ];
    let resp = api
        .send(Method::PATCH, &session.location, &headers, data.clone())
        .await?;
    resp.expect_client_error()?;
    let resp = api.patch(&mut session, 0, &data).await?;
    resp.expect(202)?;
    let range = resp.require("Range")?;
    ensure!(range == "0-49", "Range {range} after resending the chunk");
    api.finish(&session, &sha256(&data), &[])
        .await?
        .expect(201)?;
    Ok(())
}

/// Bodies that are not manifests.
fn garbage_manifests() -> Vec<Vec<u8>> {
    let deep = format!("{}{}", "[".repeat(100_000), "]".repeat(100_000));
    vec![
        b"not json at all".to_vec(),
        b"".to_vec(),
        b"[]".to_vec(),
        b"{\"schemaVersion\": \"two\"}".to_vec(),
        b"{\"schemaVersion\": 2, \"mediaType\": ".to_vec(),
        vec![0xff, 0xfe, 0x00, 0x7b],
        deep.into_bytes(),
        format!(
            "{{\"schemaVersion\": 2, \"mediaType\": \"{OCI_MANIFEST}\", \"config\": {{\"mediaType\": \
             \"x\", \"digest\": \"sha256:nothex\", \"size\": -1}}, \"layers\": 7}}"
        )
        .into_bytes(),
    ]
}

// code-6 MANIFEST_INVALID for bodies that are not a manifest of their Content-Type (end-7 failure
// 400), including deeply nested and truncated JSON; nothing is stored.
spec!(garbage_manifest_is_manifest_invalid);
async fn garbage_manifest_is_manifest_invalid(t: &Target) -> Result<(), String> {
    let api = Api::new(t)?;
    let repo = repo("garbage-manifest");
    api.push_image(&repo, "v1").await?;
    for body in garbage_manifests() {
        let resp = api.put_manifest(&repo, "bad", OCI_MANIFEST, &body).await?;
        resp.expect_error(400, "MANIFEST_INVALID")?;
    }
    api.get_manifest(&repo, "bad").await?.expect(404)?;
    Ok(())
}

// A manifest whose `mediaType` contradicts its Content-Type is refused (§Pushing Manifests:
// clients MUST send the mediaType as Content-Type; serving it under the other type would let it
// be read as something else).
spec!(manifest_media_type_mismatch_is_manifest_invalid);
async fn manifest_media_type_mismatch_is_manifest_invalid(t: &Target) -> Result<(), String> {
    let api = Api::new(t)?;
    let repo = repo("media-type-mismatch");
    let image = api.push_image(&repo, "v1").await?;
    let resp = api
        .put_manifest(&repo, "confused", DOCKER_MANIFEST, &image.manifest)
        .await?;
    resp.expect_error(400, "MANIFEST_INVALID")
}

// Tags MUST match `[a-zA-Z0-9_][a-zA-Z0-9._-]{0,127}` (§Pulling manifests); a push to any other
// reference is refused with a 4xx and creates no tag.
spec!(invalid_tags_are_refused);
async fn invalid_tags_are_refused(t: &Target) -> Result<(), String> {
    let api = Api::new(t)?;
    let repo = repo("bad-tags");
    let config = config_blob();
    let layer = blob(100);
    api.push_blob(&repo, &config).await?;
    api.push_blob(&repo, &layer).await?;
    let manifest = image_manifest(&config, &layer);
    api.push_manifest(&repo, "good", OCI_MANIFEST, &manifest)
        .await?;
    let long = "t".repeat(129);
    for tag in ["-dash", ".dot", long.as_str(), "t%20space", "t%2Fslash"] {
        let resp = api
            .put_manifest(&repo, tag, OCI_MANIFEST, &manifest)
            .await?;
        resp.expect_client_error()?;
    }
    let (tags, _) = api.tags(&repo, "").await?;
    ensure!(tags == ["good"], "tags {tags:?}");
    Ok(())
}

// Out-of-range, negative and non-numeric `n` on the tag list and the catalog are client errors
// or ignored, never server errors, and a 200 is still a valid list.
spec!(hostile_pagination_never_500);
async fn hostile_pagination_never_500(t: &Target) -> Result<(), String> {
    let api = Api::new(t)?;
    let repo = repo("hostile-n");
    api.push_image(&repo, "v1").await?;
    let values = [
        "18446744073709551616",
        "99999999999999999999999999",
        "2147483648",
        "-1",
        "abc",
        "1e3",
        "",
    ];
    for n in values {
        for path in [format!("/v2/{repo}/tags/list"), "/v2/_catalog".to_owned()] {
            let resp = api.get(&with_query(&path, &format!("n={n}"))).await?;
            if resp.status == 200 {
                resp.json()?;
            } else {
                resp.expect_client_error()?;
            }
        }
    }
    api.get("/v2/").await?.expect(200)?;
    Ok(())
}

// Paths that try to leave the API's namespace (dot segments, encoded dots and slashes, NULs)
// are answered with a 4xx; the server stays up.
spec!(hostile_paths_never_500);
async fn hostile_paths_never_500(t: &Target) -> Result<(), String> {
    let api = Api::new(t)?;
    let repo = repo("hostile-paths");
    api.push_image(&repo, "v1").await?;
    let long = format!("/v2/{}/tags/list", "a/".repeat(5000));
    let targets = [
        "/v2/../../../../etc/passwd".to_owned(),
        format!("/v2/{repo}/../../../../etc/tags/list"),
        "/v2/%2e%2e/%2e%2e/etc/tags/list".to_owned(),
        format!("/v2/{repo}/blobs/..%2f..%2f..%2fetc%2fpasswd"),
        format!("/v2/{repo}/manifests/..%2F..%2Fv1"),
        format!("/v2/{repo}/manifests/v1%00"),
        format!("/v2/{repo}/blobs/uploads/..%2f..%2f..%2f"),
        format!("/v2/{repo}/nonsense"),
        format!("/v2/{repo}/manifests/"),
        long,
    ];
    for target in &targets {
        for method in ["GET", "DELETE", "PUT"] {
            let (status, body) = api.raw(method, target).await?;
            ensure!(
                (300..500).contains(&status),
                "{method} {target}: status {status}, want a 3xx or 4xx: {body:.200}"
            );
        }
    }
    api.get("/v2/").await?.expect(200)?;
    Ok(())
}

// code-3 BLOB_UPLOAD_UNKNOWN for a session id that no upload was ever given: ids of another form
// than the registry hands out (which also name its upload files) reach no session, on every
// method of the upload endpoint.
spec!(
    upload_ids_of_another_form_are_unknown,
    distribution_differs = "code-3 BLOB_UPLOAD_UNKNOWN is the error of an id that names no \
                            session; distribution 2.8 first checks the `_state` token it adds to \
                            its own upload URLs and answers BLOB_UPLOAD_INVALID without one"
);
async fn upload_ids_of_another_form_are_unknown(t: &Target) -> Result<(), String> {
    let api = Api::new(t)?;
    let repo = repo("odd-upload-id");
    let digest = sha256(b"");
    for id in ["not-a-session", "x.y", &"0".repeat(36)] {
        let path = format!("/v2/{repo}/blobs/uploads/{id}");
        let put = format!("{path}?digest={digest}");
        let responses = [
            api.get(&path).await?,
            api.send(Method::PATCH, &path, &[], b"abc".to_vec()).await?,
            api.send(Method::PUT, &put, &[], Vec::new()).await?,
            api.send(Method::DELETE, &path, &[], Vec::new()).await?,
        ];
        for resp in responses {
            resp.expect_error(404, "BLOB_UPLOAD_UNKNOWN")?;
        }
    }
    Ok(())
}
