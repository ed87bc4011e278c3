//! §Push: monolithic uploads (end-4a + end-6, end-4b), chunked uploads (end-5, end-6), upload
//! status (end-13) and cancellation, cross-repository mounts (end-11), and pushing manifests
//! (end-7).

use reqwest::Method;
use serde_json::json;

use crate::api::{
    Api, OCI_CONFIG, OCI_INDEX, OCI_LAYER, OCI_MANIFEST, Resp, Session, artifact, blob,
    config_blob, descriptor, image_index, image_manifest, repo, sha256, with_query,
};
use crate::harness::Target;

/// Fails unless `location` serves exactly `data`.
async fn check_pullable(api: &Api, location: &str, data: &[u8]) -> Result<(), String> {
    let resp = api.get(location).await?;
    resp.expect(200)?;
    ensure!(
        resp.body == data,
        "{}: body differs from the pushed blob",
        resp.request
    );
    Ok(())
}

/// Fails unless the blob `digest` of `repo` is exactly `data`.
async fn check_blob(api: &Api, repo: &str, digest: &str, data: &[u8]) -> Result<(), String> {
    check_pullable(api, &format!("/v2/{repo}/blobs/{digest}"), data).await
}

/// Fails unless `resp` is the `202 Accepted` of a chunk ending at byte `end` (inclusive).
fn check_chunk_accepted(resp: &Resp, end: usize) -> Result<(), String> {
    resp.expect(202)?;
    resp.require("Location")?;
    let range = resp.require("Range")?;
    ensure!(
        range == format!("0-{end}"),
        "{}: Range {range:?}, want 0-{end}",
        resp.request
    );
    Ok(())
}

// §POST then PUT: POST answers 202 with a Location; PUT `<location>?digest=` answers 201 with
// the Location of a pullable blob.
spec!(monolithic_post_then_put);
async fn monolithic_post_then_put(t: &Target) -> Result<(), String> {
    let api = Api::new(t)?;
    let repo = repo("post-put");
    let data = blob(3000);
    let digest = sha256(&data);
    let session = api.start_upload(&repo).await?;
    let resp = api.finish(&session, &digest, &data).await?;
    resp.expect(201)?;
    if let Some(header) = resp.header("Docker-Content-Digest") {
        ensure!(header == digest, "Docker-Content-Digest {header}");
    }
    check_pullable(&api, resp.require("Location")?, &data).await?;
    check_blob(&api, &repo, &digest, &data).await
}

// §POST then PUT: the Location MUST contain a unique session ID.
spec!(upload_sessions_are_distinct);
async fn upload_sessions_are_distinct(t: &Target) -> Result<(), String> {
    let api = Api::new(t)?;
    let repo = repo("distinct-sessions");
    let first = api.start_upload(&repo).await?;
    let second = api.start_upload(&repo).await?;
    ensure!(
        first.location != second.location,
        "two sessions share {}",
        first.location
    );
    Ok(())
}

// §Single POST: registries MAY accept the blob in the POST (201 with a pullable Location); those
// that do not SHOULD answer 202 and a Location, and the client then PUTs.
spec!(single_post_with_digest);
async fn single_post_with_digest(t: &Target) -> Result<(), String> {
    let api = Api::new(t)?;
    let repo = repo("single-post");
    let data = blob(2500);
    let digest = sha256(&data);
    let path = format!("/v2/{repo}/blobs/uploads/?digest={digest}");
    let headers = [("Content-Type", "application/octet-stream")];
    let resp = api
        .send(Method::POST, &path, &headers, data.clone())
        .await?;
    match resp.status {
        201 => check_pullable(&api, resp.require("Location")?, &data).await?,
        202 => {
            let session = Session {
                location: resp.require("Location")?.to_owned(),
            };
            api.finish(&session, &digest, &data).await?.expect(201)?;
        }
        _ => {
            resp.expect(201)?;
        }
    }
    check_blob(&api, &repo, &digest, &data).await
}

// §Pushing a blob in chunks: each PATCH answers 202 with a Location and `Range: 0-<end>`; the
// closing PUT `?digest=` of the whole blob answers 201.
spec!(chunked_upload);
async fn chunked_upload(t: &Target) -> Result<(), String> {
    let api = Api::new(t)?;
    let repo = repo("chunked");
    let data = blob(3000);
    let digest = sha256(&data);
    let mut session = api.start_upload(&repo).await?;
    let resp = api.patch(&mut session, 0, &data[..1000]).await?;
    check_chunk_accepted(&resp, 999)?;
    let resp = api.patch(&mut session, 1000, &data[1000..]).await?;
    check_chunk_accepted(&resp, 2999)?;
    let resp = api.finish(&session, &digest, &[]).await?;
    resp.expect(201)?;
    check_pullable(&api, resp.require("Location")?, &data).await
}

// §Pushing a blob in chunks: the final chunk MAY come in the closing PUT.
spec!(chunked_last_chunk_in_put);
async fn chunked_last_chunk_in_put(t: &Target) -> Result<(), String> {
    let api = Api::new(t)?;
    let repo = repo("chunked-put-last");
    let data = blob(2000);
    let digest = sha256(&data);
    let mut session = api.start_upload(&repo).await?;
    check_chunk_accepted(&api.patch(&mut session, 0, &data[..1500]).await?, 1499)?;
    let url = with_query(&session.location, &format!("digest={digest}"));
    let headers = [
        ("Content-Type", "application/octet-stream"),
        ("Content-Range", "1500-1999"),
    ];
    let resp = api
        .send(Method::PUT, &url, &headers, data[1500..].to_vec())
        .await?;
    resp.expect(201)?;
    check_blob(&api, &repo, &digest, &data).await
}

// docker pushes a layer as one PATCH without a Content-Range (a stream), then a PUT without a
// body; the registry takes the stream as the next chunk.
spec!(streamed_patch_without_content_range);
async fn streamed_patch_without_content_range(t: &Target) -> Result<(), String> {
    let api = Api::new(t)?;
    let repo = repo("streamed");
    let data = blob(5000);
    let digest = sha256(&data);
    let session = api.start_upload(&repo).await?;
    let headers = [("Content-Type", "application/octet-stream")];
    let resp = api
        .send(Method::PATCH, &session.location, &headers, data.clone())
        .await?;
    check_chunk_accepted(&resp, 4999)?;
    let session = Session {
        location: resp.require("Location")?.to_owned(),
    };
    api.finish(&session, &digest, &[]).await?.expect(201)?;
    check_blob(&api, &repo, &digest, &data).await
}

// §Pushing a blob in chunks: the first chunk's range MUST begin with 0 and each chunk MUST start
// right after the last one; a chunk out of order (a gap or an overlap) MUST get 416.
spec!(
    chunked_out_of_order_patch_is_416,
    distribution_differs = "§Pushing a blob in chunks: an out-of-order chunk MUST get 416; \
                            distribution 2.8 ignores Content-Range on PATCH and appends (202)"
);
async fn chunked_out_of_order_patch_is_416(t: &Target) -> Result<(), String> {
    let api = Api::new(t)?;
    let repo = repo("chunked-416");
    let data = blob(300);
    let mut session = api.start_upload(&repo).await?;
    api.patch(&mut session, 10, &data[10..100])
        .await?
        .expect(416)?;
    check_chunk_accepted(&api.patch(&mut session, 0, &data[..100]).await?, 99)?;
    let gap = api.patch(&mut session, 200, &data[200..]).await?;
    gap.expect(416)?;
    let overlap = api.patch(&mut session, 50, &data[50..]).await?;
    overlap.expect(416)?;
    Ok(())
}

// The Docker Registry HTTP API V2 (apdx-1), and Distribution's own API description, give the 416
// of a PATCH the session's `Location` and `Range: 0-<last valid byte>` so that the client can
// resume without another request; v1.1 only says a GET may be used to learn the offset.
spec!(
    chunked_416_reports_current_offset,
    distribution_differs = "apdx-1 (Docker Registry API V2) lists Location and Range on a PATCH \
                            416 (v1.1 leaves them out: a GET gives the offset); distribution 2.8 \
                            never answers a PATCH with 416, it ignores Content-Range"
);
async fn chunked_416_reports_current_offset(t: &Target) -> Result<(), String> {
    let api = Api::new(t)?;
    let repo = repo("chunked-416-range");
    let data = blob(300);
    let mut session = api.start_upload(&repo).await?;
    check_chunk_accepted(&api.patch(&mut session, 0, &data[..100]).await?, 99)?;
    let resp = api.patch(&mut session, 200, &data[200..]).await?;
    resp.expect(416)?;
    let range = resp.require("Range")?;
    ensure!(range == "0-99", "416 Range {range:?}, want 0-99");
    resp.require("Location")?;
    Ok(())
}

// §Pushing a blob in chunks (end-13): the status of an active upload MUST be 204 with the
// Location and `Range: 0-<end-of-range>`.
spec!(upload_status_is_204_with_range);
async fn upload_status_is_204_with_range(t: &Target) -> Result<(), String> {
    let api = Api::new(t)?;
    let repo = repo("upload-status");
    let data = blob(700);
    let mut session = api.start_upload(&repo).await?;
    // A session without data: 204 and a Location (its Range is left open, see main.rs).
    let resp = api.get(&session.location).await?;
    resp.expect(204)?;
    resp.require("Location")?;
    check_chunk_accepted(&api.patch(&mut session, 0, &data).await?, 699)?;
    let resp = api.get(&session.location).await?;
    resp.expect(204)?;
    resp.require("Location")?;
    let range = resp.require("Range")?;
    ensure!(range == "0-699", "Range {range:?}, want 0-699");
    Ok(())
}

// §Resumable Push: a client that lost track of an upload (after a 416 or a dropped connection)
// asks for its status (end-13) and continues from the offset reported, at the Location given.
spec!(push_resumes_from_upload_status);
async fn push_resumes_from_upload_status(t: &Target) -> Result<(), String> {
    let api = Api::new(t)?;
    let repo = repo("resume-push");
    let data = blob(900);
    let digest = sha256(&data);
    let mut session = api.start_upload(&repo).await?;
    check_chunk_accepted(&api.patch(&mut session, 0, &data[..400]).await?, 399)?;
    let status = api.get(&session.location).await?;
    status.expect(204)?;
    let range = status.require("Range")?;
    let next = range
        .strip_prefix("0-")
        .and_then(|end| end.parse::<usize>().ok())
        .map(|end| end + 1)
        .ok_or_else(|| format!("status Range {range:?}"))?;
    ensure!(next == 400, "status says the next byte is {next}, want 400");
    let mut session = Session {
        location: status.require("Location")?.to_owned(),
    };
    check_chunk_accepted(&api.patch(&mut session, next, &data[next..]).await?, 899)?;
    api.finish(&session, &digest, &[]).await?.expect(201)?;
    check_blob(&api, &repo, &digest, &data).await
}

// code-4 DIGEST_INVALID: "provided digest did not match uploaded content"; the closing PUT with
// another digest is refused (end-6 failure 400) and stores nothing under either digest.
spec!(put_with_wrong_digest_is_digest_invalid);
async fn put_with_wrong_digest_is_digest_invalid(t: &Target) -> Result<(), String> {
    let api = Api::new(t)?;
    let repo = repo("wrong-digest");
    let data = blob(1000);
    let wrong = sha256(&blob(1000));
    let session = api.start_upload(&repo).await?;
    let resp = api.finish(&session, &wrong, &data).await?;
    resp.expect_error(400, "DIGEST_INVALID")?;
    let path = format!("/v2/{repo}/blobs/{wrong}");
    api.head(&path).await?.expect(404)?;
    let path = format!("/v2/{repo}/blobs/{}", sha256(&data));
    api.head(&path).await?.expect(404)?;
    Ok(())
}

// §Pushing a blob in chunks: the closing PUT MUST carry the digest; one without it is refused
// with DIGEST_INVALID (end-6 failure 400).
spec!(put_without_digest_is_digest_invalid);
async fn put_without_digest_is_digest_invalid(t: &Target) -> Result<(), String> {
    let api = Api::new(t)?;
    let repo = repo("no-digest");
    let session = api.start_upload(&repo).await?;
    let headers = [("Content-Type", "application/octet-stream")];
    let resp = api
        .send(Method::PUT, &session.location, &headers, blob(100))
        .await?;
    resp.expect_error(400, "DIGEST_INVALID")
}

// Cancelling an upload: DELETE on the session answers 204, after which the session is unknown
// (code-3 BLOB_UPLOAD_UNKNOWN, 404); docker and containerd cancel failed pushes so.
spec!(cancelled_upload_is_unknown);
async fn cancelled_upload_is_unknown(t: &Target) -> Result<(), String> {
    let api = Api::new(t)?;
    let repo = repo("cancel-upload");
    let mut session = api.start_upload(&repo).await?;
    check_chunk_accepted(&api.patch(&mut session, 0, &blob(100)).await?, 99)?;
    api.delete(&session.location).await?.expect(204)?;
    let resp = api.get(&session.location).await?;
    resp.expect_error(404, "BLOB_UPLOAD_UNKNOWN")?;
    let resp = api.patch(&mut session, 100, &blob(10)).await?;
    resp.expect_error(404, "BLOB_UPLOAD_UNKNOWN")
}

// code-3 BLOB_UPLOAD_UNKNOWN: GET, PATCH, PUT and DELETE on a session that never existed (end-5,
// end-6 and end-13 failure 404).
spec!(
    unknown_upload_is_404,
    distribution_differs = "code-3 BLOB_UPLOAD_UNKNOWN is the error of an unknown session; \
                            distribution 2.8 answers a session URL without its signed _state \
                            parameter with BLOB_UPLOAD_INVALID"
);
async fn unknown_upload_is_404(t: &Target) -> Result<(), String> {
    let api = Api::new(t)?;
    let repo = repo("unknown-upload");
    api.start_upload(&repo).await?;
    let location = format!("/v2/{repo}/blobs/uploads/8a3f1c2e-5b7d-4e9a-9c1f-2d6e8b4a7c30");
    let data = blob(10);
    let digest = sha256(&data);
    let mut session = Session {
        location: location.clone(),
    };
    let responses = [
        api.get(&location).await?,
        api.patch(&mut session, 0, &data).await?,
        api.finish(&session, &digest, &data).await?,
        api.delete(&location).await?,
    ];
    for resp in responses {
        resp.expect_error(404, "BLOB_UPLOAD_UNKNOWN")?;
    }
    Ok(())
}

// A session closed by its PUT is over: its Location is then an unknown upload (404).
spec!(finished_upload_is_unknown);
async fn finished_upload_is_unknown(t: &Target) -> Result<(), String> {
    let api = Api::new(t)?;
    let repo = repo("finished-upload");
    let data = blob(100);
    let session = api.start_upload(&repo).await?;
    api.finish(&session, &sha256(&data), &data)
        .await?
        .expect(201)?;
    let resp = api.get(&session.location).await?;
    resp.expect_error(404, "BLOB_UPLOAD_UNKNOWN")
}

// §Definitions (Repository): an upload session belongs to the repository that opened it; its ID
// under another repository's path is refused, and nothing lands in that repository.
spec!(upload_session_is_scoped_to_its_repository);
async fn upload_session_is_scoped_to_its_repository(t: &Target) -> Result<(), String> {
    let api = Api::new(t)?;
    let (owner, other) = (repo("session-owner"), repo("session-other"));
    api.push_blob(&other, &blob(10)).await?;
    let session = api.start_upload(&owner).await?;
    let stolen = Session {
        location: session
            .location
            .replacen(&format!("/v2/{owner}/"), &format!("/v2/{other}/"), 1),
    };
    ensure!(
        stolen.location != session.location,
        "no /v2/{owner}/ in {}",
        session.location
    );
    let data = blob(100);
    let digest = sha256(&data);
    let resp = api.finish(&stolen, &digest, &data).await?;
    resp.expect_client_error()?;
    let codes = resp.error_codes()?;
    ensure!(
        codes
            .iter()
            .any(|c| c == "BLOB_UPLOAD_UNKNOWN" || c == "BLOB_UPLOAD_INVALID"),
        "codes {codes:?}, want BLOB_UPLOAD_UNKNOWN or BLOB_UPLOAD_INVALID"
    );
    let path = format!("/v2/{other}/blobs/{digest}");
    api.head(&path).await?.expect(404)?;
    api.finish(&session, &digest, &data).await?.expect(201)?;
    Ok(())
}

// §Mounting a blob from another repository: a successful mount MUST answer 201 with the
// Location of the blob, now in the target repository.
spec!(mount_from_other_repository_is_201);
async fn mount_from_other_repository_is_201(t: &Target) -> Result<(), String> {
    let api = Api::new(t)?;
    let (source, target) = (repo("mount-source"), repo("mount-target"));
    let data = blob(1200);
    let digest = api.push_blob(&source, &data).await?;
    let path = format!("/v2/{target}/blobs/uploads/?mount={digest}&from={source}");
    let resp = api.send(Method::POST, &path, &[], Vec::new()).await?;
    resp.expect(201)?;
    if let Some(header) = resp.header("Docker-Content-Digest") {
        ensure!(header == digest, "Docker-Content-Digest {header}");
    }
    check_pullable(&api, resp.require("Location")?, &data).await?;
    check_blob(&api, &target, &digest, &data).await
}

// §Mounting a blob: a registry unable to mount the blob SHOULD answer 202, an upload session
// the client MAY go on with.
spec!(mount_of_unknown_blob_opens_session);
async fn mount_of_unknown_blob_opens_session(t: &Target) -> Result<(), String> {
    let api = Api::new(t)?;
    let (source, target) = (repo("mount-missing-source"), repo("mount-missing-target"));
    api.push_blob(&source, &blob(10)).await?;
    let data = blob(800);
    let digest = sha256(&data);
    let path = format!("/v2/{target}/blobs/uploads/?mount={digest}&from={source}");
    let resp = api.send(Method::POST, &path, &[], Vec::new()).await?;
    resp.expect(202)?;
    let session = Session {
        location: resp.require("Location")?.to_owned(),
    };
    api.finish(&session, &digest, &data).await?.expect(201)?;
    check_blob(&api, &target, &digest, &data).await
}

// §Mounting a blob: the blob must exist in `from`; naming a repository that does not hold it
// must not mount a blob that lives elsewhere in the registry (202, nothing mounted).
spec!(mount_requires_blob_in_source);
async fn mount_requires_blob_in_source(t: &Target) -> Result<(), String> {
    let api = Api::new(t)?;
    let owner = repo("mount-owner");
    let (source, target) = (repo("mount-empty-source"), repo("mount-thief"));
    let digest = api.push_blob(&owner, &blob(500)).await?;
    api.push_blob(&source, &blob(10)).await?;
    let path = format!("/v2/{target}/blobs/uploads/?mount={digest}&from={source}");
    let resp = api.send(Method::POST, &path, &[], Vec::new()).await?;
    resp.expect(202)?;
    api.head(&format!("/v2/{target}/blobs/{digest}"))
        .await?
        .expect(404)?;
    Ok(())
}

// §Mounting a blob: the registry MAY treat `from` as optional. Without it the answer is either
// a mount (201) or a session (202), and either way the client ends up with the blob.
spec!(mount_without_from);
async fn mount_without_from(t: &Target) -> Result<(), String> {
    let api = Api::new(t)?;
    let (source, target) = (repo("mount-nofrom-source"), repo("mount-nofrom-target"));
    let data = blob(600);
    let digest = api.push_blob(&source, &data).await?;
    let path = format!("/v2/{target}/blobs/uploads/?mount={digest}");
    let resp = api.send(Method::POST, &path, &[], Vec::new()).await?;
    if resp.status == 202 {
        let session = Session {
            location: resp.require("Location")?.to_owned(),
        };
        api.finish(&session, &digest, &data).await?.expect(201)?;
    } else {
        resp.expect(201)?;
    }
    check_blob(&api, &target, &digest, &data).await
}

// §Layer Upload De-duplication: pushing a blob the repository already has is accepted again.
spec!(repeated_blob_push_is_accepted);
async fn repeated_blob_push_is_accepted(t: &Target) -> Result<(), String> {
    let api = Api::new(t)?;
    let repo = repo("repeat-blob");
    let data = blob(400);
    let digest = api.push_blob(&repo, &data).await?;
    api.push_blob(&repo, &data).await?;
    check_blob(&api, &repo, &digest, &data).await
}

// §Layer Upload De-duplication: two sessions uploading the same blob at once both complete.
spec!(concurrent_uploads_of_one_blob);
async fn concurrent_uploads_of_one_blob(t: &Target) -> Result<(), String> {
    let api = Api::new(t)?;
    let repo = repo("concurrent-blob");
    let data = blob(2000);
    let digest = sha256(&data);
    let mut first = api.start_upload(&repo).await?;
    let mut second = api.start_upload(&repo).await?;
    check_chunk_accepted(&api.patch(&mut first, 0, &data[..1000]).await?, 999)?;
    check_chunk_accepted(&api.patch(&mut second, 0, &data[..1000]).await?, 999)?;
    check_chunk_accepted(&api.patch(&mut second, 1000, &data[1000..]).await?, 1999)?;
    check_chunk_accepted(&api.patch(&mut first, 1000, &data[1000..]).await?, 1999)?;
    let (a, b) = tokio::join!(
        api.finish(&first, &digest, &[]),
        api.finish(&second, &digest, &[])
    );
    a?.expect(201)?;
    b?.expect(201)?;
    check_blob(&api, &repo, &digest, &data).await
}

// An empty blob (the empty layer some builders emit) uploads and downloads like any other.
spec!(empty_blob_roundtrip);
async fn empty_blob_roundtrip(t: &Target) -> Result<(), String> {
    let api = Api::new(t)?;
    let repo = repo("empty-blob");
    let digest = api.push_blob(&repo, &[]).await?;
    check_blob(&api, &repo, &digest, &[]).await
}

// A blob of several MiB in 1 MiB chunks, as containerd pushes large layers.
spec!(large_blob_in_chunks);
async fn large_blob_in_chunks(t: &Target) -> Result<(), String> {
    const MIB: usize = 1 << 20;
    let api = Api::new(t)?;
    let repo = repo("large-chunked");
    let data = blob(5 * MIB + 123);
    let digest = sha256(&data);
    let mut session = api.start_upload(&repo).await?;
    for (i, chunk) in data.chunks(MIB).enumerate() {
        let resp = api.patch(&mut session, i * MIB, chunk).await?;
        check_chunk_accepted(&resp, i * MIB + chunk.len() - 1)?;
    }
    api.finish(&session, &digest, &[]).await?.expect(201)?;
    let resp = api.get(&format!("/v2/{repo}/blobs/{digest}")).await?;
    resp.expect(200)?;
    ensure!(sha256(&resp.body) == digest, "downloaded blob differs");
    Ok(())
}

// §Pushing Manifests: a successful upload MUST answer 201 with the Location of a pullable
// manifest, and the Docker-Content-Digest is the digest of the bytes sent.
spec!(manifest_put_is_201);
async fn manifest_put_is_201(t: &Target) -> Result<(), String> {
    let api = Api::new(t)?;
    let repo = repo("manifest-put");
    let config = config_blob();
    let layer = blob(100);
    api.push_blob(&repo, &config).await?;
    api.push_blob(&repo, &layer).await?;
    let manifest = image_manifest(&config, &layer);
    let resp = api
        .put_manifest(&repo, "v1", OCI_MANIFEST, &manifest)
        .await?;
    resp.expect(201)?;
    let digest = resp.require("Docker-Content-Digest")?;
    ensure!(
        digest == sha256(&manifest),
        "Docker-Content-Digest {digest}"
    );
    let location = resp.require("Location")?;
    let accept = [("Accept", OCI_MANIFEST)];
    let pulled = api.send(Method::GET, location, &accept, Vec::new()).await?;
    pulled.expect(200)?;
    ensure!(pulled.body == manifest, "manifest at Location differs");
    Ok(())
}

// §Pushing Manifests: `<reference>` MAY be a digest.
spec!(manifest_put_by_digest);
async fn manifest_put_by_digest(t: &Target) -> Result<(), String> {
    let api = Api::new(t)?;
    let repo = repo("manifest-put-digest");
    let config = config_blob();
    let layer = blob(100);
    api.push_blob(&repo, &config).await?;
    api.push_blob(&repo, &layer).await?;
    let manifest = image_manifest(&config, &layer);
    let digest = sha256(&manifest);
    let resp = api
        .put_manifest(&repo, &digest, OCI_MANIFEST, &manifest)
        .await?;
    resp.expect(201)?;
    let resp = api.get_manifest(&repo, &digest).await?;
    resp.expect(200)?;
    ensure!(resp.body == manifest, "body differs");
    Ok(())
}

// §Pushing Manifests: the digest returned MUST equal the client's; a body that does not hash to
// the digest in the URL is refused with DIGEST_INVALID and not stored.
spec!(manifest_put_digest_mismatch_is_digest_invalid);
async fn manifest_put_digest_mismatch_is_digest_invalid(t: &Target) -> Result<(), String> {
    let api = Api::new(t)?;
    let repo = repo("manifest-digest-mismatch");
    let image = api.push_image(&repo, "v1").await?;
    let manifest = image_manifest(&image.config, &image.layer);
    let other = image_index(&[&image.manifest]);
    let wrong = sha256(&other);
    let resp = api
        .put_manifest(&repo, &wrong, OCI_MANIFEST, &manifest)
        .await?;
    resp.expect_error(400, "DIGEST_INVALID")?;
    api.head_manifest(&repo, &wrong).await?.expect(404)?;
    Ok(())
}

// §Push: a registry MAY reject a manifest whose descriptors name blobs it does not have, and
// then MUST answer MANIFEST_BLOB_UNKNOWN (code-5). Both targets reject a missing layer or config.
spec!(manifest_missing_blob_is_manifest_blob_unknown);
async fn manifest_missing_blob_is_manifest_blob_unknown(t: &Target) -> Result<(), String> {
    let api = Api::new(t)?;
    let repo = repo("missing-blob");
    let config = config_blob();
    let layer = blob(100);
    api.push_blob(&repo, &config).await?;
    api.push_blob(&repo, &layer).await?;
    let missing_layer = image_manifest(&config, &blob(100));
    let missing_config = image_manifest(&config_blob(), &layer);
    for manifest in [missing_layer, missing_config] {
        let resp = api
            .put_manifest(&repo, "v1", OCI_MANIFEST, &manifest)
            .await?;
        resp.expect_error(400, "MANIFEST_BLOB_UNKNOWN")?;
    }
    api.get_manifest(&repo, "v1").await?.expect(404)?;
    Ok(())
}

// The same for a blob that exists, but only in another repository.
spec!(manifest_blob_in_other_repository_is_unknown);
async fn manifest_blob_in_other_repository_is_unknown(t: &Target) -> Result<(), String> {
    let api = Api::new(t)?;
    let (owner, other) = (repo("blob-owner"), repo("blob-borrower"));
    let config = config_blob();
    let layer = blob(100);
    api.push_blob(&owner, &layer).await?;
    api.push_blob(&other, &config).await?;
    let manifest = image_manifest(&config, &layer);
    let resp = api
        .put_manifest(&other, "v1", OCI_MANIFEST, &manifest)
        .await?;
    resp.expect_error(400, "MANIFEST_BLOB_UNKNOWN")
}

// The same for an index naming a manifest the repository does not have (code-5: "manifest
// references a manifest or blob unknown to registry").
spec!(index_missing_manifest_is_manifest_blob_unknown);
async fn index_missing_manifest_is_manifest_blob_unknown(t: &Target) -> Result<(), String> {
    let api = Api::new(t)?;
    let repo = repo("index-missing-child");
    let image = api.push_image(&repo, "v1").await?;
    let missing = image_manifest(&image.config, &blob(100));
    let index = image_index(&[&image.manifest, &missing]);
    let resp = api.put_manifest(&repo, "multi", OCI_INDEX, &index).await?;
    resp.expect_error(400, "MANIFEST_BLOB_UNKNOWN")
}

// §Push: a registry MUST accept an otherwise valid manifest whose `subject` names a manifest
// that does not exist, so that referrers can be pushed before their subject.
spec!(manifest_with_missing_subject_is_accepted);
async fn manifest_with_missing_subject_is_accepted(t: &Target) -> Result<(), String> {
    let api = Api::new(t)?;
    let repo = repo("missing-subject");
    api.push_blob(&repo, b"{}").await?;
    let absent_subject = image_manifest(&config_blob(), &blob(100));
    let manifest = artifact(
        &absent_subject,
        Some("application/vnd.spec.test"),
        OCI_CONFIG,
    );
    let digest = sha256(&manifest);
    let resp = api
        .put_manifest(&repo, &digest, OCI_MANIFEST, &manifest)
        .await?;
    resp.expect(201)?;
    api.get_manifest(&repo, &digest).await?.expect(200)?;
    Ok(())
}

// §Pushing Manifests with Subject: a registry that supports the referrers API MUST answer a
// manifest with a `subject` with `OCI-Subject: <subject digest>`.
spec!(
    manifest_with_subject_answers_oci_subject,
    distribution_differs = "§Pushing Manifests with Subject: a registry supporting the referrers \
                            API MUST send OCI-Subject; distribution 2.8 predates the referrers \
                            API and sends none"
);
async fn manifest_with_subject_answers_oci_subject(t: &Target) -> Result<(), String> {
    let api = Api::new(t)?;
    let repo = repo("oci-subject");
    let image = api.push_image(&repo, "v1").await?;
    api.push_blob(&repo, b"{}").await?;
    let manifest = artifact(
        &image.manifest,
        Some("application/vnd.spec.sig"),
        OCI_CONFIG,
    );
    let resp = api
        .put_manifest(&repo, &sha256(&manifest), OCI_MANIFEST, &manifest)
        .await?;
    resp.expect(201)?;
    let subject = resp.require("OCI-Subject")?;
    ensure!(
        subject == image.digest,
        "OCI-Subject {subject}, want {}",
        image.digest
    );
    Ok(())
}

// Tags are mutable: pushing another manifest under a tag moves it, and the old manifest stays
// reachable by its digest.
spec!(retag_moves_the_tag);
async fn retag_moves_the_tag(t: &Target) -> Result<(), String> {
    let api = Api::new(t)?;
    let repo = repo("retag");
    let old = api.push_image(&repo, "latest").await?;
    let new = api.push_image(&repo, "latest").await?;
    let resp = api.get_manifest(&repo, "latest").await?;
    resp.expect(200)?;
    ensure!(
        resp.body == new.manifest,
        "the tag still names the old manifest"
    );
    let resp = api.get_manifest(&repo, &old.digest).await?;
    resp.expect(200)?;
    ensure!(resp.body == old.manifest, "old manifest changed");
    Ok(())
}

/// An OCI image manifest of exactly `size` bytes, padded with an annotation.
fn manifest_of_size(config: &[u8], layer: &[u8], size: usize) -> Result<Vec<u8>, String> {
    let build = |pad: usize| {
        json!({
            "schemaVersion": 2,
            "mediaType": OCI_MANIFEST,
            "config": descriptor(OCI_CONFIG, config),
            "layers": [descriptor(OCI_LAYER, layer)],
            "annotations": { "spec.padding": "x".repeat(pad) },
        })
        .to_string()
        .into_bytes()
    };
    let overhead = build(0).len();
    ensure!(size >= overhead, "a manifest needs {overhead} bytes");
    Ok(build(size - overhead))
}

// §Pushing Manifests: clients and registries SHOULD support manifests of at least 4 megabytes;
// one of exactly 4 MiB is accepted and served back whole.
spec!(manifest_of_4_mib_is_accepted);
async fn manifest_of_4_mib_is_accepted(t: &Target) -> Result<(), String> {
    let api = Api::new(t)?;
    let repo = repo("manifest-4mib");
    let config = config_blob();
    let layer = blob(100);
    api.push_blob(&repo, &config).await?;
    api.push_blob(&repo, &layer).await?;
    let manifest = manifest_of_size(&config, &layer, 4 << 20)?;
    api.push_manifest(&repo, "big", OCI_MANIFEST, &manifest)
        .await?;
    let resp = api.get_manifest(&repo, "big").await?;
    resp.expect(200)?;
    ensure!(resp.body == manifest, "body differs");
    Ok(())
}

// §Pushing Manifests: a registry SHOULD enforce a manifest size limit and answer a push over it
// with 413 (end-7 failure 413); wharf's limit is 4 MiB.
spec!(
    manifest_over_4_mib_is_413,
    distribution_differs = "§Pushing Manifests: a registry enforcing a size limit SHOULD answer \
                            413 past it; distribution 2.8 stops at 4 MiB too but answers 400 \
                            MANIFEST_INVALID"
);
async fn manifest_over_4_mib_is_413(t: &Target) -> Result<(), String> {
    let api = Api::new(t)?;
    let repo = repo("manifest-too-big");
    let config = config_blob();
    let layer = blob(100);
    api.push_blob(&repo, &config).await?;
    api.push_blob(&repo, &layer).await?;
    let manifest = manifest_of_size(&config, &layer, (4 << 20) + 1)?;
    let resp = api
        .put_manifest(&repo, "big", OCI_MANIFEST, &manifest)
        .await?;
    resp.expect(413)?;
    api.get_manifest(&repo, "big").await?.expect(404)?;
    Ok(())
}
